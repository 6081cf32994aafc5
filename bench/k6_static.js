// The ceiling of the k6 flash sale: the same executor, VUs and number of iterations, each
// one GET /healthz (the static route of the same binary). bench.py compares the flash
// sale's request rate with this one's, both measured by k6 on this machine.
//
// DATA=n makes setup() return n buyers shaped like the flash sale's ({id, token} with a
// token as long as a real one). k6 copies setup()'s data into every VU as JSON; with 5,000
// buyers and 256 VUs that copying alone costs k6 about 2 s of CPU on this machine (measured:
// 5,000 GETs of /healthz took 0.99 s without the data and 3.07 s with it). "The same k6"
// then means the same data too, so the service is compared with the load tool's own cost.
import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const ITERATIONS = Number(__ENV.BUYERS || 5000);
const DATA = Number(__ENV.DATA || 0);

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
  const buyers = Array.from({ length: DATA }, (_, i) => ({ id: i + 1, token: `${'x'.repeat(160)}${i}` }));
  return { t0: Date.now(), buyers };
}

export default function (data) {
  const buyer = data.buyers.length ? data.buyers[exec.scenario.iterationInTest % data.buyers.length] : null;
  check(http.get(`${BASE}/healthz`), { 'healthz: 200': (r) => r.status === 200 && (buyer === null || buyer.id > 0) });
}

export function teardown(data) {
  console.log(`STATIC_RESULT ${JSON.stringify({ ms: Date.now() - data.t0, requests: ITERATIONS })}`);
}
