//! Ten thousand concurrent connections on two loops. This process holds both ends of
//! every connection, so it first raises its file-descriptor limit (a fresh machine's
//! soft limit is often 1,024); fewer only if the hard limit forces it and may not rise.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;

use reactor::Config;
use util::*;

const WANTED: usize = 10_000;
const AT_LEAST: usize = 4_000;
/// Descriptors kept aside for the test harness, the pollers, listeners and the like.
const SPARE: usize = 200;

/// Raises the file-descriptor limit to `want`, as a server would at start: the hard
/// limit too where this process may (root), else the soft limit up to the hard one.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn raise_fd_limit(want: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the `rlimit` passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let want = want as libc::rlim_t;
        if limit.rlim_cur >= want {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: limit.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn raise_fd_limit(_want: usize) {}

/// The soft RLIMIT_NOFILE, from /proc/self/limits.
fn fd_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[test]
fn ten_thousand_concurrent_connections() {
    raise_fd_limit(2 * WANTED + SPARE);
    let n = match fd_limit() {
        Some(limit) if 2 * WANTED + SPARE > limit => {
            let n = (limit - SPARE) / 2;
            eprintln!(
                "RLIMIT_NOFILE soft limit is {limit}: both ends of {WANTED} connections need {}, \
                 so testing {n} connections",
                2 * WANTED + SPARE
            );
            n
        }
        _ => WANTED,
    };
    assert!(n >= AT_LEAST, "fd limit allows only {n} connections");
    let (server, stats) = start_echo(Config {
        loops: 2,
        backlog: 4096,
        ..Config::default()
    });
    let addr = server.addr();
    // Four connecting threads, each holding its share open.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let share = n / 4 + usize::from(t < n % 4);
                let mut conns: Vec<TcpStream> = (0..share).map(|_| client(addr)).collect();
                for (i, c) in conns.iter_mut().enumerate() {
                    c.write_all(&((t * 1_000_000 + i) as u32).to_le_bytes())
                        .unwrap();
                }
                for (i, c) in conns.iter_mut().enumerate() {
                    let mut back = [0; 4];
                    c.read_exact(&mut back).unwrap();
                    assert_eq!(u32::from_le_bytes(back) as usize, t * 1_000_000 + i);
                }
                conns
            })
        })
        .collect();
    let conns: Vec<Vec<TcpStream>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(conns.iter().map(Vec::len).sum::<usize>(), n);
    assert_eq!(stats.opened.load(Ordering::SeqCst), n);
    assert_eq!(stats.closed.load(Ordering::SeqCst), 0);
    drop(conns);
    wait_count("all closed", &stats.closed, n);
    server.shutdown();
}
