#!/usr/bin/env bash
# Side-by-side tunnel benchmarks on 127.0.0.1: raw loopback (the physical limit), tunnox through a
# node_port mapping and through a client_port mapping, rathole and bore, all set up once and
# measured in the same run. Every figure is the median (min, max) of RUNS runs, with its ratio to
# rathole and to bore from the same run.
#
#   cargo build --release -p tunnox -p tunnox-bench
#   bench/peers/run.sh                         # needs iperf3 and redis-benchmark; rathole and
#                                              # bore on PATH (cargo install rathole bore-cli)
#   RUNS=5 SECTIONS="throughput latency" bench/peers/run.sh
#
# Sections (SECTIONS, default all; run in this order):
#   idle        RSS per idle tunnelled connection of the tunnel's processes, at IDLE_COUNTS
#   throughput  iperf3, 1 and 8 streams (STREAMS), SECONDS_PER_RUN each; CPU seconds per GB
#               moved (user+system of the tunnel's processes over the bytes iperf3 received)
#   latency     64-byte ping-pong round trip p50/p99 over one connection (tunnel-probe)
#   connect     new-connection latency p50/p99: connect, send a byte, get it back (tunnel-probe)
#   redis       redis-benchmark GET, 50 clients, without and with pipelining (-P 16), requests/s
#
# Tunnels run without TLS (rathole and bore's defaults) so the comparison is of the tunnel itself.
# Prints Markdown tables on stdout; logs go to $WORK.
set -euo pipefail

RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
STREAMS=${STREAMS:-"1 8"}
SECTIONS=${SECTIONS:-"idle throughput latency connect redis"}
# 9,000, not 10,000, for all: rathole and bore use two sockets per connection on each side and this
# machine caps a process at 20,000 descriptors. IDLE_TUNNOX_ONLY adds counts for tunnox alone.
IDLE_COUNTS=${IDLE_COUNTS:-"1000 9000"}
IDLE_TUNNOX_ONLY=${IDLE_TUNNOX_ONLY:-"10000"}
PING_ROUNDS=${PING_ROUNDS:-20000}
CONNECTS=${CONNECTS:-2000}
REDIS_REQUESTS=${REDIS_REQUESTS:-200000}
TUNNOX=${TUNNOX:-target/release/tunnox}
PROBE=${PROBE:-target/release/tunnel-probe}
WORK=$(mktemp -d /tmp/tunnox-peers.XXXXXX)

# Services: iperf3, an echo service, and the machine's Redis.
IPERF=15201 ECHO=15211 REDIS=6379
SERVICES=(iperf echo redis)
declare -A SERVICE_PORT=([iperf]=$IPERF [echo]=$ECHO [redis]=$REDIS)
# Public port of each tunnel for service index k: base + k.
declare -A BASE=([tunnox]=15300 [tunnox-cp]=15400 [rathole]=15500 [bore]=15600)

declare -A PID_OF=()
cleanup() {
  for p in "${PID_OF[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# start NAME CMD...: runs CMD in the background, logging to $WORK/NAME.log.
start() { local name=$1; shift; "$@" >>"$WORK/$name.log" 2>&1 & PID_OF[$name]=$!; }
stop() { kill "${PID_OF[$1]}" 2>/dev/null || true; wait "${PID_OF[$1]}" 2>/dev/null || true; unset "PID_OF[$1]"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 200); do port_open "$1" && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
wait_line() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "no '$2' in $1" >&2; return 1; }
port_of() { local k; for k in "${!SERVICES[@]}"; do if [ "${SERVICES[$k]}" = "$2" ]; then echo $((BASE[$1] + k)); fi; done; }
# The processes that make up a tunnel (for CPU and RSS): $1 = tunnel, $2 = service.
procs_of() {
  case $1 in
    tunnox) echo "${PID_OF[tunnox-node]} ${PID_OF[tunnox-target]}" ;;
    tunnox-cp) echo "${PID_OF[tunnox-node]} ${PID_OF[tunnox-target]} ${PID_OF[tunnox-listen]}" ;;
    rathole) echo "${PID_OF[rathole-server]} ${PID_OF[rathole-client]}" ;;
    bore) echo "${PID_OF[bore-server]} ${PID_OF[bore-$2]}" ;;
  esac
}
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
rss_kib() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
# median min max of the numbers on stdin.
stats() { sort -g | awk '{v[NR]=$1} END {printf "%s %s %s\n", v[int((NR+1)/2)], v[1], v[NR]}'; }
ratio() { python3 -c "import sys; a, b = sys.argv[1], sys.argv[2]; print(f'{float(a)/float(b):.2f}' if b not in ('', '0', 'n/a') and a != 'n/a' else 'n/a')" "$1" "${2:-}"; }

