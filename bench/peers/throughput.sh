#!/usr/bin/env bash
# Side-by-side iperf3 throughput through a public (node-port style) tunnel on 127.0.0.1:
# raw loopback, tunnox node_port, rathole and bore, each from RUNS runs (median, min, max).
#
#   bench/peers/throughput.sh            # needs iperf3, target/release/tunnox, and optionally
#                                        # rathole and bore on PATH (cargo install rathole bore-cli)
#   RUNS=5 SECONDS_PER_RUN=10 STREAMS="1 8" bench/peers/throughput.sh
#
# All tunnels run without TLS (rathole and bore's defaults), so the comparison is of the
# tunnel itself. Prints a Markdown table on stdout; logs go to $WORK.
set -euo pipefail

RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
STREAMS=${STREAMS:-"1 8"}
TUNNOX=${TUNNOX:-target/release/tunnox}
WORK=$(mktemp -d /tmp/tunnox-peers.XXXXXX)
SERVICE=15201 TUNNOX_PUBLIC=15202 RATHOLE_PUBLIC=15203 BORE_PUBLIC=15204
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start() { "$@" >>"$WORK/$(basename "$1").log" 2>&1 & PIDS+=($!); }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
wait_line() { for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "no '$2' in $1" >&2; return 1; }

# One iperf3 run: Gbit/s received.
iperf() {
  iperf3 -c 127.0.0.1 -p "$1" -P "$2" -t "$SECONDS_PER_RUN" -J 2>>"$WORK/iperf-client.log" |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9, 2))'
}
# RUNS runs: "median min max".
series() {
  local xs=() 
  for _ in $(seq "$RUNS"); do xs+=("$(iperf "$1" "$2")"); done
  printf '%s\n' "${xs[@]}" | sort -g | awk '{v[NR]=$1} END {printf "%s %s %s\n", v[int((NR+1)/2)], v[1], v[NR]}'
}

start iperf3 -s -p "$SERVICE"
wait_port "$SERVICE"

# tunnox: register the target client, then restart the node with a node_port mapping to it.
cat >"$WORK/tunnox.yaml" <<EOF
listen: 127.0.0.1:17000
data_dir: $WORK/tunnox-data
tls: { insecure_plaintext: true }
EOF
"$TUNNOX" server --config "$WORK/tunnox.yaml" >"$WORK/server1.log" 2>&1 & server=$!
wait_port 17000
start "$TUNNOX" client --server 127.0.0.1:17000 --insecure-plaintext --credentials "$WORK/b.json"
wait_line "$WORK/tunnox.log" "registered as client"
client_id=$(grep -o 'registered as client [0-9]*' "$WORK/tunnox.log" | awk '{print $4}')
cat >>"$WORK/tunnox.yaml" <<EOF
mappings:
  - name: iperf
    entry: { kind: node_port, port: $TUNNOX_PUBLIC, bind: 127.0.0.1 }
    target_client: $client_id
    target: { kind: fixed, host: 127.0.0.1, port: $SERVICE }
EOF
kill "$server"; wait "$server" 2>/dev/null || true
start "$TUNNOX" server --config "$WORK/tunnox.yaml"
wait_port "$TUNNOX_PUBLIC"

peers=("raw:$SERVICE" "tunnox:$TUNNOX_PUBLIC")
if command -v rathole >/dev/null; then
  cat >"$WORK/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:17001"
[server.services.iperf]
token = "bench-only-token"
bind_addr = "127.0.0.1:$RATHOLE_PUBLIC"
EOF
  cat >"$WORK/rathole-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:17001"
[client.services.iperf]
token = "bench-only-token"
local_addr = "127.0.0.1:$SERVICE"
EOF
  start rathole "$WORK/rathole-server.toml"
  wait_port 17001
  start rathole "$WORK/rathole-client.toml"
  wait_port "$RATHOLE_PUBLIC"
  sleep 1
  peers+=("rathole:$RATHOLE_PUBLIC")
fi
if command -v bore >/dev/null; then
  start bore server --min-port "$BORE_PUBLIC" --max-port "$BORE_PUBLIC"
  wait_port 7835
  start bore local "$SERVICE" --to 127.0.0.1 --port "$BORE_PUBLIC"
  wait_port "$BORE_PUBLIC"
  peers+=("bore:$BORE_PUBLIC")
fi

echo "| tunnel | streams | Gbit/s median | min | max | × rathole |"
echo "|---|---|---|---|---|---|"
for streams in $STREAMS; do
  declare -A median=()
  rows=()
  for peer in "${peers[@]}"; do
    name=${peer%%:*} port=${peer##*:}
    read -r med lo hi < <(series "$port" "$streams")
    median[$name]=$med
    rows+=("$name $med $lo $hi")
  done
  for row in "${rows[@]}"; do
    read -r name med lo hi <<<"$row"
    ratio=$(python3 -c "r=${median[rathole]:-0}; print(f'{$med/r:.2f}' if r else 'n/a')")
    echo "| $name | $streams | $med | $lo | $hi | $ratio |"
  done
  unset median
done
