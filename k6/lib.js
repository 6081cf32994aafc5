// Shared building blocks of the k6 scenarios: setup through the admin API, one step of
// each kind of user, and the end-of-run invariant checks through the API.
import http from 'k6/http';
import { check, fail } from 'k6';

export const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
export const ADMIN = __ENV.ADMIN_TOKEN || fail('ADMIN_TOKEN is required (scripts/run.sh prints it)');
export const SMOKE = __ENV.SMOKE === '1';
/// 409 (sold out, cap reached) is an answer, not a failure.
export const EXPECTED = http.expectedStatuses(200, 201, 409);

const json = (token, extra = {}) => ({
  headers: Object.assign({ 'Content-Type': 'application/json', Authorization: `Bearer ${token}` }, extra),
  responseCallback: EXPECTED,
});

export function admin(method, path, body) {
  const res = http.request(method, `${BASE}${path}`, body === undefined ? null : JSON.stringify(body), json(ADMIN));
  if (res.status >= 300) fail(`${method} ${path}: ${res.status} ${res.body}`);
  return res.json();
}

export function createProduct(price, stock, name = 'k6 item') {
  return admin('POST', '/v1/admin/products', { name, price, stock }).id;
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

export function order(user, productId, quantity, price) {
  return http.post(
    `${BASE}/v1/orders`,
    JSON.stringify({ user_id: user.id, product_id: productId, quantity, price }),
    Object.assign(json(user.token), { tags: { name: 'POST /v1/orders' } }),
  );
}

export function pay(user, orderId) {
  return http.post(`${BASE}/v1/payments`, JSON.stringify({ order_id: orderId }), Object.assign(json(user.token), { tags: { name: 'POST /v1/payments' } }));
}

/// Orders one unit and pays for it; checks every answer is one the API promises.
export function buyOne(user, productId, price) {
  const placed = order(user, productId, 1, price);
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
/// them (one unit bought) or kept them, the product's `sold` equals the buyers who spent,
/// and sold + available equals the stock it was given (no oversell, nothing lost).
export function checkFlashSale(productId, units, price, buyers) {
  const product = http.get(`${BASE}/v1/products/${productId}`).json();
  let spent = 0;
  let conserved = true;
  for (let i = 0; i < buyers.length; i += 100) {
    const replies = http.batch(
      buyers.slice(i, i + 100).map((u) => ['GET', `${BASE}/v1/users/${u.id}/points`, null, json(u.token)]),
    );
    for (const r of replies) {
      const balance = r.json().balance;
      if (balance === 0) spent += 1;
      else if (balance !== price) conserved = false;
    }
  }
  check(product, {
    'invariant: no oversell (sold ≤ units)': (p) => p.sold <= units,
    'invariant: sold + available == units': (p) => p.sold + p.stock === units,
    'invariant: sold == buyers who paid': (p) => p.sold === spent,
  });
  check(conserved, { 'invariant: points conserved (balance is price or 0)': (c) => c });
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

export const invariantThresholds = { checks: ['rate==1.0'] };