# ---- services ---------------------------------------------------------------------------------
start iperf3 iperf3 -s -p "$IPERF"
start echo "$PROBE" echo --listen "127.0.0.1:$ECHO"
wait_port "$IPERF"; wait_port "$ECHO"
have_redis=0; port_open "$REDIS" && command -v redis-benchmark >/dev/null && have_redis=1

# ---- tunnox: register a target and a listen client, then restart the node with the mappings ----
cat >"$WORK/tunnox.yaml" <<EOF
listen: 127.0.0.1:17000
data_dir: $WORK/tunnox-data
tls: { insecure_plaintext: true }
EOF
start tunnox-node "$TUNNOX" server --config "$WORK/tunnox.yaml"
wait_port 17000
start tunnox-target "$TUNNOX" client --server 127.0.0.1:17000 --insecure-plaintext --credentials "$WORK/target.json"
start tunnox-listen "$TUNNOX" client --server 127.0.0.1:17000 --insecure-plaintext --credentials "$WORK/listen.json"
wait_line "$WORK/tunnox-target.log" "registered as client"
wait_line "$WORK/tunnox-listen.log" "registered as client"
target_id=$(grep -o 'registered as client [0-9]*' "$WORK/tunnox-target.log" | awk '{print $4}')
listen_id=$(grep -o 'registered as client [0-9]*' "$WORK/tunnox-listen.log" | awk '{print $4}')
echo "mappings:" >>"$WORK/tunnox.yaml"
for k in "${!SERVICES[@]}"; do
  s=${SERVICES[$k]}
  cat >>"$WORK/tunnox.yaml" <<EOF
  - name: $s-node-port
    entry: { kind: node_port, port: $((BASE[tunnox] + k)), bind: 127.0.0.1 }
    target_client: $target_id
    target: { kind: fixed, host: 127.0.0.1, port: ${SERVICE_PORT[$s]} }
  - name: $s-client-port
    entry: { kind: client_port, listen_client: $listen_id, listen_addr: "127.0.0.1:$((BASE[tunnox-cp] + k))" }
    target_client: $target_id
    target: { kind: fixed, host: 127.0.0.1, port: ${SERVICE_PORT[$s]} }
EOF
done
stop tunnox-node
run_tunnox() {
  start tunnox-node "$TUNNOX" server --config "$WORK/tunnox.yaml"
  wait_port 17000
  start tunnox-target "$TUNNOX" client --server 127.0.0.1:17000 --insecure-plaintext --credentials "$WORK/target.json"
  start tunnox-listen "$TUNNOX" client --server 127.0.0.1:17000 --insecure-plaintext --credentials "$WORK/listen.json"
}
stop tunnox-listen; stop tunnox-target
run_tunnox
tunnels=(tunnox tunnox-cp)

