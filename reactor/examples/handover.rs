//! An echo server that can be replaced by a new copy of itself without refusing a
//! connect: the running one offers its listening socket on a Unix socket, a new one
//! takes it over, accepts on it, says so, and the old one stops accepting, lets its
//! clients finish and exits.
//!
//! ```text
//! cargo run -p reactor --example handover -- 127.0.0.1:7000 /tmp/echo.sock
//! # later, from another terminal (the new binary, same address and path):
//! cargo run -p reactor --example handover -- 127.0.0.1:7000 /tmp/echo.sock takeover
//! ```

use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

use reactor::handover::{self, Offer, Offered, Takeover};
use reactor::{Builder, Config, Conn, Ctx, Handler, LoopHandle};

/// Echoes every byte back, prefixed with this process's id.
#[derive(Debug)]
struct Echo;

impl Handler for Echo {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        cx.write(conn.id, format!("[{}] ", std::process::id()).as_bytes());
        cx.write(conn.id, input);
        input.len()
    }
}

/// What the running process offers its successor, and does once it accepts.
struct Offering {
    sockets: Vec<TcpListener>,
    loops: Vec<LoopHandle<()>>,
    done: mpsc::Sender<()>,
}

impl Offered for Offering {
    fn listeners(&mut self) -> std::io::Result<Vec<(String, Vec<TcpListener>)>> {
        let dups = self.sockets.iter().map(TcpListener::try_clone);
        Ok(vec![("echo".to_owned(), dups.collect::<Result<_, _>>()?)])
    }

    fn ready(&mut self, _handoff: handover::Handoff) {
        // Stop accepting; the sockets stay open in the successor.
        for l in &self.loops {
            let _ = l.stop_accepting();
        }
        let _ = self.done.send(());
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7000".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let path = args.next().unwrap_or_else(|| "/tmp/echo.sock".into());
    let takeover = args.next().as_deref() == Some("takeover");

    let builder = Builder::new(Config::default());
    let (reactor, predecessor) = if takeover {
        let mut t = Takeover::connect(&path, Duration::from_secs(5))?;
        let sockets = t.take("echo").unwrap_or_default();
        let reactor = builder.listen_inherited(sockets, ()).start(|_, _| Echo)?;
        (reactor, Some(t))
    } else {
        (builder.listen(addr, ()).start(|_, _| Echo)?, None)
    };
    if let Some(t) = predecessor {
        // Accepting: the old process may stop (it confirms, and frees the path).
        t.ready(Duration::from_secs(5))?;
    }
    println!(
        "echo on {} (pid {})",
        reactor.local_addrs()[0],
        std::process::id()
    );

    let (done, handed_over) = mpsc::channel();
    let offering = Offering {
        sockets: reactor.listeners()?.into_iter().flatten().collect(),
        loops: reactor.handles().to_vec(),
        done,
    };
    let server = handover::serve(
        Offer::bind(&path)?,
        "handover",
        Duration::from_secs(30),
        offering,
    )?;
    // Until a successor takes over (a real server would wait for signals too).
    let _ = handed_over.recv();
    println!("handed over: letting clients finish");
    std::thread::sleep(Duration::from_secs(1));
    server.stop();
    reactor.stop();
    reactor.join();
    Ok(())
}
