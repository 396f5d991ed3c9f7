#!/usr/bin/env bash
# The cluster on loopback: three clustered `tunnox server` processes sharing the local Redis.
#  latency:  the same 64-byte ping-pong and iperf3 stream through a tunnel whose entry and target
#            clients are on the same node, then on different nodes (entry -> node 1 -> bridge ->
#            node 2 -> target);
#  streams:  STREAMS (2000) concurrent connections held through the cross-node tunnel, each
#            proven by an echo, and how many bridge connections carry them;
#  failover: node 2 killed; time until a new stream through the tunnel works again (the target
#            client moves to node 3), against the lease.
# Needs: release binaries (cargo build --release -p tunnox -p tunnox-bench), iperf3, Redis.
# Usage: bench/cluster/run.sh  (SECTIONS="latency streams failover" SECONDS_PER_RUN=5
#        ROUNDS=20000 RUNS=3 STREAMS=1000 LEASE_MS=3000)
set -euo pipefail
cd "$(dirname "$0")/../.."
T="${CARGO_TARGET_DIR:-target}/release"
TUNNOX="$T/tunnox"; PROBE="$T/tunnel-probe"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"; ROUNDS="${ROUNDS:-20000}"; RUNS="${RUNS:-3}"
SECTIONS="${SECTIONS:-latency streams failover}"; STREAMS="${STREAMS:-2000}"; LEASE_MS="${LEASE_MS:-3000}"
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
ulimit -n 65536 2>/dev/null || true
declare -A NODE_PID AGENT_PID
# CPU seconds (user + system) a process has used so far.
cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }
for i in 1 2 3; do
  cat > "$WORK/n$i.yaml" <<YAML
node_id: n$i
listen: 127.0.0.1:1980$i
tls: { insecure_plaintext: true }
cluster:
  bridge_listen: 127.0.0.1:1981$i
  redis_url: redis://127.0.0.1:6379
  key_prefix: "$PREFIX"
  token_file: $WORK/token
  lease_ms: $LEASE_MS
YAML
  "$TUNNOX" server --config "$WORK/n$i.yaml" > "$WORK/n$i.log" 2>&1 & PIDS+=($!)
  NODE_PID[$i]=$!
done
sleep 1.5

# tunnel NAME TARGET_NODES SERVICE_PORT LISTEN_PORT: a target client given TARGET_NODES (e.g.
# "2 3", tried in turn) offers the service; an entry client on node 1 listens on LISTEN_PORT.
tunnel() {
  local name=$1 nodes=$2 service=$3 listen=$4 servers=()
  for n in $nodes; do servers+=(--server "127.0.0.1:1980$n"); done
  "$TUNNOX" client --insecure-plaintext --credentials "$WORK/$name-t.json" \
    "${servers[@]}" tcp "$service" > "$WORK/$name-t.log" 2>&1 & PIDS+=($!)
  AGENT_PID[$name-t]=$!
  for _ in $(seq 50); do grep -q 'connection code:' "$WORK/$name-t.log" && break; sleep 0.1; done
  local code; code=$(grep 'connection code:' "$WORK/$name-t.log" | awk '{print $NF}')
  for _ in $(seq 5); do
    "$TUNNOX" client --insecure-plaintext --credentials "$WORK/$name-e.json" \
      --server 127.0.0.1:19801 use "$code" --listen "127.0.0.1:$listen" > "$WORK/$name-e.log" 2>&1 & PIDS+=($!)
    AGENT_PID[$name-e]=$!
    sleep 1
    grep -q 'ready: listening' "$WORK/$name-e.log" && return 0
  done
  echo "tunnel $name did not come up" >&2; exit 1
}
has() { [[ " $SECTIONS " == *" $1 "* ]]; }

if has latency; then
  tunnel echo-same 1 19900 19910
  tunnel iperf-same 1 19901 19911
  tunnel echo-cross 2 19900 19920
  tunnel iperf-cross 2 19901 19921
  # CPU per GB moved by iperf3, per process: the entry client, node 1, node 2, the target client.
  echo "run,case,ping_p50_us,ping_p99_us,iperf_gbit_s,cpu_s_per_gb_entry,node1,node2,target"
  for run in $(seq "$RUNS"); do
    for case in same:19910:19911 cross:19920:19921; do
      IFS=: read -r name echo_port iperf_port <<< "$case"
      lat=$("$PROBE" ping-pong --to "127.0.0.1:$echo_port" --rounds "$ROUNDS")
      procs=("${AGENT_PID[iperf-$name-e]}" "${NODE_PID[1]}" "${NODE_PID[2]}" "${AGENT_PID[iperf-$name-t]}")
      before=(); for p in "${procs[@]}"; do before+=("$(cpu "$p")"); done
      json=$(iperf3 -c 127.0.0.1 -p "$iperf_port" -t "$SECONDS_PER_RUN" -J)
      gbit=$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9, 2))' <<< "$json")
      gb=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bytes"]/1e9)' <<< "$json")
      per=(); for i in "${!procs[@]}"; do
        per+=("$(python3 -c "print(round(($(cpu "${procs[$i]}") - ${before[$i]}) / $gb, 2))")")
      done
      echo "$run,$name,${lat// /,},$gbit,$(IFS=,; echo "${per[*]}")"
    done
  done
fi

if has streams; then
  tunnel hold-cross 2 19900 19930
  # Bridge connections between node 1 and node 2 (either may have dialled): node 1's sockets to
  # node 2's bridge port plus node 2's sockets to node 1's.
  owned() { ss -Htnp state established "( dport = :$2 )" | grep -c "pid=$1," || true; }
  bridges() { echo $(( $(owned "${NODE_PID[1]}" 19812) + $(owned "${NODE_PID[2]}" 19811) )); }
  before=$(bridges)
  coproc HOLD { "$PROBE" hold --to 127.0.0.1:19930 --count "$STREAMS"; }
  read -r held_line <&"${HOLD[0]}"
  during=$(bridges)
  rss1=$(ps -o rss= -p "${NODE_PID[1]}"); rss2=$(ps -o rss= -p "${NODE_PID[2]}")
  echo "streams: $held_line through the cross-node tunnel; bridge connections node 1 <-> node 2: $before before, $during while held (new streams take the least-loaded link); RSS node1 ${rss1} KiB node2 ${rss2} KiB"
  exec {HOLD[1]}>&-
  wait "$HOLD_PID" 2>/dev/null || true
fi

if has failover; then
  tunnel fail-cross "2 3" 19900 19940
  "$PROBE" ping-pong --to 127.0.0.1:19940 --rounds 100 --warmup 10 > /dev/null
  kill -9 "${NODE_PID[2]}"
  start=$(date +%s%N)
  until "$PROBE" ping-pong --to 127.0.0.1:19940 --rounds 1 --warmup 0 > /dev/null 2>&1; do
    sleep 0.02
    (( $(date +%s%N) - start < 60000000000 )) || { echo "failover: no stream after 60 s" >&2; exit 1; }
  done
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "failover: node 2 killed; a new stream worked again after $ms ms (lease $LEASE_MS ms, goal < $((2 * LEASE_MS)) ms)"
fi