# ---- rathole ----------------------------------------------------------------------------------
if command -v rathole >/dev/null; then
  {
    echo '[server]'; echo 'bind_addr = "127.0.0.1:17001"'
    for k in "${!SERVICES[@]}"; do
      printf '[server.services.%s]\ntoken = "bench-only-token"\nbind_addr = "127.0.0.1:%s"\n' "${SERVICES[$k]}" $((BASE[rathole] + k))
    done
  } >"$WORK/rathole-server.toml"
  {
    echo '[client]'; echo 'remote_addr = "127.0.0.1:17001"'
    for s in "${SERVICES[@]}"; do
      printf '[client.services.%s]\ntoken = "bench-only-token"\nlocal_addr = "127.0.0.1:%s"\n' "$s" "${SERVICE_PORT[$s]}"
    done
  } >"$WORK/rathole-client.toml"
  run_rathole() {
    start rathole-server rathole "$WORK/rathole-server.toml"
    wait_port 17001
    start rathole-client rathole "$WORK/rathole-client.toml"
  }
  run_rathole
  tunnels+=(rathole)
fi

# ---- bore (one `bore local` per service) -------------------------------------------------------
if command -v bore >/dev/null; then
  run_bore() {
    start bore-server bore server --min-port "${BASE[bore]}" --max-port $((BASE[bore] + ${#SERVICES[@]} - 1))
    wait_port 7835
    local k
    for k in "${!SERVICES[@]}"; do
      start "bore-${SERVICES[$k]}" bore local "${SERVICE_PORT[${SERVICES[$k]}]}" --to 127.0.0.1 --port $((BASE[bore] + k))
    done
  }
  run_bore
  tunnels+=(bore)
fi

# wait_tunnel TUNNEL: until a byte makes it through to the echo service and back.
wait_tunnel() {
  for _ in $(seq 200); do
    "$PROBE" connect --to "127.0.0.1:$(port_of "$1" echo)" --count 1 --warmup 0 >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no echo through $1" >&2; return 1
}
# restart TUNNEL: fresh processes, so a memory measurement starts from a clean heap.
restart() {
  local tunnel service
  case $1 in
    tunnox | tunnox-cp) stop tunnox-listen; stop tunnox-target; stop tunnox-node; run_tunnox ;;
    rathole) stop rathole-client; stop rathole-server; run_rathole ;;
    bore) for service in "${SERVICES[@]}"; do stop "bore-$service"; done; stop bore-server; run_bore ;;
  esac
  for tunnel in "${tunnels[@]}"; do wait_tunnel "$tunnel"; done
  sleep 1
}
for t in "${tunnels[@]}"; do
  wait_port "$(port_of "$t" iperf)"; wait_tunnel "$t"
done
sleep 1

# table HEADER...: starts a Markdown table whose last columns are × rathole and × bore.
table() { local h; printf '\n|'; for h in "$@"; do printf ' %s |' "$h"; done; printf ' × rathole | × bore |\n|'; for h in "$@" x y; do printf -- '---|'; done; echo; }

