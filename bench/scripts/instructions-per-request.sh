#!/bin/bash
# Instructions each request costs an agent, counted by callgrind (repeatable, unlike
# CPU seconds on a busy machine): a mock provider, a provider-agent and a consumer-agent
# on loopback (ports 21000-21881, 31000-31001; 31318 with OBSERVE=1), one of the agents
# (WHO=consumer, the default, or WHO=provider) under callgrind, 6 s of 8-connection load
# over HTTP, then over Dubbo (`--dubbo-listen`); prints instructions per request for each.
#
#   cargo build --release -p agent-consumer -p agent-provider -p bench
#   bash bench/scripts/instructions-per-request.sh     # needs valgrind and curl
#
# RULES=FILE puts that traffic-rules document in force for the service; TLS=1 turns on
# mutual TLS between the agents (certificates from deploy/tls/issue-certs.sh). OBSERVE=1
# turns on what issue #22 costs, on both agents: tracing of every call
# (`--trace-sample-rate 1`, spans to a sink on 127.0.0.1:31318 that answers every POST
# 200 without decoding it) and the access log (`--access-log`, a file in the temporary
# directory). Compare `OBSERVE=1` with the default (both off) for what they add.
# KEEP=DIR keeps the callgrind profiles there (`callgrind_annotate DIR/cg.out.*`).
set -u
B=${B:-${CARGO_TARGET_DIR:-target}/release}
S=com.alibaba.dubbo.performance.demo.provider.IHelloService
WHO=${WHO:-consumer}
D=$(mktemp -d)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$D/reg/$S"
[ -n "${RULES:-}" ] && cp "$RULES" "$D/reg/$S/mesh-rules"
PTLS="" CTLS=""
OBS=""
if [ "${OBSERVE:-0}" = 1 ]; then
  python3 "$(dirname "$0")/post-sink.py" 31318 > /dev/null 2>&1 &
  SINK=$!
  OBS="--trace-sample-rate 1 --otlp-endpoint http://127.0.0.1:31318/v1/traces"
fi
obs() { [ -n "$OBS" ] && echo "$OBS --access-log $D/access-$1.log"; }
if [ "${TLS:-0}" = 1 ]; then
  bash "$ROOT/deploy/tls/issue-certs.sh" "$D/certs" bench.mesh consumer provider > /dev/null
  t() { echo "--tls-cert $D/certs/$1.pem --tls-key $D/certs/$1-key.pem --tls-ca $D/certs/ca.pem"; }
  PTLS=$(t provider) CTLS=$(t consumer)
fi
$B/bench provider --listen 127.0.0.1:21880 --latency-ms 0 --threads 8 > $D/prov.log 2>&1 &
PP=$!
sleep 0.5
PA="$B/provider-agent --listen 127.0.0.1:31000 --advertise 127.0.0.1:31000 --admin 127.0.0.1:31001 --provider 127.0.0.1:21880 --service $S --registry file://$D/reg --loops 1 $PTLS $(obs provider)"
CA="$B/consumer-agent --listen 127.0.0.1:21000 --dubbo-listen 127.0.0.1:21881 --admin 127.0.0.1:21001 --registry file://$D/reg --service $S --loops 1 $CTLS $(obs consumer)"
VG="valgrind --tool=callgrind --callgrind-out-file=$D/cg.out"
if [ "$WHO" = provider ]; then $VG $PA > $D/pa.log 2>&1 & PAP=$!; sleep 3; $CA > $D/ca.log 2>&1 & CAP=$!; TP=$PAP; ADMIN=31001; M=provider_agent_requests_total
else $PA > $D/pa.log 2>&1 & PAP=$!; sleep 1; $VG $CA > $D/ca.log 2>&1 & CAP=$!; TP=$CAP; ADMIN=21001; M=consumer_requests_total; fi
sleep 4
req() { curl -s 127.0.0.1:$ADMIN/metrics | grep "^$M" | awk '{s+=$2} END {print s+0}'; }
for proto in http dubbo; do
  T=127.0.0.1:21000; [ $proto = dubbo ] && T=127.0.0.1:21881
  $B/bench load --protocol $proto --target $T --connections 8 --warmup-secs 0 --duration-secs 2 > /dev/null 2>&1
  callgrind_control -z $TP > /dev/null
  r0=$(req)
  $B/bench load --protocol $proto --target $T --connections 8 --warmup-secs 0 --duration-secs 6 > $D/load-$proto.log 2>&1
  r1=$(req)
  callgrind_control -d $proto $TP > /dev/null
  sleep 1
  f=$(ls -t $D/cg.out* | head -1)
  ir=$(callgrind_annotate $f 2>/dev/null | grep "PROGRAM TOTALS" | awk '{gsub(",","",$1); print $1}')
  echo "$WHO-agent $proto: $((r1-r0)) requests, $ir instructions, $(( ir / (r1-r0 > 0 ? r1-r0 : 1) )) per request"
done
[ -n "$OBS" ] && echo "access log lines: $(cat $D/access-*.log | wc -l)"
kill $CAP $PAP $PP ${SINK:-} 2>/dev/null; wait 2>/dev/null
[ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp $D/cg.out* "$KEEP/"
rm -rf "$D"
