#!/bin/bash
# Agent CPU per request of two meshes side by side, in alternating 4 s windows (A B, then
# B A, ...), so that a drift of the machine's speed hits both: each window prints the
# two agents' CPU (user + system, from /proc) per answered request, and the system part.
# Compare the pairs of each round (their median), not single windows.
#
#   bash bench/scripts/cpu-ab.sh DIR_A DIR_B [ROUNDS] [FLAGS_A] [FLAGS_B]
#
# DIR_A and DIR_B hold consumer-agent and provider-agent (two builds, or the same one
# twice); FLAGS_A/FLAGS_B are added to both agents of that mesh (FLAGS_B defaults to
# FLAGS_A). With `--otlp-endpoint http://127.0.0.1:31318/v1/traces` in the flags the
# spans go to a sink on that port that answers every POST 200 without decoding it, and
# each agent also writes an access log (a file in the temporary directory). One loop
# per agent, the mock provider (`bench provider`, 0 ms), 64 connections of
# `bench load` (HTTP). Ports 21880, 22000-23001, 24000-25001, 31318.
#
# Example, what tracing and access logs add:
#   O="--trace-sample-rate 1 --otlp-endpoint http://127.0.0.1:31318/v1/traces"
#   bash bench/scripts/cpu-ab.sh target/release target/release 8 "" "$O"
set -u
A=$1 B=$2 R=${3:-6} FLAGS_A=${4:-} FLAGS_B=${5-${4:-}}
BENCH=${BENCH:-${CARGO_TARGET_DIR:-target}/release/bench}
S=com.alibaba.dubbo.performance.demo.provider.IHelloService
D=$(mktemp -d)
python3 "$(dirname "$0")/post-sink.py" 31318 > /dev/null 2>&1 &
SINK=$!
$BENCH provider --listen 127.0.0.1:21880 --latency-ms 0 --threads 8 > $D/prov.log 2>&1 &
PP=$!
sleep 0.5
# start DIR PORT NAME FLAGS: a provider-agent on PORT+1000 and a consumer-agent on PORT.
start() {
  mkdir -p $D/reg$3/$S
  local lp="" lc=""
  case "$4" in *--otlp-endpoint*) lp="--access-log $D/access-$3.p" lc="--access-log $D/access-$3.c";; esac
  $1/provider-agent --listen 127.0.0.1:$(($2+1000)) --advertise 127.0.0.1:$(($2+1000)) \
    --admin 127.0.0.1:$(($2+1001)) --provider 127.0.0.1:21880 --service $S \
    --registry file://$D/reg$3 --loops 1 $4 $lp > $D/pa$3.log 2>&1 &
  echo $! > $D/pa$3.pid
  sleep 0.5
  $1/consumer-agent --listen 127.0.0.1:$2 --admin 127.0.0.1:$(($2+1)) \
    --registry file://$D/reg$3 --service $S --loops 1 $4 $lc > $D/ca$3.log 2>&1 &
  echo $! > $D/ca$3.pid
}
start $A 22000 A "$FLAGS_A"
start $B 24000 B "$FLAGS_B"
sleep 2
# ticks MESH FIELDS: the agents' CPU ticks (14: user, 15: system).
ticks() {
  local t=0
  for p in $(cat $D/pa$1.pid $D/ca$1.pid); do
    for v in $(cut -d' ' -f$2 /proc/$p/stat); do t=$((t + v)); done
  done
  echo $t
}
answered() { curl -s 127.0.0.1:$1/metrics | awk '/^consumer_requests_total/ {s += $2} END {print s + 0}'; }
for m in A B; do
  P=22000; [ $m = B ] && P=24000
  $BENCH load --target 127.0.0.1:$P --connections 64 --warmup-secs 0 --duration-secs 2 > /dev/null 2>&1
done
HZ=$(getconf CLK_TCK)
for r in $(seq 1 $R); do
  order="A B"; [ $((r % 2)) = 0 ] && order="B A"
  for m in $order; do
    P=22000; [ $m = B ] && P=24000
    c0=$(ticks $m 14,15) s0=$(ticks $m 15) q0=$(answered $((P + 1)))
    $BENCH load --target 127.0.0.1:$P --connections 64 --warmup-secs 0 --duration-secs 4 > /dev/null 2>&1
    c1=$(ticks $m 14,15) s1=$(ticks $m 15) q1=$(answered $((P + 1)))
    python3 -c "n = max($q1 - $q0, 1); print('$m round $r: %.2f µs/request (system %.2f), %d requests' % (($c1 - $c0) * 1e6 / $HZ / n, ($s1 - $s0) * 1e6 / $HZ / n, n))"
  done
done
kill $(cat $D/*.pid) $PP $SINK 2>/dev/null
wait 2>/dev/null
rm -rf "$D"