# ---- RSS per idle connection --------------------------------------------------------------------
# Every run starts the tunnel's processes afresh (memory freed by an earlier run would stay with
# the process and hide the next run's growth); per connection = (RSS holding N connections, all
# proven end to end - RSS before) / N.
if [[ " $SECTIONS " == *" idle "* ]]; then
  echo; echo "### RSS per idle tunnelled connection (KiB; node/server + client(s)), $RUNS runs"
  table tunnel connections "KiB/conn median" min max "node or server KiB/conn median" "client(s) KiB/conn median"
  idle_run() { # tunnel count -> "total server clients" KiB per connection
    local t=$1 n=$2 procs server clients before_s before_c after_s after_c
    restart "$t" >&2
    procs=$(procs_of "$t" echo); server=${procs%% *}; clients=${procs#* }
    before_s=$(rss_kib "$server"); before_c=$(rss_kib $clients)
    coproc HOLD { "$PROBE" hold --to "127.0.0.1:$(port_of "$t" echo)" --count "$n"; }
    local line; read -r line <&"${HOLD[0]}"
    [ "$line" = "held $n" ] || { echo "hold through $t failed: $line" >&2; return 1; }
    sleep 1
    after_s=$(rss_kib "$server"); after_c=$(rss_kib $clients)
    local hold_in=${HOLD[1]}
    exec {hold_in}>&-; wait "$HOLD_PID" 2>/dev/null || true
    sleep 2 # let the tunnel close the connections before the next run
    python3 -c "s=($after_s-$before_s)/$n; c=($after_c-$before_c)/$n; print(f'{s+c:.2f} {s:.2f} {c:.2f}')"
  }
  for n in $IDLE_COUNTS $IDLE_TUNNOX_ONLY; do
    declare -A kib=() rows=()
    for t in "${tunnels[@]}"; do
      [[ " $IDLE_COUNTS " == *" $n "* ]] || [[ $t == tunnox* ]] || continue
      : >"$WORK/total"; : >"$WORK/server"; : >"$WORK/clients"
      for _ in $(seq "$RUNS"); do
        # In this shell, not a subshell: the run restarts processes whose ids later sections use.
        idle_run "$t" "$n" >"$WORK/idle-run"
        read -r a b c <"$WORK/idle-run"
        echo "$a" >>"$WORK/total"; echo "$b" >>"$WORK/server"; echo "$c" >>"$WORK/clients"
      done
      read -r m l h < <(stats <"$WORK/total")
      kib[$t]=$m
      rows[$t]="$m | $l | $h | $(stats <"$WORK/server" | cut -d' ' -f1) | $(stats <"$WORK/clients" | cut -d' ' -f1)"
    done
    for t in "${tunnels[@]}"; do
      [ -n "${rows[$t]:-}" ] && echo "| $t | $n | ${rows[$t]} | $(ratio "${kib[$t]}" "${kib[rathole]:-}") | $(ratio "${kib[$t]}" "${kib[bore]:-}") |"
    done
    unset kib rows
  done
fi

# ---- throughput and CPU per GB ----------------------------------------------------------------
if [[ " $SECTIONS " == *" throughput "* ]]; then
  hz=$(getconf CLK_TCK)
  echo; echo "### iperf3 throughput (Gbit/s) and CPU seconds per GB, $RUNS runs of ${SECONDS_PER_RUN} s"
  table tunnel streams "Gbit/s median" min max "CPU s/GB median" min max "× rathole CPU/GB"
  for streams in $STREAMS; do
    declare -A gbit=() cpu=() rows=()
    for t in raw "${tunnels[@]}"; do
      port=$([ "$t" = raw ] && echo "$IPERF" || port_of "$t" iperf)
      : >"$WORK/series"; : >"$WORK/cpu"
      for _ in $(seq "$RUNS"); do
        procs=$([ "$t" = raw ] && echo "" || procs_of "$t" iperf)
        before=$(cpu_ticks $procs)
        json=$(iperf3 -c 127.0.0.1 -p "$port" -P "$streams" -t "$SECONDS_PER_RUN" -J 2>>"$WORK/iperf-client.log")
        after=$(cpu_ticks $procs)
        read -r bps bytes < <(python3 -c 'import json,sys; s=json.load(sys.stdin)["end"]["sum_received"]; print(s["bits_per_second"], s["bytes"])' <<<"$json")
        python3 -c "print(round($bps/1e9, 2))" >>"$WORK/series"
        [ "$t" = raw ] || python3 -c "print(round(($after - $before) / $hz / ($bytes / 1e9), 3))" >>"$WORK/cpu"
      done
      read -r med lo hi < <(stats <"$WORK/series")
      if [ "$t" = raw ]; then cmed=n/a clo=n/a chi=n/a; else read -r cmed clo chi < <(stats <"$WORK/cpu"); fi
      gbit[$t]=$med cpu[$t]=$cmed
      rows[$t]="$med | $lo | $hi | $cmed | $clo | $chi"
    done
    for t in raw "${tunnels[@]}"; do
      echo "| $t | $streams | ${rows[$t]} | $(ratio "${cpu[$t]}" "${cpu[rathole]:-}") | $(ratio "${gbit[$t]}" "${gbit[rathole]:-}") | $(ratio "${gbit[$t]}" "${gbit[bore]:-}") |"
    done
    unset gbit cpu rows
  done
fi

# latency_section TITLE PROBE-ARGS...: p50/p99 in µs through every tunnel to the echo service.
latency_section() {
  local title=$1; shift
  echo; echo "### $title, $RUNS runs (µs)"
  table tunnel "p50 median" min max "p99 median" min max
  declare -A p50=() p99=() rows=()
  for t in raw "${tunnels[@]}"; do
    port=$([ "$t" = raw ] && echo "$ECHO" || port_of "$t" echo)
    : >"$WORK/p50"; : >"$WORK/p99"
    for _ in $(seq "$RUNS"); do
      read -r a b < <("$PROBE" "$@" --to "127.0.0.1:$port")
      echo "$a" >>"$WORK/p50"; echo "$b" >>"$WORK/p99"
    done
    read -r m1 l1 h1 < <(stats <"$WORK/p50")
    read -r m2 l2 h2 < <(stats <"$WORK/p99")
    p50[$t]=$m1 p99[$t]=$m2
    rows[$t]="$m1 | $l1 | $h1 | $m2 | $l2 | $h2"
  done
  for t in raw "${tunnels[@]}"; do
    echo "| $t | ${rows[$t]} | p50 $(ratio "${p50[$t]}" "${p50[rathole]:-}"), p99 $(ratio "${p99[$t]}" "${p99[rathole]:-}") | p50 $(ratio "${p50[$t]}" "${p50[bore]:-}"), p99 $(ratio "${p99[$t]}" "${p99[bore]:-}") |"
  done
}
[[ " $SECTIONS " == *" latency "* ]] && latency_section "64-byte ping-pong round trip ($PING_ROUNDS rounds)" ping-pong --rounds "$PING_ROUNDS"
[[ " $SECTIONS " == *" connect "* ]] && latency_section "New connection: connect, send a byte, get it back ($CONNECTS connections)" connect --count "$CONNECTS"

# ---- redis-benchmark --------------------------------------------------------------------------
if [[ " $SECTIONS " == *" redis "* ]] && [ "$have_redis" = 1 ]; then
  for t in "${tunnels[@]}"; do wait_port "$(port_of "$t" redis)"; done
  echo; echo "### redis-benchmark GET, 50 clients, $REDIS_REQUESTS requests, $RUNS runs (requests/s)"
  table tunnel pipeline "req/s median" min max
  for pipeline in 1 16; do
    declare -A rps=() rows=()
    for t in raw "${tunnels[@]}"; do
      port=$([ "$t" = raw ] && echo "$REDIS" || port_of "$t" redis)
      : >"$WORK/rps"
      for _ in $(seq "$RUNS"); do
        redis-benchmark -h 127.0.0.1 -p "$port" -t get -c 50 -n "$REDIS_REQUESTS" -P "$pipeline" --csv 2>>"$WORK/redis-benchmark.log" |
          awk -F'"' '/^"GET"/ {print $4}' >>"$WORK/rps"
      done
      read -r m l h < <(stats <"$WORK/rps")
      rps[$t]=$m rows[$t]="$m | $l | $h"
    done
    for t in raw "${tunnels[@]}"; do
      echo "| $t | $pipeline | ${rows[$t]} | $(ratio "${rps[$t]}" "${rps[rathole]:-}") | $(ratio "${rps[$t]}" "${rps[bore]:-}") |"
    done
    unset rps rows
  done
elif [[ " $SECTIONS " == *" redis "* ]]; then
  echo; echo "(redis section skipped: no Redis on 127.0.0.1:$REDIS or no redis-benchmark)"
fi
echo; echo "logs: $WORK"
