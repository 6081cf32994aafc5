// Concurrent charges on a few users, half of them retried with the same Idempotency-Key
// (the retry must replay, not charge twice). Ends by checking through the API that every
// balance equals the sum of its history.
//   k6 run -e ADMIN_TOKEN=... k6/charge_storm.js
import { check } from 'k6';
import exec from 'k6/execution';
import { charge, checkPointsConserved, createUsers, invariantThresholds, SMOKE } from './lib.js';

const USERS = Number(__ENV.USERS || 5);
const AMOUNT = 10;

export const options = {
  scenarios: {
    chargers: {
      executor: 'shared-iterations',
      vus: Number(__ENV.VUS || (SMOKE ? 10 : 100)),
      iterations: Number(__ENV.ITERATIONS || (SMOKE ? 200 : 20000)),
      maxDuration: SMOKE ? '60s' : '10m',
    },
  },
  thresholds: Object.assign({}, invariantThresholds, { http_req_failed: ['rate<0.001'] }),
};

export function setup() {
  return { users: createUsers(USERS, 0, 'storm') };
}

export default function (data) {
  const i = exec.scenario.iterationInTest;
  const user = data.users[i % data.users.length];
  if (i % 2 === 0) {
    const r = charge(user, AMOUNT);
    check(r, { 'charge: 200 or 409 cap': (x) => x.status === 200 || x.json().code === 'BALANCE_LIMIT_EXCEEDED' });
    return;
  }
  const key = `storm-${exec.scenario.name}-${i}`;
  const first = charge(user, AMOUNT, key);
  const retry = charge(user, AMOUNT, key);
  check(retry, {
    'retry with the same key: replayed, same answer': (x) =>
      x.status === first.status && x.headers['Idempotent-Replayed'] === 'true' && x.body === first.body,
  });
}

export function teardown(data) {
  checkPointsConserved(data.users);
}
