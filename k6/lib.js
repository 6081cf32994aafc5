// Shared building blocks of the k6 scenarios: setup through the admin API, one step of
// each kind of user, and the end-of-run invariant checks through the API.
import exec from 'k6/execution';
import http from 'k6/http';
import { check, fail, sleep } from 'k6';
import { Counter } from 'k6/metrics';

/// Answers of 503 (a dependency away: MySQL restarting, a failover) that a buyer retried
/// with the same Idempotency-Key, as a real client does.
const retried = new Counter('retried_503');

export const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
export const ADMIN = __ENV.ADMIN_TOKEN || fail('ADMIN_TOKEN is required (scripts/run.sh prints it)');
export const SMOKE = __ENV.SMOKE === '1';
/// OUTAGE=1: a dependency is taken away during the run (scripts/cluster.sh failover): 503s
/// are retried and allowed. Otherwise a single 503 fails the run.
export const OUTAGE = __ENV.OUTAGE === '1';
/// KEYS=0: orders and payments without an Idempotency-Key (and so never retried): the
/// benchmark's rows comparable with runs from before the keys; one row of it has them.
const KEYS = __ENV.KEYS !== '0' || OUTAGE;
/// 409 (sold out, cap reached) is an answer, not a failure; a 503 is retried and counted
/// (`retried_503`).
export const EXPECTED = http.expectedStatuses(200, 201, 409, 503);

const json = (token, extra = {}) => ({
  headers: Object.assign({ 'Content-Type': 'application/json', Authorization: `Bearer ${token}` }, extra),
  responseCallback: EXPECTED,
});

export function admin(method, path, body) {
  const res = http.request(method, `${BASE}${path}`, body === undefined ? null : JSON.stringify(body), json(ADMIN));
  if (res.status >= 300) fail(`${method} ${path}: ${res.status} ${res.body}`);
  return res.json();
}

/// A product; `extra` may carry `per_user_limit`, `sale_starts_at`, `sale_ends_at`.
export function createProduct(price, stock, name = 'k6 item', extra = {}) {
  return admin('POST', '/v1/admin/products', Object.assign({ name, price, stock }, extra)).id;
}

/// `n` users, each with `points` and a token; built in parallel batches.
export function createUsers(n, points, prefix = 'k6') {
  const users = [];
  for (let start = 0; start < n; start += 100) {
    const size = Math.min(100, n - start);
    const made = http.batch(
      Array.from({ length: size }, (_, i) => ['POST', `${BASE}/v1/admin/users`, JSON.stringify({ name: `${prefix}-${start + i}` }), json(ADMIN)]),
    );
    const ids = made.map((r) => r.json().id);
    const tokens = http
      .batch(ids.map((id) => ['POST', `${BASE}/v1/admin/users/${id}/tokens`, null, json(ADMIN)]))
      .map((r) => r.json().token);
    if (points > 0) {
      const charged = http.batch(
        ids.map((id, i) => ['POST', `${BASE}/v1/users/${id}/points/charge`, JSON.stringify({ amount: points }), json(tokens[i])]),
      );
      charged.forEach((r) => r.status === 200 || fail(`charge: ${r.status} ${r.body}`));
    }
    ids.forEach((id, i) => users.push({ id, token: tokens[i] }));
  }
  return users;
}

/// A key per request of this run (a retry reuses it, a new request takes a new one), as
/// headers; none with KEYS=0.
function keyed(kind) {
  if (!KEYS) return {};
  return { 'Idempotency-Key': `${kind}-${exec.vu.idInTest}-${exec.scenario.iterationInTest}-${Math.random().toString(36).slice(2)}` };
}

/// `send()` again while it answers 503 (its Retry-After, else 200 ms, up to 30 times):
/// with the same Idempotency-Key, a retry replays what committed or runs what did not.
function retrying503(send) {
  for (let attempt = 0; ; attempt++) {
    const r = send();
    // Without a key a POST must not be sent twice: the 503 is the answer.
    if (r.status !== 503 || attempt >= 30 || !KEYS) return r;
    retried.add(1);
    sleep(Math.min(1, Number(r.headers['Retry-After'] || 0.2)));
  }
}

