#!/bin/bash
# Agent CPU per request, thread by thread (loops, access-log writer, OTLP exporter), of a
# race-like mesh on loopback: three mock providers (0 ms), three provider-agents
# (fastjson, weights 1/2/3), one consumer-agent, `bench load` at CONNS connections
# (default 256). A 1 s warm-up, then a 4 s window read from /proc/PID/task/*/stat.
#
#   bash bench/scripts/thread-cpu.sh [CONNS] [FLAGS]
#
# With PROTOCOL=dubbo the load is Dubbo (hessian2) to the consumer-agent's
# `--dubbo-listen` (port 27005) instead of HTTP. PROVIDERS=1 (or 2) starts only the
# first provider-agents and their providers: the two agents of one call.
#
# FLAGS go to every agent; with `--otlp-endpoint http://127.0.0.1:31318/v1/traces` in
# them, spans go to a sink on that port (post-sink.py) and each agent also writes an
# access log in the temporary directory. Ports 27000-27131, 31318.
set -u
C=${1:-256} FLAGS=${2:-} PROTOCOL=${PROTOCOL:-http} N=${PROVIDERS:-3}
B=${B:-${CARGO_TARGET_DIR:-target}/release}
S=com.alibaba.dubbo.performance.demo.provider.IHelloService
D=$(mktemp -d)
mkdir -p "$D/reg/$S"
PIDS=""
case "$FLAGS" in *--otlp-endpoint*)
  python3 "$(dirname "$0")/post-sink.py" 31318 > /dev/null 2>&1 & PIDS="$PIDS $!";;
esac
log() { case "$FLAGS" in *--otlp-endpoint*) echo "--access-log $D/access-$1.log";; esac; }
for i in $(seq 1 "$N"); do
  $B/bench provider --listen 127.0.0.1:$((27100 + i)) --latency-ms 0 --threads 200 > /dev/null 2>&1 &
  PIDS="$PIDS $!"
done
sleep 0.3
AGENTS=""
for i in $(seq 1 "$N"); do
  $B/provider-agent --listen 127.0.0.1:$((27000 + 10 * i)) --advertise 127.0.0.1:$((27000 + 10 * i)) \
    --admin 127.0.0.1:$((27001 + 10 * i)) --provider 127.0.0.1:$((27100 + i)) --service $S \
    --registry file://$D/reg --loops 1 --serialization fastjson --weight $i --max-inflight 200 \
    $FLAGS $(log p$i) > $D/pa$i.log 2>&1 &
  AGENTS="$AGENTS $!"
done
sleep 0.5
$B/consumer-agent --listen 127.0.0.1:27000 --admin 127.0.0.1:27001 --registry file://$D/reg \
  --dubbo-listen 127.0.0.1:27005 --service $S --loops 1 --lb adaptive $FLAGS $(log c) > $D/ca.log 2>&1 &
AGENTS="$AGENTS $!"
sleep 1.5
snap() { for p in $AGENTS; do for t in /proc/$p/task/*; do echo "$p.$(basename $t) $(tr ' ' _ < $t/comm) $(cut -d' ' -f14,15 $t/stat)"; done; done | sort; }
answered() { curl -s 127.0.0.1:27001/metrics | awk '/^consumer_requests_total/ {s += $2} END {print s + 0}'; }
T=127.0.0.1:27000; [ "$PROTOCOL" = dubbo ] && T=127.0.0.1:27005
$B/bench load --protocol "$PROTOCOL" --target $T --connections $C --warmup-secs 0 --duration-secs 5 > $D/load.txt 2>&1 &
L=$!
sleep 1
snap > $D/s0; q0=$(answered)
sleep 4
snap > $D/s1; q1=$(answered)
wait $L
echo "requests in the window: $((q1 - q0))"
HZ=$(getconf CLK_TCK)
join $D/s0 $D/s1 | awk -v n=$((q1 - q0)) -v hz=$HZ '{u = $6 - $3; s = $7 - $4; U += u; S += s;
  if (u + s > 0) printf "  %-14s %-16s user %.2f  system %.2f  us/request\n", $1, $2, u * 1e6 / hz / n, s * 1e6 / hz / n}
  END {printf "  all agents: user %.2f  system %.2f  = %.2f us/request\n", U * 1e6 / hz / n, S * 1e6 / hz / n, (U + S) * 1e6 / hz / n}'
kill $AGENTS $PIDS 2>/dev/null
wait 2>/dev/null
rm -rf "$D"
