#!/usr/bin/env bash
# Checks that Bifrost's channels tell one story: runs the demo (with debug
# logs, so Caddy logs every event) under curl load for 22 s, while backend
# 9002 fails and recovers, then compares the counts of /bifrost/workers,
# /bifrost/stats, /bifrost/errors, /metrics and the event log.
# Usage: bench/story.sh <caddy binary with bifrost>
set -euo pipefail
bin=${1:?usage: bench/story.sh <caddy binary>}
dir=$(mktemp -d)
sed 's/^\tskip_install_trust$/\tskip_install_trust\n\tdebug/' "$(dirname "$0")/../examples/demo/Caddyfile" >"$dir/Caddyfile"
"$bin" run --config "$dir/Caddyfile" >"$dir/run.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
sleep 2
ok=0 fail=0 end=$((SECONDS + 22))
while [ $SECONDS -lt $end ]; do
	if [ "$(curl -s -o /dev/null -w '%{http_code}' localhost:8080/)" = 200 ]; then ok=$((ok + 1)); else fail=$((fail + 1)); fi
	sleep 0.02
done
echo "client: $ok ok, $fail failed"
curl -s localhost:2019/bifrost/workers >"$dir/workers.json"
curl -s localhost:2019/bifrost/stats >"$dir/stats.json"
curl -s 'localhost:2019/bifrost/errors?limit=100000' >"$dir/errors.json"
curl -s localhost:2019/metrics | grep '^caddy_bifrost' >"$dir/metrics.txt"
cd "$dir"
python3 - <<'PY'
import json, re, collections
w = json.load(open('workers.json')); st = json.load(open('stats.json')); er = json.load(open('errors.json'))
ev = collections.Counter()
for line in open('run.log'):
    if '"msg":"event"' in line:
        ev[re.search(r'"name":"([a-z_]+)"', line).group(1)] += 1
met = {}
for line in open('metrics.txt'):
    name, val = line.rsplit(' ', 1); met[name] = float(val)
def msum(prefix, **lab):
    return sum(v for k, v in met.items() if k.startswith(prefix + '{') and all(f'{a}="{b}"' in k for a, b in lab.items()))
print("breaker trips: /bifrost/stats", st['breaker_trips'], "| sum of /bifrost/workers breaker.trips", sum(x['breaker']['trips'] for x in w), "| breaker_opened events", ev['breaker_opened'])
print("errors: /bifrost/stats", st['total_errors'], "| /bifrost/errors", len(er), "| caddy_bifrost_errors_total", int(msum('caddy_bifrost_errors_total')))
for k in ['http', 'connection', 'health_check_failed']:
    print(f"  kind {k}: stats {st['by_kind'][k]} | errors {sum(1 for e in er if e['kind'] == k)} | metric {int(msum('caddy_bifrost_errors_total', kind=k))}")
print("failed tries: /bifrost/workers", sum(x['failures'] for x in w), "| caddy_bifrost_requests_total{outcome=failure}", int(msum('caddy_bifrost_requests_total', outcome='failure')))
print("retries: /bifrost/stats", st['retries'], "| caddy_bifrost_retries_total", int(msum('caddy_bifrost_retries_total')))
for e in ['worker_isolated', 'worker_restored']:
    print(f"event {e}: {ev[e]} | caddy_bifrost_worker_transitions_total{{event={e}}} {int(msum('caddy_bifrost_worker_transitions_total', event=e))}")
print("isolated now: /bifrost/stats", st['isolated_workers'], "| /bifrost/workers", sum(1 for x in w if x['isolated']))
PY
