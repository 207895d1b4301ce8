//! The echo servers the reactor's benches compare, each on its own named thread, and
//! the client side: 64-byte messages, `batch` in flight per connection.

#![allow(dead_code)] // each bench uses a part

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reactor::{Builder, Config, Conn, Ctx, Handler, Reactor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

pub const MSG: usize = 64;
pub const FLOOD: usize = 256;

/// Echoes whole 64-byte messages, one `write` each (they leave in one flush).
#[derive(Debug)]
struct Echo;

impl Handler for Echo {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        let whole = input.len() / MSG * MSG;
        for m in input[..whole].chunks_exact(MSG) {
            cx.write(conn.id, m);
        }
        whole
    }
}

/// The server threads' names, to find them in `/proc/self/task` (at most 15 bytes).
pub const REACTOR_THREAD: &str = "echo-reactor";
pub const TOKIO_THREAD: [&str; 2] = ["echo-tokio-msg", "echo-tokio-bat"];
pub const FLOOR_THREAD: &str = "echo-mio-floor";

pub fn reactor_server() -> (Reactor<()>, SocketAddr) {
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
pub fn tokio_server(batched: bool) -> SocketAddr {
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

/// One connection of the floor server: its socket, a partial message, unsent output.
struct FloorConn {
    stream: mio::net::TcpStream,
    partial: Vec<u8>,
    unsent: Vec<u8>,
}

/// The floor: a bare `mio` echo loop, the least any readiness loop can do. Each readable
/// event is read until a short read and answered with one `write` of the whole
/// messages, straight away; output the socket refuses waits for the writable event.
/// No framework, timers or handler: its lead over tokio bounds what any design making
/// the same syscalls (`epoll_wait`, `read`, `write` per message) can reach.
pub fn floor_server() -> SocketAddr {
    use mio::net::TcpListener;
    use mio::{Events, Interest, Poll, Token};
    use std::io::{ErrorKind, Read, Write};

    const LISTENER: Token = Token(usize::MAX);
    let mut poll = Poll::new().unwrap();
    let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .unwrap();
    let run = move || {
        let mut events = Events::with_capacity(1024);
        let mut conns: Vec<Option<FloorConn>> = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            poll.poll(&mut events, None).unwrap();
            for event in &events {
                if event.token() == LISTENER {
                    while let Ok((mut stream, _)) = listener.accept() {
                        stream.set_nodelay(true).unwrap();
                        let token = Token(conns.len());
                        poll.registry()
                            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                            .unwrap();
                        conns.push(Some(FloorConn {
                            stream,
                            partial: Vec::new(),
                            unsent: Vec::new(),
                        }));
                    }
                    continue;
                }
                let slot = &mut conns[event.token().0];
                let Some(c) = slot.as_mut() else { continue };
                let mut open = true;
                if event.is_writable() && !c.unsent.is_empty() {
                    match c.stream.write(&c.unsent) {
                        Ok(n) => drop(c.unsent.drain(..n)),
                        Err(e) => open = e.kind() == ErrorKind::WouldBlock,
                    }
                }
                while open && event.is_readable() {
                    let n = match c.stream.read(&mut buf) {
                        Ok(0) => {
                            open = false;
                            break;
                        }
                        Ok(n) => n,
                        Err(e) => {
                            open = e.kind() == ErrorKind::WouldBlock;
                            break;
                        }
                    };
                    let input: &[u8] = if c.partial.is_empty() {
                        &buf[..n]
                    } else {
                        c.partial.extend_from_slice(&buf[..n]);
                        &c.partial
                    };
                    let whole = input.len() / MSG * MSG;
                    let mut sent = 0;
                    if c.unsent.is_empty() {
                        match c.stream.write(&input[..whole]) {
                            Ok(k) => sent = k,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(_) => open = false,
                        }
                    }
                    c.unsent.extend_from_slice(&input[sent..whole]);
                    let rest = input[whole..].to_vec();
                    c.partial = rest;
                    if n < buf.len() {
                        break;
                    }
                }
                if !open {
                    *slot = None;
                }
            }
        }
    };
    std::thread::Builder::new()
        .name(FLOOR_THREAD.into())
        .spawn(run)
        .unwrap();
    addr
}

/// CPU time spent so far by this process's thread whose name starts with `name`.
#[cfg(target_os = "linux")]
pub fn thread_cpu(name: &str) -> Duration {
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

pub async fn connect(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        out.push(s);
    }
    out
}

/// `rounds` exchanges of `batch` messages on every connection at once; returns the time.
pub fn exchange(rt: &Runtime, conns: &mut Vec<TcpStream>, rounds: u64, batch: usize) -> Duration {
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
