#!/usr/bin/env python3
"""A test OTLP/HTTP trace receiver, decoding with someone else's decoder: the PyPI
`opentelemetry-proto` package's ExportTraceServiceRequest (protobuf).

Usage: python3 otlp_receiver.py [--mode ok|500|slow]

Listens on 127.0.0.1, a free port, and prints "listening PORT" once it accepts. Then,
for each span of each POST to /v1/traces, one JSON line on stdout:
  {"service": resource service.name, "trace_id": hex, "span_id": hex,
   "parent_span_id": hex or "", "name": ..., "kind": int, "start": ns, "end": ns,
   "status": int, "attributes": {key: value}}
A body that does not decode is answered 400 and reported as {"error": "..."}.
--mode 500 answers every POST 500 (after decoding it); --mode slow waits 30 s before
answering. If opentelemetry-proto is missing it exits 3 before printing "listening".
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )
except ImportError as e:  # the test fails on it: it never skips
    print(f"opentelemetry-proto is not installed ({e}): run `bash .ci/setup`", file=sys.stderr)
    sys.exit(3)

MODE = "ok"
if "--mode" in sys.argv:
    MODE = sys.argv[sys.argv.index("--mode") + 1]


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if MODE == "slow":
            time.sleep(30)
        ctype = self.headers.get("Content-Type", "")
        status = 200
        try:
            if ctype != "application/x-protobuf":
                raise ValueError(f"content type {ctype!r}")
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                attrs = {kv.key: value_of(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        emit({
                            "service": attrs.get("service.name"),
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": s.kind,
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "status": s.status.code,
                            "attributes": {kv.key: value_of(kv.value) for kv in s.attributes},
                        })
        except Exception as e:  # noqa: BLE001 - reported to the test
            emit({"error": str(e)})
            status = 400
        if MODE == "500":
            status = 500
        out = ExportTraceServiceResponse().SerializeToString()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
