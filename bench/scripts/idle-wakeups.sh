#!/bin/bash
# Wake-ups of idle agents: one mock provider, three provider-agents and one
# consumer-agent on the embedded file registry, no load; after 3 s, the context
# switches of all the consumer-agent's threads and of one provider-agent's over
# SECS seconds (default 10), per second.
#
#   bash bench/scripts/idle-wakeups.sh
#
# B=DIR takes the binaries from DIR (default target/release): alternate two builds
# to compare them. Ports 28000-28101.
set -u
SECS=${SECS:-10}
B=${B:-${CARGO_TARGET_DIR:-target}/release}
S=com.alibaba.dubbo.performance.demo.provider.IHelloService
D=$(mktemp -d)
mkdir -p "$D/reg"
chmod 700 "$D/reg"
$B/bench provider --listen 127.0.0.1:28101 --latency-ms 50 > /dev/null 2>&1 &
PIDS="$!"
sleep 0.3
for i in 1 2 3; do
  $B/provider-agent --listen 127.0.0.1:2801$i --advertise 127.0.0.1:2801$i \
    --admin 127.0.0.1:2802$i --provider 127.0.0.1:28101 --service $S \
    --registry file://$D/reg --loops 1 > /dev/null 2>&1 &
  PIDS="$PIDS $!"
  [ "$i" = 1 ] && PA=$!
done
sleep 0.5
$B/consumer-agent --listen 127.0.0.1:28000 --admin 127.0.0.1:28001 --registry file://$D/reg \
  --service $S --loops 1 > /dev/null 2>&1 &
CA=$!
PIDS="$PIDS $CA"
sleep 3
for p in $PIDS; do
  kill -0 "$p" 2>/dev/null || { echo "a process exited at start (ports in use?)" >&2;
    kill $PIDS 2>/dev/null; rm -rf "$D"; exit 1; }
done
switches() { cat /proc/$1/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }'; }
a1=$(switches $CA) p1=$(switches $PA)
sleep "$SECS"
a2=$(switches $CA) p2=$(switches $PA)
echo "consumer-agent $(( (a2 - a1) / SECS ))/s ($(ls /proc/$CA/task | wc -l) threads)," \
  "provider-agent $(( (p2 - p1) / SECS ))/s"
kill $PIDS 2>/dev/null
wait 2>/dev/null
rm -rf "$D"