export function order(user, productId, quantity, price) {
  const params = Object.assign(json(user.token, keyed('order')), { tags: { name: 'POST /v1/orders' } });
  const body = JSON.stringify({ user_id: user.id, product_id: productId, quantity, price });
  return retrying503(() => http.post(`${BASE}/v1/orders`, body, params));
}

export function pay(user, orderId) {
  const params = Object.assign(json(user.token, keyed('pay')), { tags: { name: 'POST /v1/payments' } });
  return retrying503(() => http.post(`${BASE}/v1/payments`, JSON.stringify({ order_id: orderId }), params));
}

/// Refusals a buyer may hear when ordering in a sale.
const ORDER_REFUSALS = ['OUT_OF_STOCK', 'PURCHASE_LIMIT_REACHED', 'INSUFFICIENT_POINTS'];

/// Sends `send()` (one response or a batch) until the sale has started: a SALE_NOT_STARTED
/// answer says in `Retry-After` when to come back (at most 20 tries).
function whenOpen(send) {
  for (let attempt = 0; ; attempt++) {
    const replies = [].concat(send());
    const early = replies.find((r) => r.status === 409 && r.json().code === 'SALE_NOT_STARTED');
    if (!early || attempt >= 20) return replies;
    sleep(Number(early.headers['Retry-After'] || 1));
  }
}

/// A greedy buyer: `n` orders of one unit at once, then pays for the one placed. With
/// points for one unit (F1) at most one can be placed whatever the limit; with a
/// per-customer limit the others are refused by the stock gate alone.
export function buyGreedy(user, productId, price, n) {
  const body = JSON.stringify({ user_id: user.id, product_id: productId, quantity: 1, price });
  const requests = Array.from({ length: n }, () => [
    'POST', `${BASE}/v1/orders`, body,
    Object.assign(json(user.token, keyed('order')), { tags: { name: 'POST /v1/orders' } }),
  ]);
  const replies = whenOpen(() => {
    // All at once; each that answered 503 again (same key) until it has an answer.
    const first = http.batch(requests);
    return first.map((r, i) => (r.status === 503 ? retrying503(() => http.request(...requests[i])) : r));
  });
  const placed = replies.filter((r) => r.status === 201);
  const ok = check(replies, {
    'greedy orders: 201 or 409 OUT_OF_STOCK / PURCHASE_LIMIT_REACHED / INSUFFICIENT_POINTS': (rs) =>
      rs.every((r) => r.status === 201 || (r.status === 409 && ORDER_REFUSALS.includes(r.json().code))),
    'greedy orders: at most one placed (points for one unit)': () => placed.length <= 1,
  });
  if (!ok || placed.length !== 1) return false;
  const paid = pay(user, placed[0].json().order_id);
  return check(paid, { 'payment: 201': (r) => r.status === 201 });
}

/// Orders one unit and pays for it; checks every answer is one the API promises.
export function buyOne(user, productId, price) {
  const [placed] = whenOpen(() => order(user, productId, 1, price));
  const ok = check(placed, {
    'order: 201 or 409 OUT_OF_STOCK': (r) => r.status === 201 || (r.status === 409 && r.json().code === 'OUT_OF_STOCK'),
  });
  if (!ok || placed.status !== 201) return false;
  const paid = pay(user, placed.json().order_id);
  return check(paid, { 'payment: 201': (r) => r.status === 201 });
}

export function charge(user, amount, key) {
  const headers = key ? { 'Idempotency-Key': key } : {};
  return http.post(
    `${BASE}/v1/users/${user.id}/points/charge`,
    JSON.stringify({ amount }),
    Object.assign(json(user.token, headers), { tags: { name: 'POST /v1/users/{id}/points/charge' } }),
  );
}

