#!/usr/bin/env bash
# transfer.sh [rounds]: body throughput of bifrost against plain
# reverse_proxy (BenchmarkTransfer: 1 MiB download, upload with
# Content-Length, chunked upload), in alternating pairs: each round runs
# reverse_proxy then bifrost for each kind, and the script prints each
# kind's bifrost/reverse_proxy throughput ratio per round and their median.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-9}"
dir="$(mktemp -d)"
go test -c -o "$dir/bifrost.test" .
for i in $(seq "$rounds"); do
	# a round that fails (a benchmark error) leaves its pairs out
	{ "$dir/bifrost.test" -test.run '^$' -test.bench 'Transfer' -test.benchtime 1s 2>/dev/null || true; } |
		awk '/^BenchmarkTransfer\// { for (f = 1; f <= NF; f++) if ($f == "MB/s") print $1, $(f-1) }'
done | awk '
	{ split($1, p, "/"); h = p[3]; sub(/-[0-9]+$/, "", h) }
	h == "reverse_proxy" { rp[p[2]] = $2 }
	h == "bifrost" && (p[2] in rp) { printf "%s %.3f\n", p[2], $2 / rp[p[2]]; delete rp[p[2]] }
' >"$dir/ratios"
for kind in download upload chunked; do
	all=$(awk -v k="$kind" '$1 == k { printf " %s", $2 }' "$dir/ratios")
	median=$(awk -v k="$kind" '$1 == k { print $2 }' "$dir/ratios" | sort -n |
		awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')
	printf '%-9s bifrost/reverse_proxy median %s over %d pairs:%s\n' "$kind" "$median" "$(wc -w <<<"$all")" "$all"
done
