#!/usr/bin/env bash
# The management API under load, on loopback, with wrk:
#  get:    GET /api/v1/mappings/{id} (one mapping among MAPPINGS);
#  create: POST /api/v1/mappings, each request a new http_host mapping (persisted to the
#          embedded store, pushed to its client's config).
# The server runs with its embedded store, one admin key, and a rate limit high enough not to
# interfere. Prints requests/s, latency percentiles and non-2xx counts per case and run.
# Needs: a release binary (cargo build --release -p tunnox), wrk.
# Usage: bench/api/run.sh  (SECONDS_PER_RUN=10 RUNS=3 CONNECTIONS=32 WRK_THREADS=2
#        SERVER_THREADS=1 MAPPINGS=1000)
set -euo pipefail
cd "$(dirname "$0")/../.."
TUNNOX="${CARGO_TARGET_DIR:-target}/release/tunnox"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"; RUNS="${RUNS:-3}"; CONNECTIONS="${CONNECTIONS:-32}"
WRK_THREADS="${WRK_THREADS:-2}"; SERVER_THREADS="${SERVER_THREADS:-1}"; MAPPINGS="${MAPPINGS:-1000}"
WORK="$(mktemp -d)"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
KEY="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
API=http://127.0.0.1:19851
cat > "$WORK/server.yaml" <<YAML
node_id: api-bench
listen: 127.0.0.1:19850
data_dir: $WORK/data
tls: { insecure_plaintext: true }
api_listen: 127.0.0.1:19851
api: { rate_burst: 100000000, rate_per_sec: 100000000 }
YAML
TUNNOX_API_KEY="$KEY" "$TUNNOX" --threads "$SERVER_THREADS" server --config "$WORK/server.yaml" \
  > "$WORK/server.log" 2>&1 & PIDS+=($!)
SERVER=$!
for _ in $(seq 50); do curl -sf "$API/ready" > /dev/null && break; sleep 0.1; done
call() { curl -sf -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
CLIENT=$(call -d '{"label":"bench"}' "$API/api/v1/clients" | json "['data']['client']['id']")
for i in $(seq "$MAPPINGS"); do
  call -d "{\"entry\":{\"kind\":\"http_host\",\"host\":\"seed$i.bench.example\"},\"protocol\":\"http\",
    \"target_client\":$CLIENT,\"target\":{\"kind\":\"fixed\",\"host\":\"127.0.0.1\",\"port\":80}}" \
    "$API/api/v1/mappings" > "$WORK/last.json"
done
ID=$(json "['data']['id']" < "$WORK/last.json")

cat > "$WORK/create.lua" <<LUA
local counter = 0
local thread_id = 0
local threads = 0
function setup(thread) thread:set("thread_id", threads); threads = threads + 1 end
request = function()
  counter = counter + 1
  local body = '{"entry":{"kind":"http_host","host":"t' .. thread_id .. 'n' .. counter ..
    '-' .. math.random(1e9) .. '.bench.example"},"protocol":"http","target_client":$CLIENT,' ..
    '"target":{"kind":"fixed","host":"127.0.0.1","port":80}}'
  return wrk.format("POST", "/api/v1/mappings", nil, body)
end
LUA
cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }
# One wrk run; prints: requests/s, p50, p90, p99 (ms), non-2xx, server CPU seconds.
measure() {
  local before after out
  before=$(cpu "$SERVER")
  out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency \
    -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@")
  after=$(cpu "$SERVER")
  python3 - "$before" "$after" <<PY
import re, sys
out = """$out"""
def ms(label):
    m = re.search(r"^\s+" + label + r"\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors = re.search(r"Socket errors: (.*)", out)
print(f"{rps:.0f},{ms('50%'):.3f},{ms('90%'):.3f},{ms('99%'):.3f},{bad.group(1) if bad else 0},"
      f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}{',' + errors.group(1) if errors else ''}")
PY
}
echo "server_threads=$SERVER_THREADS wrk_threads=$WRK_THREADS connections=$CONNECTIONS seconds=$SECONDS_PER_RUN mappings=$MAPPINGS"
echo "run,case,requests_per_sec,p50_ms,p90_ms,p99_ms,non_2xx,server_cpu_s"
for run in $(seq "$RUNS"); do
  echo "$run,get,$(measure "$API/api/v1/mappings/$ID")"
done
for run in $(seq "$RUNS"); do
  echo "$run,create,$(measure -s "$WORK/create.lua" "$API")"
done
TOTAL=$(call "$API/api/v1/mappings?limit=1" | json "['data']['total']")
echo "mappings held at the end: $TOTAL"
