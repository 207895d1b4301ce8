//! Handing listeners to a successor (`reactor::handover`, `Builder::listen_inherited`,
//! `Reactor::stop_accepting`): clients connecting all along are never refused, and
//! once the old reactor stops accepting every new connection reaches the new one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reactor::handover::{self, Offer, Offered, Takeover};
use reactor::{Builder, Config, Conn, Ctx, Handler, Reactor};

/// Answers every byte with its own mark: which reactor served the connection.
struct Mark(u8);

impl Handler for Mark {
    type Tag = ();
    type Msg = ();
    type Timer = ();
    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        for _ in input {
            cx.write(conn.id, &[self.0]);
        }
        input.len()
    }
}

fn start(loops: usize, mark: u8, builder: impl FnOnce(Builder<()>) -> Builder<()>) -> Reactor<()> {
    let config = Config {
        loops,
        ..Config::default()
    };
    builder(Builder::new(config))
        .start(move |_, _| Mark(mark))
        .expect("start")
}

/// One call on a new connection: the mark of whoever answered.
fn call(addr: SocketAddr) -> std::io::Result<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"x")?;
    let mut got = [0u8; 1];
    s.read_exact(&mut got)?;
    Ok(got[0])
}

/// Clients calling `addr` on fresh connections until stopped; counts answers by mark
/// and failures.
struct Clients {
    stop: Arc<AtomicBool>,
    by_mark: Arc<[AtomicU64; 3]>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    fn start(addr: SocketAddr, n: usize) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let by_mark: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|_| {
                let (stop, by_mark, failed) = (stop.clone(), by_mark.clone(), failed.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match call(addr) {
                            Ok(m) => {
                                if let Some(c) = by_mark.get(usize::from(m)) {
                                    c.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(e) => {
                                eprintln!("client: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Clients {
            stop,
            by_mark,
            failed,
            threads,
        }
    }

    fn count(&self, mark: usize) -> u64 {
        self.by_mark[mark].load(Ordering::Relaxed)
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.failed.load(Ordering::Relaxed)
    }
}

#[track_caller]
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn handover_between(old_loops: usize, new_loops: usize) {
    let dir = std::env::temp_dir().join(format!(
        "reactor-handover-{}-{old_loops}-{new_loops}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("h.sock");
    let old = Arc::new(start(old_loops, 1, |b| {
        b.listen("127.0.0.1:0".parse().expect("addr"), ())
    }));
    let addr = old.local_addrs()[0];
    let clients = Clients::start(addr, 4);
    wait_for("answers from the old reactor", || clients.count(1) > 50);

    struct Old(Arc<Reactor<()>>);
    impl Offered for Old {
        fn listeners(&mut self) -> std::io::Result<Vec<(String, Vec<std::net::TcpListener>)>> {
            let mut l = self.0.listeners()?;
            Ok(vec![("echo".into(), l.remove(0))])
        }
        fn ready(&mut self, _handoff: handover::Handoff) {
            self.0.stop_accepting();
        }
    }
    let server = handover::serve(
        Offer::bind(&path).expect("bind"),
        "handover",
        Duration::from_secs(5),
        Old(old.clone()),
    )
    .expect("serve");

    let mut takeover = Takeover::connect(&path, Duration::from_secs(5)).expect("connect");
    assert_eq!(takeover.names().collect::<Vec<_>>(), ["echo"]);
    let socks = takeover.take("echo").expect("echo");
    assert_eq!(socks.len(), old_loops);
    let new = start(new_loops, 2, |b| b.listen_inherited(socks, ()));
    assert_eq!(new.local_addrs()[0], addr);
    takeover.ready(Duration::from_secs(5)).expect("ready");
    server.stop();
    assert!(!path.exists(), "the old offer's socket file is removed");

    // Every connection made from now on reaches the new reactor.
    let before = clients.count(2);
    wait_for("answers from the new reactor", || {
        clients.count(2) > before + 200
    });
    let old_now = clients.count(1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(clients.count(1), old_now, "the old reactor accepts no more");
    if let Ok(old) = Arc::try_unwrap(old) {
        old.stop();
        old.join();
    }
    wait_for("answers after the old reactor is gone", || {
        clients.count(2) > before + 400
    });
    assert_eq!(clients.finish(), 0, "no client failed or was refused");
    new.stop();
    new.join();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_loop_to_one_loop() {
    handover_between(1, 1);
}

#[test]
fn more_loops_to_fewer_and_fewer_to_more() {
    handover_between(3, 1);
    handover_between(1, 2);
}

#[test]
fn a_successor_that_fails_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("reactor-handover-fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("h.sock");
    let old = Arc::new(start(2, 1, |b| {
        b.listen("127.0.0.1:0".parse().expect("addr"), ())
    }));
    let addr = old.local_addrs()[0];
    struct Old(Arc<Reactor<()>>, Arc<AtomicU64>);
    impl Offered for Old {
        fn listeners(&mut self) -> std::io::Result<Vec<(String, Vec<std::net::TcpListener>)>> {
            let mut l = self.0.listeners()?;
            Ok(vec![("echo".into(), l.remove(0))])
        }
        fn ready(&mut self, _handoff: handover::Handoff) {
            self.0.stop_accepting();
        }
        fn failed(&mut self, _: &std::io::Error) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }
    let failures = Arc::new(AtomicU64::new(0));
    let server = handover::serve(
        Offer::bind(&path).expect("bind"),
        "handover",
        Duration::from_secs(5),
        Old(old.clone(), failures.clone()),
    )
    .expect("serve");
    let clients = Clients::start(addr, 2);
    // A successor that takes the sockets and dies before it is ready.
    for _ in 0..3 {
        let mut t = Takeover::connect(&path, Duration::from_secs(5)).expect("connect");
        let socks = t.take("echo").expect("echo");
        drop(socks);
        drop(t);
    }
    wait_for("three failures seen", || {
        failures.load(Ordering::Relaxed) == 3
    });
    let before = clients.count(1);
    wait_for("the old reactor still answering", || {
        clients.count(1) > before + 100
    });
    assert_eq!(clients.count(2), 0);
    assert!(path.exists(), "still offered");
    assert_eq!(clients.finish(), 0);
    server.stop();
    assert!(
        !path.exists(),
        "the offer's socket file is removed when withdrawn"
    );
    old.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
