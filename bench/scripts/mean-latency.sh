#!/bin/bash
# The mean latency of the race topology under classic load, finer than `bench scenario
# classic`'s ratio (which at 128 connections moves in steps of 0.17% over 30 s): three
# mock providers (fastjson, LAT ms, default 50, 200 threads), three provider-agents
# (weights 1/2/3), one consumer-agent, `bench load` over HTTP at CONNS connections
# (default 128) for SECS seconds (default 10) after a 3 s warm-up. Prints QPS, the
# ratio to the ceiling, mean/p50/p99 latency in µs and the errors.
#
#   bash bench/scripts/mean-latency.sh [CONNS]
#
# TLS=1 turns on mutual TLS between the agents (certificates from
# deploy/tls/issue-certs.sh); B=DIR takes the binaries from DIR (default
# target/release); STAGGER=MS spreads the connections' first calls over MS
# milliseconds (default LAT, as `bench scenario` does; 0 starts them in step). Alternate
# two variants run after run: this VM drifts by tens of microseconds between runs.
# SEGMENTS=1 also has each agent write an access log and prints, per agent, the mean
# latency it saw (its last three quarters of calls), which splits the load generator's
# mean into its hops, and each process's context switches per second over the middle
# of the run (voluntary: it slept; involuntary: it was preempted). Ports 27000-27103.
set -u
C=${1:-128} SECS=${SECS:-10} LAT=${LAT:-50} TLS=${TLS:-0} STAGGER=${STAGGER:-${LAT:-50}}
SEGMENTS=${SEGMENTS:-0}
B=${B:-${CARGO_TARGET_DIR:-target}/release}
S=com.alibaba.dubbo.performance.demo.provider.IHelloService
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
D=$(mktemp -d)
mkdir -p "$D/reg/$S"
tls() { [ "$TLS" = 1 ] && echo "--tls-cert $D/certs/$1.pem --tls-key $D/certs/$1-key.pem --tls-ca $D/certs/ca.pem"; }
log() { [ "$SEGMENTS" = 1 ] && echo "--access-log $D/$1.access"; }
[ "$TLS" = 1 ] && bash "$ROOT/deploy/tls/issue-certs.sh" "$D/certs" mesh.test consumer \
  provider-1 provider-2 provider-3 > /dev/null 2>&1
PIDS=""
for i in 1 2 3; do
  $B/bench provider --listen 127.0.0.1:$((27100 + i)) --latency-ms "$LAT" --threads 200 > /dev/null 2>&1 &
  PIDS="$PIDS $!"
done
sleep 0.3
for i in 1 2 3; do
  $B/provider-agent --listen 127.0.0.1:$((27000 + 10 * i)) --advertise 127.0.0.1:$((27000 + 10 * i)) \
    --admin 127.0.0.1:$((27001 + 10 * i)) --provider 127.0.0.1:$((27100 + i)) --service $S \
    --registry file://$D/reg --loops 1 --serialization fastjson --weight $i --max-inflight 200 \
    $(tls provider-$i) $(log provider-agent-$i) > $D/pa$i.log 2>&1 &
  PIDS="$PIDS $!"
done
sleep 0.5
$B/consumer-agent --listen 127.0.0.1:27000 --admin 127.0.0.1:27001 --registry file://$D/reg \
  --service $S --loops 1 --lb adaptive $(tls consumer) $(log consumer-agent) > $D/ca.log 2>&1 &
PIDS="$PIDS $!"
sleep 1.5
# A process that could not bind its port (another mesh still running) has exited by now:
# measuring that other mesh instead would be worse than measuring nothing.
for p in $PIDS; do
  kill -0 "$p" 2>/dev/null || { echo "a mesh process exited at start (ports in use?):" >&2;
    tail -n 3 $D/*.log >&2; kill $PIDS 2>/dev/null; rm -rf "$D"; exit 1; }
done
# Context switches of every thread of the mesh and the load generator (name-tid).
switches() {
  for p in $PIDS $LOAD; do
    for t in /proc/$p/task/*; do
      echo "$(cat $t/comm 2>/dev/null)-${t##*/} $(awk '/_ctxt_switches/ {printf "%s ", $2}' $t/status 2>/dev/null)"
    done
  done | sort
}
$B/bench load --target 127.0.0.1:27000 --connections "$C" --warmup-secs 3 --duration-secs "$SECS" \
  --stagger-ms "$STAGGER" --json $D/r.json > $D/load.txt 2>&1 &
LOAD=$!
if [ "$SEGMENTS" = 1 ]; then
  W=$(( SECS / 2 > 1 ? SECS / 2 : 1 ))
  sleep $(( 3 + SECS / 4 )); switches > $D/sw1; sleep $W; switches > $D/sw2
fi
wait $LOAD
python3 -c "
import json; r = json.load(open('$D/r.json')); l = r['latency_us']
print('TLS=$TLS qps %.1f ratio %.2f%% mean %.0f p50 %d p99 %d errors %s' % (r['qps'],
      r['qps'] / ($C / ($LAT / 1000.0)) * 100 if $LAT else 0, l['mean'], l['p50'], l['p99'], r['errors']))"
# The agents write out their access logs as they stop.
kill $PIDS 2>/dev/null
wait 2>/dev/null
if [ "$SEGMENTS" = 1 ]; then
  for f in $D/*.access; do
    python3 -c "
import json, statistics
lat = [json.loads(l)['latency_us'] for l in open('$f') if l.strip()]
lat = lat[len(lat) // 4:]
print('%-18s mean %.0f p50 %.0f (%d calls)' % ('$(basename "$f" .access)', statistics.mean(lat), statistics.median(lat), len(lat)))"
  done
  join <(sort $D/sw1) <(sort $D/sw2) | awk -v w="$W" 'NF == 5 && ($4 - $2) + ($5 - $3) > 5 * w {
    printf "%-22s %6.0f voluntary/s %6.0f involuntary/s\n", $1, ($4 - $2) / w, ($5 - $3) / w }'
fi
rm -rf "$D"
