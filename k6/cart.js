// Carts: buyers each check out an order of LINES products drawn from a small hot set
// (overlapping carts, lines in random order) and pay for it. Ends by checking through the
// API: per product sold ≤ units and sold + available == units, sold == the units of the
// PAID orders that list it (every order whole: all its lines paid or none), every buyer's
// points conserved (balance == start − Σ paid totals, nothing held), no 5xx.
//   k6 run -e ADMIN_TOKEN=... k6/cart.js                 (BUYERS=2000 HOT=20 UNITS=200 LINES=3)
//   k6 run -e ADMIN_TOKEN=... -e SMOKE=1 k6/cart.js      (seconds, small data)
import exec from 'k6/execution';
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE, createProduct, createUsers, invariantThresholds, pay, SMOKE } from './lib.js';

const BUYERS = Number(__ENV.BUYERS || (SMOKE ? 60 : 2000));
const HOT = Number(__ENV.HOT || (SMOKE ? 5 : 20));
const UNITS = Number(__ENV.UNITS || (SMOKE ? 20 : 200));
const LINES = Math.min(HOT, Number(__ENV.LINES || 3));
const PRICE = 100;
const linesPaid = new Counter('cart_lines_paid');

export const options = {
  setupTimeout: '300s',
  scenarios: {
    buyers: {
      executor: 'shared-iterations',
      vus: Math.min(BUYERS, Number(__ENV.VUS || (SMOKE ? 10 : 200))),
      iterations: BUYERS,
      maxDuration: SMOKE ? '60s' : '10m',
    },
  },
  thresholds: Object.assign({}, invariantThresholds, {
    http_req_failed: ['rate<0.001'],
    'http_req_duration{name:POST /v1/orders (cart)}': ['p(99)<2000'],
  }),
};

const auth = (token) => ({
  headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
  responseCallback: http.expectedStatuses(200, 201, 409),
});

export function setup() {
  const products = Array.from({ length: HOT }, (_, i) => createProduct(PRICE, UNITS, `cart item ${i}`));
  // Points for one cart of LINES lines of one unit each.
  const buyers = createUsers(BUYERS, PRICE * LINES, 'cart');
  return { products, buyers, t0: Date.now() };
}

/// LINES distinct products of `products`, in random order.
function pick(products) {
  const pool = products.slice();
  for (let i = pool.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  return pool.slice(0, LINES);
}

export default function (data) {
  const buyer = data.buyers[exec.scenario.iterationInTest % data.buyers.length];
  const items = pick(data.products).map((product_id) => ({ product_id, quantity: 1, price: PRICE }));
  const placed = http.post(
    `${BASE}/v1/orders`,
    JSON.stringify({ user_id: buyer.id, items }),
    Object.assign(auth(buyer.token), { tags: { name: 'POST /v1/orders (cart)' } }),
  );
  const ok = check(placed, {
    'cart: 201 with every line, or 409 OUT_OF_STOCK listing its lines': (r) =>
      (r.status === 201 && r.json().items.length === LINES && r.json().total_amount === PRICE * LINES) ||
      (r.status === 409 && r.json().code === 'OUT_OF_STOCK' && Array.isArray(r.json().lines)),
  });
  if (!ok || placed.status !== 201) return;
  const paid = pay(buyer, placed.json().order_id);
  if (check(paid, { 'cart payment: 201 of the total': (r) => r.status === 201 && r.json().amount === PRICE * LINES })) {
    linesPaid.add(LINES);
  }
}

export function teardown(data) {
  const ms = Date.now() - data.t0;
  // What the PAID orders say was sold of each product, and each buyer's points.
  const paidUnits = {};
  let conserved = true;
  let split = 0;
  for (let i = 0; i < data.buyers.length; i += 100) {
    const batch = data.buyers.slice(i, i + 100);
    const orders = http.batch(batch.map((u) => ['GET', `${BASE}/v1/users/${u.id}/orders?limit=100`, null, auth(u.token)]));
    const points = http.batch(batch.map((u) => ['GET', `${BASE}/v1/users/${u.id}/points`, null, auth(u.token)]));
    batch.forEach((u, k) => {
      let spent = 0;
      for (const o of orders[k].json().items) {
        if (o.items.length !== LINES) split += 1;
        if (o.status !== 'PAID') continue;
        spent += o.total_amount;
        for (const line of o.items) paidUnits[line.product_id] = (paidUnits[line.product_id] || 0) + line.quantity;
      }
      const { balance, held } = points[k].json();
      if (balance !== PRICE * LINES - spent || held !== 0) conserved = false;
    });
  }
  let sold = 0;
  let broken = 0;
  for (const id of data.products) {
    const p = http.get(`${BASE}/v1/products/${id}`).json();
    sold += p.sold;
    if (p.sold > UNITS || p.sold + p.stock !== UNITS || p.sold !== (paidUnits[id] || 0)) broken += 1;
  }
  check(broken, { 'invariant: per product sold ≤ units, sold + available == units, sold == Σ PAID lines': (n) => n === 0 });
  check(split, { 'invariant: every order whole (all its lines listed)': (n) => n === 0 });
  check(conserved, { 'invariant: points conserved (balance == start − Σ paid, nothing held)': (c) => c });
  console.log(`carts: ${sold} lines sold of ${HOT * UNITS} units to ${BUYERS} buyers in ${ms} ms`);
  console.log(`CART_RESULT ${JSON.stringify({ ms, lines: sold, requests: BUYERS + sold / LINES })}`);
}