export function browseOnce() {
  const first = http.get(`${BASE}/v1/products?page=1`, { tags: { name: 'GET /v1/products' } });
  check(first, { 'listing: 200': (r) => r.status === 200 });
  const pages = Math.max(1, first.json().total_pages);
  const page = http.get(`${BASE}/v1/products?page=${1 + Math.floor(Math.random() * pages)}`, { tags: { name: 'GET /v1/products' } });
  check(page, { 'listing page: 200': (r) => r.status === 200 });
  const items = page.json().items || [];
  if (items.length > 0) {
    const id = items[Math.floor(Math.random() * items.length)].id;
    const detail = http.get(`${BASE}/v1/products/${id}`, { tags: { name: 'GET /v1/products/{id}' } });
    check(detail, { 'detail: 200, stock ≥ 0': (r) => r.status === 200 && r.json().stock >= 0 });
  }
  const top = http.get(`${BASE}/v1/products/top?days=${1 + Math.floor(Math.random() * 7)}`, { tags: { name: 'GET /v1/products/top' } });
  check(top, { 'top: 200, at most 10': (r) => r.status === 200 && r.json().items.length <= 10 });
}

/// Every buyer started with exactly `price` points: after the run each has either spent
/// them (one unit bought) or kept them, and holds none for a PENDING order; the product's
/// `sold` equals the buyers who spent, and sold + available equals the stock it was given
/// (no oversell, nothing lost). With `limit`, no buyer holds more units than it (PENDING
/// and PAID orders of the product, read through each buyer's order list).
export function checkFlashSale(productId, units, price, buyers, limit = 0) {
  const product = http.get(`${BASE}/v1/products/${productId}`).json();
  let spent = 0;
  let conserved = true;
  let overLimit = 0;
  for (let i = 0; i < buyers.length; i += 100) {
    const batch = buyers.slice(i, i + 100);
    const replies = http.batch(batch.map((u) => ['GET', `${BASE}/v1/users/${u.id}/points`, null, json(u.token)]));
    for (const r of replies) {
      const { balance, held } = r.json();
      if (balance === 0) spent += 1;
      else if (balance !== price) conserved = false;
      if (held !== 0) conserved = false;
    }
    if (limit > 0) {
      const orders = http.batch(batch.map((u) => ['GET', `${BASE}/v1/users/${u.id}/orders?limit=100`, null, json(u.token)]));
      for (const r of orders) {
        const units = r
          .json()
          .items.filter((o) => o.product_id === productId && (o.status === 'PENDING' || o.status === 'PAID'))
          .reduce((sum, o) => sum + o.quantity, 0);
        if (units > limit) overLimit += 1;
      }
    }
  }
  check(overLimit, { 'invariant: no buyer holds more than the limit': (n) => n === 0 });
  check(product, {
    'invariant: no oversell (sold ≤ units)': (p) => p.sold <= units,
    'invariant: sold + available == units': (p) => p.sold + p.stock === units,
    'invariant: sold == buyers who paid': (p) => p.sold === spent,
  });
  check(conserved, { 'invariant: points conserved (balance is price or 0, nothing held)': (c) => c });
  return { sold: product.sold, available: product.stock, spent };
}

/// balance == Σ history (charges − uses), read through the API, for each user.
export function checkPointsConserved(users) {
  for (const u of users) {
    const balance = http.get(`${BASE}/v1/users/${u.id}/points`, json(u.token)).json().balance;
    let sum = 0;
    let cursor = '';
    for (;;) {
      const page = http
        .get(`${BASE}/v1/users/${u.id}/points/history?limit=100${cursor ? `&cursor=${cursor}` : ''}`, json(u.token))
        .json();
      for (const row of page.items) sum += row.kind === 'USE' ? -row.amount : row.amount;
      if (!page.next_cursor) break;
      cursor = page.next_cursor;
    }
    check(sum, { 'invariant: balance == Σ history': (s) => s === balance });
  }
}

export const invariantThresholds = Object.assign({ checks: ['rate==1.0'] }, OUTAGE ? {} : { retried_503: ['count==0'] });
