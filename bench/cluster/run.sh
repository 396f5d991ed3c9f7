#!/usr/bin/env bash
# Cross-node cost on loopback: two clustered `tunnox server` processes sharing the local Redis;
# the same 64-byte ping-pong and iperf3 stream through a tunnel whose entry and target clients are
# on the same node, then on different nodes (entry -> node 1 -> bridge -> node 2 -> target).
# Needs: release binaries (cargo build --release -p tunnox -p tunnox-bench), iperf3, Redis.
# Usage: bench/cluster/run.sh   (SECONDS_PER_RUN=5 ROUNDS=20000 RUNS=3)
set -euo pipefail
cd "$(dirname "$0")/../.."
T="${CARGO_TARGET_DIR:-target}/release"
TUNNOX="$T/tunnox"; PROBE="$T/tunnel-probe"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"; ROUNDS="${ROUNDS:-20000}"; RUNS="${RUNS:-3}"
WORK="$(mktemp -d)"; PREFIX="tunnox-bench-$$:"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli --scan --pattern "${PREFIX}*" | xargs -r redis-cli del >/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
bg() { "$@" > "$WORK/log.$RANDOM" 2>&1 & PIDS+=($!); }
head -c 32 /dev/urandom | base64 > "$WORK/token"

"$PROBE" echo --listen 127.0.0.1:19900 > /dev/null 2>&1 & PIDS+=($!)
iperf3 -s -p 19901 > /dev/null 2>&1 & PIDS+=($!)
for i in 1 2; do
  cat > "$WORK/n$i.yaml" <<YAML
node_id: n$i
listen: 127.0.0.1:1980$i
tls: { insecure_plaintext: true }
cluster:
  bridge_listen: 127.0.0.1:1981$i
  redis_url: redis://127.0.0.1:6379
  key_prefix: "$PREFIX"
  token_file: $WORK/token
YAML
  "$TUNNOX" server --config "$WORK/n$i.yaml" > "$WORK/n$i.log" 2>&1 & PIDS+=($!)
done
sleep 1.5

# tunnel NAME TARGET_NODE SERVICE_PORT LISTEN_PORT: target client on TARGET_NODE offers the
# service, an entry client on node 1 listens on LISTEN_PORT.
tunnel() {
  local name=$1 node=$2 service=$3 listen=$4
  "$TUNNOX" client --insecure-plaintext --credentials "$WORK/$name-t.json" \
    --server "127.0.0.1:1980$node" tcp "$service" > "$WORK/$name-t.log" 2>&1 & PIDS+=($!)
  for _ in $(seq 50); do grep -q 'connection code:' "$WORK/$name-t.log" && break; sleep 0.1; done
  local code; code=$(grep 'connection code:' "$WORK/$name-t.log" | awk '{print $NF}')
  for _ in $(seq 5); do
    "$TUNNOX" client --insecure-plaintext --credentials "$WORK/$name-e.json" \
      --server 127.0.0.1:19801 use "$code" --listen "127.0.0.1:$listen" > "$WORK/$name-e.log" 2>&1 & PIDS+=($!)
    sleep 1
    grep -q 'ready: listening' "$WORK/$name-e.log" && return 0
  done
  echo "tunnel $name did not come up" >&2; exit 1
}
tunnel echo-same 1 19900 19910
tunnel iperf-same 1 19901 19911
tunnel echo-cross 2 19900 19920
tunnel iperf-cross 2 19901 19921

echo "run,case,ping_p50_us,ping_p99_us,iperf_gbit_s"
for run in $(seq "$RUNS"); do
  for case in same:19910:19911 cross:19920:19921; do
    IFS=: read -r name echo_port iperf_port <<< "$case"
    lat=$("$PROBE" ping-pong --to "127.0.0.1:$echo_port" --rounds "$ROUNDS")
    gbit=$(iperf3 -c 127.0.0.1 -p "$iperf_port" -t "$SECONDS_PER_RUN" -J \
      | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9, 2))')
    echo "$run,$name,${lat// /,},$gbit"
  done
done
