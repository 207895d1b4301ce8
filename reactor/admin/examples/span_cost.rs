//! What a span costs: made and queued on a loop thread, then turned into OTLP protobuf
//! on the exporter thread. `cargo run --release -p reactor-admin --example span_cost`
//! (on a quiet machine: the figures are per span, CPU time of one thread).

use std::time::Instant;

use reactor_admin::otlp::{CallNames, SpanData, SpanKind, Spans};

fn main() {
    let n = 200_000;
    let (spans, rx) = Spans::bounded(n + 1);
    let server: std::net::SocketAddr = "127.0.0.1:30000".parse().expect("address");
    let t = Instant::now();
    for i in 0..n {
        let names = CallNames::new("com.example.Service", "method", "1.0.0", "");
        let mut s = SpanData::new([1; 16], [2; 8], SpanKind::Client, names);
        s.parent_span_id = Some([3; 8]);
        s.server = Some(server);
        s.front = "http";
        s.retries = Some(i as u32 & 1);
        s.end_unix_nanos = reactor_admin::otlp::unix_nanos();
        spans.send(&s);
    }
    let loop_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let batch: Vec<SpanData> = rx.try_iter().collect();
    let t = Instant::now();
    let bytes = reactor_admin::otlp::encode_for_bench(batch, "consumer-agent");
    let export_ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "loop thread {loop_ns:.0} ns/span, exporter thread {export_ns:.0} ns/span, {} bytes/span",
        bytes / n
    );
}
