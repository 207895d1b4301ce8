//! Messages per CPU-second of the server's thread, the "per core" figure: the reactor
//! (one loop), a tokio current-thread server (`write_all` per message) and the bare
//! `mio` floor, echoing 64-byte ping-pong over 1 and over 64 connections.
//!
//! CPU time comes from `/proc/self/task/*/schedstat` (Linux). Wall-clock ping-pong is
//! bounded by wake-up latency on both sides, not by the server's work, and on a shared
//! or virtual machine a server's speed drifts by tens of percent within a minute. So
//! every round runs each server once, back to back, for the same number of messages
//! (in a rotating order), and the ratios are taken within a round, then their median
//! over the rounds: drift between rounds cancels out.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo bench -p reactor --bench per_core [-- ROUNDS]
//! ```

mod servers;

#[cfg(target_os = "linux")]
fn main() {
    use servers::*;

    // `cargo bench` passes `--bench`; a number among the arguments is the round count.
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (reactor, reactor_addr) = reactor_server();
    let servers = [
        ("reactor", reactor_addr, REACTOR_THREAD),
        ("tokio", tokio_server(false), TOKIO_THREAD[0]),
        ("mio-floor", floor_server(), FLOOR_THREAD),
    ];
    println!(
        "messages per server-thread CPU-second, 64-byte ping-pong, {rounds} rounds: \
         median [min - max]"
    );
    println!(
        "{:<6} {:<25} {:<25} {:<25} {:<20} {:<20}",
        "conns", "reactor", "tokio", "mio-floor", "reactor/tokio", "floor/tokio"
    );
    // Exchanges per server per round: about a third of a second each.
    for (conns, exchanges) in [(1usize, 10_000u64), (64, 400)] {
        let mut streams: Vec<_> = servers
            .iter()
            .map(|(_, addr, _)| client.block_on(connect(*addr, conns)))
            .collect();
        let rate = |i: usize, streams: &mut Vec<_>| {
            let thread = servers[i].2;
            let before = thread_cpu(thread);
            exchange(&client, streams, exchanges, 1);
            let cpu = (thread_cpu(thread) - before).as_secs_f64();
            (exchanges * conns as u64) as f64 / cpu.max(1e-9)
        };
        // One round of warm-up, not counted.
        for (i, s) in streams.iter_mut().enumerate() {
            rate(i, s);
        }
        let mut per_server = vec![Vec::new(); servers.len()];
        let (mut reactor_ratio, mut floor_ratio) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut this = [0.0; 3];
            for k in 0..servers.len() {
                let i = (round + k) % servers.len();
                this[i] = rate(i, &mut streams[i]);
            }
            for (all, r) in per_server.iter_mut().zip(this) {
                all.push(r);
            }
            reactor_ratio.push(this[0] / this[1]);
            floor_ratio.push(this[2] / this[1]);
        }
        let rates = |v: &mut Vec<f64>| {
            let (med, lo, hi) = spread(v);
            format!("{:.1}k [{:.1}k - {:.1}k]", med / 1e3, lo / 1e3, hi / 1e3)
        };
        let ratio = |v: &mut Vec<f64>| {
            let (med, lo, hi) = spread(v);
            format!("{med:.2}x [{lo:.2} - {hi:.2}]")
        };
        println!(
            "{:<6} {:<25} {:<25} {:<25} {:<20} {:<20}",
            conns,
            rates(&mut per_server[0]),
            rates(&mut per_server[1]),
            rates(&mut per_server[2]),
            ratio(&mut reactor_ratio),
            ratio(&mut floor_ratio),
        );
    }
    reactor.stop();
    reactor.join();
}

/// Median, min and max.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("per_core reads thread CPU times from /proc: Linux only");
}
