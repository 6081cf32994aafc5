// Read-heavy browsing: listing pages (random), product details, best sellers.
//   k6 run -e ADMIN_TOKEN=... k6/browse.js      (against a seeded catalog: serve --seed-demo)
import { check } from 'k6';
import http from 'k6/http';
import { BASE, browseOnce, createProduct, SMOKE } from './lib.js';

export const options = {
  scenarios: {
    browsers: {
      executor: 'constant-vus',
      vus: Number(__ENV.VUS || (SMOKE ? 5 : 64)),
      duration: __ENV.DURATION || (SMOKE ? '5s' : '60s'),
    },
  },
  thresholds: {
    checks: ['rate==1.0'],
    http_req_failed: ['rate<0.001'],
    http_req_duration: [SMOKE ? 'p(99)<1000' : 'p(99)<50'],
  },
};

export function setup() {
  // An empty catalog still browses; give it something to show.
  const first = http.get(`${BASE}/v1/products?page=1`).json();
  if (first.total_items === 0) for (let i = 0; i < 30; i++) createProduct(100 + i, 10, `k6 browse item ${i}`);
  return { total: http.get(`${BASE}/v1/products?page=1`).json().total_items };
}

export default function () {
  browseOnce();
}

export function teardown(data) {
  const now = http.get(`${BASE}/v1/products?page=1`).json();
  check(now, { 'invariant: reads changed no product count': (p) => p.total_items === data.total });
}
