//! `http-echo`: a trivial server of the race's HTTP call, answering the hash at once.
//!
//! It stands in for the consumer-agent when measuring the load generator itself, and
//! serves the load generator's tests (it can be told to answer some calls wrongly).

use std::io;
use std::net::SocketAddr;

use reactor::{Builder, Config, Conn, Ctx, Handler, Reactor};

/// Settings of the echo server.
#[derive(Debug, Clone)]
pub struct EchoOpts {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Event loops.
    pub loops: usize,
    /// Appended to the parameter before hashing.
    pub salt: Option<i64>,
    /// Answer every n-th call (per loop) with a wrong value.
    pub wrong_every: Option<u64>,
    /// Answer every n-th call (per loop) with status 503.
    pub fail_every: Option<u64>,
}

impl Default for EchoOpts {
    fn default() -> Self {
        EchoOpts {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            loops: 1,
            salt: None,
            wrong_every: None,
            fail_every: None,
        }
    }
}

/// A running echo server; stopped when dropped.
#[derive(Debug)]
pub struct RunningEcho {
    reactor: Option<Reactor<()>>,
    addr: SocketAddr,
}

impl RunningEcho {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the loops exit.
    pub fn join(mut self) {
        if let Some(r) = self.reactor.take() {
            r.join();
        }
    }
}

impl Drop for RunningEcho {
    fn drop(&mut self) {
        if let Some(r) = self.reactor.take() {
            r.stop();
            r.join();
        }
    }
}

#[derive(Debug)]
struct Echo {
    opts: EchoOpts,
    calls: u64,
}

impl Echo {
    fn answer(&mut self, body: &[u8], out: &mut Vec<u8>) {
        self.calls += 1;
        let every = |n: Option<u64>| n.is_some_and(|n| self.calls.checked_rem(n) == Some(0));
        if every(self.opts.fail_every) {
            codec::http::write_response(out, 503, "text/plain", b"busy", true);
            return;
        }
        let Ok(call) = codec::form::race_call(body) else {
            codec::http::write_response(out, 400, "text/plain", b"bad form", true);
            return;
        };
        let p = call.parameter.as_deref().unwrap_or("");
        let mut h = match self.opts.salt {
            Some(s) => codec::java::string_hash_code(&format!("{p}{s}")),
            None => codec::java::string_hash_code(p),
        };
        if every(self.opts.wrong_every) {
            h = h.wrapping_add(1);
        }
        codec::http::write_response_int(out, 200, i64::from(h), true);
    }
}

impl Handler for Echo {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            let head = match req.parse(rest) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return used,
                Err(_) => {
                    cx.abort(conn.id);
                    return input.len();
                }
            };
            let len = crate::harness::content_length(req.headers);
            let Some(body) = rest.get(head..head + len) else {
                return used;
            };
            used += head + len;
            if let Some(out) = cx.output(conn.id) {
                self.answer(body, out);
            }
        }
    }
}

/// Starts an echo server.
///
/// # Errors
/// Binding or starting a loop failed.
pub fn spawn(opts: EchoOpts) -> io::Result<RunningEcho> {
    let config = Config {
        loops: opts.loops.max(1),
        thread_name: "echo".into(),
        ..Config::default()
    };
    let listen = opts.listen;
    let reactor = Builder::new(config)
        .listen(listen, ())
        .start(move |_, _| Echo {
            opts: opts.clone(),
            calls: 0,
        })?;
    let addr = reactor.local_addrs()[0];
    Ok(RunningEcho {
        reactor: Some(reactor),
        addr,
    })
}
