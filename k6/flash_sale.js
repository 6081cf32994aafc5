// Flash sale: thousands of buyers, one product with few units (or as many as buyers: set
// UNITS=BUYERS for a sale everyone wins), each buyer orders one unit and pays at once.
// LIMIT=1 gives the product a per-customer limit; GREEDY=N makes every buyer fire N orders
// at once (and pay for the one placed); STARTS_IN=S schedules the sale S seconds after
// setup (buyers arrive at once, hear SALE_NOT_STARTED and come back after Retry-After).
// Ends by checking through the API that nothing was
// oversold, sold == the buyers who paid, every buyer's points are whole, and no buyer
// holds more than the limit.
//   k6 run -e ADMIN_TOKEN=... k6/flash_sale.js                      (BUYERS=5000 UNITS=500)
//   k6 run -e ADMIN_TOKEN=... -e LIMIT=1 -e GREEDY=5 k6/flash_sale.js  (a fair drop)
//   k6 run -e ADMIN_TOKEN=... -e SMOKE=1 k6/flash_sale.js            (seconds, small data)
//   k6 run -e ADMIN_TOKEN=... -e OUTAGE=1 k6/flash_sale.js  (while scripts/cluster.sh failover
//                                     runs: 503s retried with the same keys, latency not judged)
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import {
  buyGreedy, buyOne, checkFlashSale, createProduct, createUsers, invariantThresholds, OUTAGE, SMOKE,
} from './lib.js';

const BUYERS = Number(__ENV.BUYERS || (SMOKE ? 100 : 5000));
const UNITS = Number(__ENV.UNITS || (SMOKE ? 10 : 500));
const LIMIT = Number(__ENV.LIMIT || 0);
const GREEDY = Number(__ENV.GREEDY || 1);
const STARTS_IN = Number(__ENV.STARTS_IN || 0);
const PRICE = 1000;
const paid = new Counter('flash_paid');

export const options = {
  setupTimeout: '300s',
  scenarios: {
    buyers: {
      executor: 'shared-iterations',
      vus: Math.min(BUYERS, Number(__ENV.VUS || (SMOKE ? 20 : 500))),
      iterations: BUYERS,
      maxDuration: SMOKE ? '60s' : '10m',
    },
  },
  thresholds: Object.assign({}, invariantThresholds, {
    http_req_failed: ['rate<0.001'],
  }, OUTAGE ? {} : {
    // The served buyers' orders queue on the product's row lock behind the payments, so
    // the tail is long by nature; refusals are answered by Redis in milliseconds. (Not
    // with OUTAGE=1: retries across a failover take what the failover takes.)
    'http_req_duration{name:POST /v1/orders}': ['p(99)<2000'],
    'http_req_duration{name:POST /v1/payments}': ['p(99)<2000'],
  }),
};

export function setup() {
  const extra = LIMIT > 0 ? { per_user_limit: LIMIT } : {};
  const buyers = createUsers(BUYERS, PRICE, 'flash');
  if (STARTS_IN > 0) extra.sale_starts_at = new Date(Date.now() + STARTS_IN * 1000).toISOString();
  const data = { product: createProduct(PRICE, UNITS, 'flash sale item', extra), buyers };
  data.t0 = Date.now(); // the buyers start now
  return data;
}

export default function (data) {
  const buyer = data.buyers[exec.scenario.iterationInTest % data.buyers.length];
  const bought = GREEDY > 1 ? buyGreedy(buyer, data.product, PRICE, GREEDY) : buyOne(buyer, data.product, PRICE);
  if (bought) paid.add(1);
}

export function teardown(data) {
  const ms = Date.now() - data.t0;
  const result = checkFlashSale(data.product, UNITS, PRICE, data.buyers, LIMIT);
  console.log(`flash sale: ${result.sold} of ${UNITS} units sold to ${BUYERS} buyers in ${ms} ms, ${result.available} left`);
  // One machine-readable line for bench/bench.py: each buyer sent GREEDY orders, each
  // winner a payment too.
  const requests = BUYERS * GREEDY + result.sold;
  console.log(`FLASH_RESULT ${JSON.stringify({ ms, sold: result.sold, requests, product: data.product })}`);
}
