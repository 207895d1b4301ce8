//! An echo server.
//!
//! ```text
//! cargo run -p reactor --example echo -- 127.0.0.1:7000 [loops]
//! ```

use std::net::SocketAddr;

use reactor::{Builder, Config, Conn, Ctx, Handler};

/// Echoes every byte back. A client that sends faster than it reads is pushed back on:
/// once its output is congested, reading it pauses until it drains.
#[derive(Debug)]
struct Echo;

impl Handler for Echo {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        cx.write(conn.id, input);
        if cx.is_congested(conn.id) {
            cx.pause_reading(conn.id);
        }
        input.len()
    }

    fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        cx.resume_reading(conn.id);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:7000").parse()?;
    let loops = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let reactor = Builder::new(Config {
        loops,
        ..Config::default()
    })
    .listen(addr, ())
    .start(|_, _| Echo)?;
    println!(
        "echo on {} with {loops} loop(s); Ctrl-C to quit",
        reactor.local_addrs()[0]
    );
    reactor.join();
    Ok(())
}
