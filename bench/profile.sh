#!/usr/bin/env bash
# profile.sh [caddy-binary] [seconds]: CPU profiles of plain reverse_proxy
# and of bifrost (its defaults) under the same load at the same time, for
# a per-request comparison of where the CPU goes. Three Caddy processes of
# the same binary: the backends (three `respond` sites), A (reverse_proxy)
# and B (bifrost); one `wrk -t1 -c16` per proxy; both profiles taken over
# the same window from the admin API. Prints each side's requests and
# leaves cpu-reverse_proxy.out and cpu-bifrost.out in the directory it
# names, to read with `go tool pprof -top -cum <binary> <profile>`.
# Needs wrk and curl; ports 2101, 2102, 8001, 8002 and 9001-9003 of
# 127.0.0.1 (run it under a private network namespace to be sure).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$(mktemp -d)"
bin="${1:-}"
secs="${2:-20}"
if [ -z "$bin" ]; then
	bin="$dir/caddy"
	go build -o "$bin" ./cmd/caddy
fi
global() { printf '{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n\tstorage file_system %s\n}\n' "$1" "$dir/storage-$2"; }
{ global off back; printf ':9001, :9002, :9003 {\n\trespond "hello from a backend, a body of some length"\n}\n'; } >"$dir/back.caddy"
{ global 127.0.0.1:2101 a; printf ':8001 {\n\treverse_proxy 127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003\n}\n'; } >"$dir/a.caddy"
{ global 127.0.0.1:2102 b; printf ':8002 {\n\tbifrost 127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003\n}\n'; } >"$dir/b.caddy"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for c in back a b; do
	"$bin" run --config "$dir/$c.caddy" --adapter caddyfile >"$dir/$c.log" 2>&1 &
	pids+=($!)
done
sleep 2
wrk -t1 -c16 -d"$((secs + 2))s" http://127.0.0.1:8001/ >"$dir/wrk-reverse_proxy.txt" &
w1=$!
wrk -t1 -c16 -d"$((secs + 2))s" http://127.0.0.1:8002/ >"$dir/wrk-bifrost.txt" &
w2=$!
sleep 1
curl -sf -o "$dir/cpu-reverse_proxy.out" "http://127.0.0.1:2101/debug/pprof/profile?seconds=$secs" &
c1=$!
curl -sf -o "$dir/cpu-bifrost.out" "http://127.0.0.1:2102/debug/pprof/profile?seconds=$secs" &
c2=$!
wait "$w1" "$w2" "$c1" "$c2"
for side in reverse_proxy bifrost; do
	printf '%s: %s\n' "$side" "$(grep 'requests in' "$dir/wrk-$side.txt")"
done
echo "profiles and logs in $dir"
