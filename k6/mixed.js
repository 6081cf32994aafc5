// A realistic mix: most users browse, some buy a limited product, some top up points.
// Ends with the flash-sale invariants on the product and points conservation for the
// chargers.
//   k6 run -e ADMIN_TOKEN=... k6/mixed.js
import exec from 'k6/execution';
import {
  browseOnce, buyOne, charge, checkFlashSale, checkPointsConserved, createProduct, createUsers, SMOKE,
} from './lib.js';

const DURATION = __ENV.DURATION || (SMOKE ? '5s' : '60s');
const BUYERS = Number(__ENV.BUYERS || (SMOKE ? 50 : 2000));
const UNITS = Number(__ENV.UNITS || (SMOKE ? 10 : 200));
const PRICE = 700;

export const options = {
  scenarios: {
    browse: { executor: 'constant-vus', exec: 'browse', vus: SMOKE ? 4 : 48, duration: DURATION },
    buy: {
      executor: 'shared-iterations', exec: 'buy', vus: SMOKE ? 4 : 32, iterations: BUYERS, maxDuration: DURATION,
    },
    topUp: { executor: 'constant-vus', exec: 'topUp', vus: SMOKE ? 2 : 8, duration: DURATION },
  },
  thresholds: {
    checks: ['rate==1.0'],
    http_req_failed: ['rate<0.001'],
    http_req_duration: [SMOKE ? 'p(99)<2000' : 'p(99)<100'],
  },
};

export function setup() {
  return {
    product: createProduct(PRICE, UNITS, 'mixed limited item'),
    buyers: createUsers(BUYERS, PRICE, 'mixed-buyer'),
    chargers: createUsers(4, 0, 'mixed-charger'),
  };
}

export function browse() {
  browseOnce();
}

export function buy(data) {
  buyOne(data.buyers[exec.scenario.iterationInTest % data.buyers.length], data.product, PRICE);
}

export function topUp(data) {
  const user = data.chargers[exec.vu.idInTest % data.chargers.length];
  charge(user, 1, `mixed-${exec.vu.idInTest}-${exec.scenario.iterationInTest}`);
}

export function teardown(data) {
  checkFlashSale(data.product, UNITS, PRICE, data.buyers);
  checkPointsConserved(data.chargers);
}
