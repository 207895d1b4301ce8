//! Echo of 64-byte messages: the reactor (one loop) against a tokio current-thread
//! server, in messages per second.
//!
//! - `pingpong/1` and `pingpong/64`: one message in flight per connection, over 1 and
//!   64 connections.
//! - `flood`: 256 messages in flight on one connection. Both servers frame messages
//!   and answer each one with its own write call: the reactor buffers them and flushes
//!   once per loop iteration; `tokio-per-message` makes one syscall per message,
//!   `tokio-batched` gathers one read's answers into one `write_all` (the hand-written
//!   equivalent of the reactor's flush).
//!
//! - `mio-floor` runs beside them in ping-pong: a bare hand-written `mio` loop (see
//!   `servers/mod.rs`), the least any readiness loop can do.
//!
//! The per-core figure (messages per CPU-second of the server thread) is the `per_core`
//! bench: on a shared machine it needs paired, interleaved rounds, not criterion's
//! one-server-after-another samples.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo bench -p reactor --bench echo
//! ```

mod servers;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use servers::*;

fn bench(c: &mut Criterion) {
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (reactor, reactor_addr) = reactor_server();
    let servers = [
        ("reactor", reactor_addr),
        ("tokio-per-message", tokio_server(false)),
        ("tokio-batched", tokio_server(true)),
        ("mio-floor", floor_server()),
    ];

    for conns in [1usize, 64] {
        let mut g = c.benchmark_group(format!("pingpong/{conns}"));
        g.throughput(Throughput::Elements(conns as u64));
        for (name, addr) in servers.iter().filter(|(n, _)| *n != "tokio-batched") {
            let mut streams = client.block_on(connect(*addr, conns));
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| exchange(&client, &mut streams, iters, 1))
            });
        }
        g.finish();
    }

    let mut g = c.benchmark_group("flood");
    g.throughput(Throughput::Elements(FLOOD as u64));
    for (name, addr) in &servers[..3] {
        let mut streams = client.block_on(connect(*addr, 1));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| exchange(&client, &mut streams, iters, FLOOD))
        });
    }
    g.finish();

    reactor.stop();
    reactor.join();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
