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
//! - `server-cpu/1` and `server-cpu/64`: the same ping-pong, but timed by the CPU time
//!   the server's thread spent (Linux, from `/proc/self/task/*/schedstat`), so the
//!   throughput is messages per server CPU-second: the "per core" figure. Wall-clock
//!   ping-pong is bounded by wake-up latency on both sides, not by the server's work.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo bench -p reactor --bench echo
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use reactor::{Builder, Config, Conn, Ctx, Handler, Reactor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

const MSG: usize = 64;
const FLOOD: usize = 256;

/// Echoes whole 64-byte messages, one `write` each (they leave in one flush).
#[derive(Debug)]
struct Echo;

impl Handler for Echo {
    type Tag = ();
    type Msg = ();

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        let whole = input.len() / MSG * MSG;
        for m in input[..whole].chunks_exact(MSG) {
            cx.write(conn.id, m);
        }
        whole
    }
}

/// The server threads' names, to find them in `/proc/self/task` (at most 15 bytes).
const REACTOR_THREAD: &str = "echo-reactor";
const TOKIO_THREAD: [&str; 2] = ["echo-tokio-msg", "echo-tokio-bat"];

fn reactor_server() -> (Reactor<()>, SocketAddr) {
    let r = Builder::new(Config {
        thread_name: REACTOR_THREAD.into(),
        ..Config::default()
    })
    .listen("127.0.0.1:0".parse().unwrap(), ())
    .start(|_, _| Echo)
    .expect("start reactor");
    let addr = r.local_addrs()[0];
    (r, addr)
}

/// A tokio current-thread echo server on its own thread; `batched` chooses one
/// `write_all` per read instead of one per message.
fn tokio_server(batched: bool) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = TOKIO_THREAD[usize::from(batched)];
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let (mut s, _) = listener.accept().await.unwrap();
                    s.set_nodelay(true).unwrap();
                    tokio::spawn(async move {
                        let mut buf = vec![0; 64 * 1024];
                        let mut have = 0;
                        loop {
                            let n = match s.read(&mut buf[have..]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            have += n;
                            let whole = have / MSG * MSG;
                            let ok = if batched {
                                s.write_all(&buf[..whole]).await.is_ok()
                            } else {
                                let mut ok = true;
                                for m in buf[..whole].chunks_exact(MSG) {
                                    ok &= s.write_all(m).await.is_ok();
                                }
                                ok
                            };
                            if !ok {
                                return;
                            }
                            buf.copy_within(whole..have, 0);
                            have -= whole;
                        }
                    });
                }
            });
        });
    spawned.unwrap();
    rx.recv().unwrap()
}

/// CPU time spent so far by this process's thread whose name starts with `name`.
#[cfg(target_os = "linux")]
fn thread_cpu(name: &str) -> Duration {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(name) {
            // schedstat: time on CPU (ns), time waiting to run (ns), timeslices.
            let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap();
            let ns = stat.split_whitespace().next().unwrap().parse().unwrap();
            return Duration::from_nanos(ns);
        }
    }
    panic!("no thread named {name}");
}

async fn connect(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        out.push(s);
    }
    out
}

/// `rounds` exchanges of `batch` messages on every connection at once; returns the time.
fn exchange(rt: &Runtime, conns: &mut Vec<TcpStream>, rounds: u64, batch: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let mut set = JoinSet::new();
        for mut s in conns.drain(..) {
            set.spawn(async move {
                let out = vec![0x5a; MSG * batch];
                let mut back = vec![0; MSG * batch];
                for _ in 0..rounds {
                    s.write_all(&out).await.unwrap();
                    s.read_exact(&mut back).await.unwrap();
                }
                s
            });
        }
        while let Some(s) = set.join_next().await {
            conns.push(s.unwrap());
        }
        start.elapsed()
    })
}

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
    ];

    for conns in [1usize, 64] {
        let mut g = c.benchmark_group(format!("pingpong/{conns}"));
        g.throughput(Throughput::Elements(conns as u64));
        for (name, addr) in &servers[..2] {
            let mut streams = client.block_on(connect(*addr, conns));
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| exchange(&client, &mut streams, iters, 1))
            });
        }
        g.finish();
    }

    // Messages per CPU-second of the server thread: what one core of each server does.
    #[cfg(target_os = "linux")]
    for conns in [1usize, 64] {
        let mut g = c.benchmark_group(format!("server-cpu/{conns}"));
        g.throughput(Throughput::Elements(conns as u64));
        let threads = [REACTOR_THREAD, TOKIO_THREAD[0]];
        for ((name, addr), thread) in servers[..2].iter().zip(threads) {
            let mut streams = client.block_on(connect(*addr, conns));
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| {
                    let before = thread_cpu(thread);
                    exchange(&client, &mut streams, iters, 1);
                    thread_cpu(thread) - before
                })
            });
        }
        g.finish();
    }

    let mut g = c.benchmark_group("flood");
    g.throughput(Throughput::Elements(FLOOD as u64));
    for (name, addr) in &servers {
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
