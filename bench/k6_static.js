// The ceiling of the k6 flash sale: the same executor, VUs and number of iterations, each
// one GET /healthz (the static route of the same binary). bench.py compares the flash
// sale's request rate with this one's, both measured by k6 on this machine.
import http from 'k6/http';
import { check } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const ITERATIONS = Number(__ENV.BUYERS || 5000);

export const options = {
  scenarios: {
    static: {
      executor: 'shared-iterations',
      vus: Math.min(ITERATIONS, Number(__ENV.VUS || 256)),
      iterations: ITERATIONS,
      maxDuration: '5m',
    },
  },
};

export function setup() {
  return { t0: Date.now() };
}

export default function () {
  check(http.get(`${BASE}/healthz`), { 'healthz: 200': (r) => r.status === 200 });
}

export function teardown(data) {
  console.log(`STATIC_RESULT ${JSON.stringify({ ms: Date.now() - data.t0, requests: ITERATIONS })}`);
}
