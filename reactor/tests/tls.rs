//! TLS as a transport, between well-behaved peers: the handler sees plaintext as on
//! plain TCP (echo, pipelining, large payloads with backpressure, half-close both ways),
//! mutual TLS with the peer's identity (SPIFFE URI and DNS names) visible to the handler,
//! the reactor's own TLS client, and certificate rotation.

mod tls_util;
mod util;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use reactor::rustls;
use reactor::{Builder, CloseReason, Config, Conn, ConnId, Ctx, Handler, TlsAcceptor};
use tls_util::*;
use util::*;

struct Pki {
    ca: Ca,
    server: Identity,
}

fn pki() -> Pki {
    let ca = Ca::new("test CA");
    let server = ca.issue(
        &["server.test", "127.0.0.1"],
        &["spiffe://test/provider"],
        Validity::Good,
    );
    Pki { ca, server }
}

fn start_tls_echo(acceptor: TlsAcceptor, half_close: bool) -> (Running<()>, mpsc::Receiver<Event>) {
    let (make, rx) = tls_echo(half_close);
    let r = Builder::new(Config::default())
        .listen_tls(any_port(), (), acceptor)
        .start(make)
        .expect("start TLS echo");
    (Running::new(r), rx)
}

#[test]
fn echo_round_trip_tls13_and_tls12() {
    let p = pki();
    for (versions, want) in [
        (&[&rustls::version::TLS13][..], "TLSv1_3"),
        (&[&rustls::version::TLS12][..], "TLSv1_2"),
    ] {
        let (server, rx) = start_tls_echo(TlsAcceptor::new(server_config(&p.server, None)), false);
        let mut c = tls_client(
            server.addr(),
            client_config_versions(&p.ca, None, versions),
            "server.test",
        );
        match next(&rx) {
            Event::Opened {
                tls,
                identity,
                version,
                ..
            } => {
                assert!(tls);
                assert_eq!(identity, None, "no client certificate");
                assert_eq!(version.as_deref(), Some(want));
            }
            e => panic!("{e:?}"),
        }
        tls_ping(&mut c, b"hello over TLS");
        tls_ping(&mut c, &[7; 1]);
        drop(c);
        let (_, reason) = closed(&rx);
        assert_eq!(reason, CloseReason::PeerClosed);
        server.shutdown();
    }
}

#[test]
fn pipelined_messages_come_back_in_order() {
    let p = pki();
    let (server, rx) = start_tls_echo(TlsAcceptor::new(server_config(&p.server, None)), false);
    let mut c = tls_client(server.addr(), client_config(&p.ca, None), "server.test");
    opened(&rx);
    // 2,000 small messages written before reading anything.
    let mut want = Vec::new();
    for i in 0..2000u32 {
        let msg = format!("message {i};");
        c.write_all(msg.as_bytes()).unwrap();
        want.extend_from_slice(msg.as_bytes());
    }
    c.flush().unwrap();
    let mut got = vec![0; want.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
    server.shutdown();
}

#[test]
fn a_megabyte_each_way_with_backpressure() {
    let p = pki();
    let (server, rx) = start_tls_echo(TlsAcceptor::new(server_config(&p.server, None)), false);
    let c = tls_client(server.addr(), client_config(&p.ca, None), "server.test");
    opened(&rx);
    // Write in 256 KiB steps (past the high watermark, so the echo pauses reading),
    // reading back in between.
    let payload = pattern(1024 * 1024);
    let mut c = c;
    c.sock.set_nonblocking(false).unwrap();
    let mut got = Vec::with_capacity(payload.len());
    let mut sent = 0;
    let mut buf = vec![0; 64 * 1024];
    while got.len() < payload.len() {
        if sent < payload.len() {
            let end = (sent + 256 * 1024).min(payload.len());
            c.write_all(&payload[sent..end]).unwrap();
            c.flush().unwrap();
            sent = end;
        }
        // Read what came back so far (at least some, or the echo stalls on us).
        let want = sent - got.len();
        let mut read_now = 0;
        while read_now < want.min(200 * 1024) {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "EOF after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            read_now += n;
        }
    }
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "payload corrupted");
    server.shutdown();
}

/// A client that does not read while sending 4 MB: the server's output congests, its
/// reading pauses (TCP pushes back), and once the client reads everything arrives.
#[test]
fn a_client_that_does_not_read_is_pushed_back() {
    let p = pki();
    let (server, rx) = start_tls_echo(TlsAcceptor::new(server_config(&p.server, None)), false);
    let mut c = tls_client(server.addr(), client_config(&p.ca, None), "server.test");
    opened(&rx);
    let payload = pattern(4 * 1024 * 1024);
    // The writer side: rustls's buffered client queues what the socket does not take,
    // so write in steps and read after each once the kernel buffers are full.
    c.sock.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let deadline = std::time::Instant::now() + LIMIT;
    while got.len() < payload.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "stuck at {} of {}",
            got.len(),
            payload.len()
        );
        if sent < payload.len() && !c.conn.wants_write() {
            let end = (sent + 64 * 1024).min(payload.len());
            c.conn.writer().write_all(&payload[sent..end]).unwrap();
            sent = end;
        }
        let mut progressed = false;
        while c.conn.wants_write() {
            match c.conn.write_tls(&mut c.sock) {
                Ok(_) => progressed = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        // Only start reading once a good part was sent without reading.
        if sent >= 2 * 1024 * 1024 || sent == payload.len() {
            match c.conn.read_tls(&mut c.sock) {
                Ok(0) => panic!("EOF"),
                Ok(_) => {
                    c.conn.process_new_packets().unwrap();
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            loop {
                match c.conn.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
        }
        if !progressed {
            thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(got == payload, "payload corrupted");
    server.shutdown();
}

#[test]
fn half_close_both_ways() {
    let p = pki();
    let (server, rx) = start_tls_echo(TlsAcceptor::new(server_config(&p.server, None)), true);
    let mut c = tls_client(server.addr(), client_config(&p.ca, None), "server.test");
    let (id, _) = opened(&rx);
    c.write_all(b"last words").unwrap();
    // Our close_notify: the server's end of input, after the data.
    c.conn.send_close_notify();
    c.flush().unwrap();
    c.sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(next(&rx), Event::EndOfInput(id));
    // The server still writes (the echo), then its close_notify and FIN: a clean end
    // (rustls's stream reports a FIN without close_notify as UnexpectedEof).
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
    let (cid, reason) = closed(&rx);
    assert_eq!((cid, reason), (id, CloseReason::PeerClosed));
    server.shutdown();
}

#[test]
fn mutual_tls_shows_the_peer_identity_to_both_handlers() {
    let p = pki();
    let client_ca = Ca::new("client CA");
    let client_id = client_ca.issue(
        &["consumer.test"],
        &["spiffe://mesh.test/ns/default/sa/consumer"],
        Validity::Good,
    );
    let (server, rx) = start_tls_echo(
        TlsAcceptor::new(server_config(&p.server, Some(&client_ca))),
        false,
    );
    let mut c = tls_client(
        server.addr(),
        client_config(&p.ca, Some(&client_id)),
        "server.test",
    );
    tls_ping(&mut c, b"who am I");
    let (_, identity) = opened(&rx);
    let identity = identity.expect("client identity");
    assert_eq!(
        identity.spiffe_id(),
        Some("spiffe://mesh.test/ns/default/sa/consumer")
    );
    assert_eq!(identity.dns_names, vec!["consumer.test".to_owned()]);

    // The reactor's own client, connecting to it: sees the server's identity.
    let (tx, seen) = mpsc::channel();
    let addr = server.addr();
    let config = client_config(&p.ca, Some(&client_id));
    let client = Builder::new(Config::default())
        .start(move |_, _| Dialer {
            tx: tx.clone(),
            addr,
            config: config.clone(),
            server: "server.test",
            send: b"ping from the reactor".to_vec(),
            got: Vec::new(),
        })
        .unwrap();
    let client = Running::new(client);
    match recv(&seen, "dialer event") {
        Dial::Opened(identity, certs) => {
            let identity = identity.expect("server identity");
            assert_eq!(identity.spiffe_id(), Some("spiffe://test/provider"));
            assert_eq!(identity.dns_names, vec!["server.test".to_owned()]);
            assert_eq!(
                identity.ips,
                vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
            );
            assert_eq!(certs, 1);
        }
        d => panic!("{d:?}"),
    }
    assert_eq!(
        recv(&seen, "echo"),
        Dial::Echoed(b"ping from the reactor".to_vec())
    );
    let (_, identity) = opened(&rx);
    assert_eq!(
        identity
            .and_then(|i| i.spiffe_id().map(str::to_owned))
            .as_deref(),
        Some("spiffe://mesh.test/ns/default/sa/consumer")
    );
    client.shutdown();
    server.shutdown();
}

/// The reactor's TLS client: connects at start, writes `send` before the handshake
/// completed (it waits), reports the server's identity and the echo.
#[derive(Debug)]
pub struct Dialer {
    tx: mpsc::Sender<Dial>,
    addr: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    server: &'static str,
    send: Vec<u8>,
    got: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Dial {
    Opened(Option<reactor::PeerIdentity>, usize),
    Echoed(Vec<u8>),
    Closed(CloseReason),
}

impl Handler for Dialer {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn started(&mut self, cx: &mut Ctx<'_, Self>) {
        let id: ConnId = cx
            .connect_tls(
                self.addr,
                (),
                Some(LIMIT),
                self.config.clone(),
                name(self.server),
            )
            .unwrap();
        assert!(cx.is_tls(id));
        assert!(!cx.is_open(id));
        assert!(cx.write(id, &self.send), "writes wait for the handshake");
    }

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        let certs = cx.peer_certificates(conn.id).map_or(0, |c| c.len());
        let _ = self.tx.send(Dial::Opened(cx.peer_identity(conn.id), certs));
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        self.got.extend_from_slice(input);
        if self.got.len() >= self.send.len() {
            let _ = self.tx.send(Dial::Echoed(std::mem::take(&mut self.got)));
            cx.close(conn.id);
        }
        input.len()
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, reason: CloseReason) {
        let _ = self.tx.send(Dial::Closed(reason));
    }
}

#[test]
fn reactor_client_to_reactor_server_tls12() {
    let p = pki();
    let (server, rx) = start_tls_echo(TlsAcceptor::new(server_config_tls12(&p.server)), false);
    let (tx, seen) = mpsc::channel();
    let addr = server.addr();
    let config = client_config(&p.ca, None);
    let client = Running::new(
        Builder::new(Config::default())
            .start(move |_, _| Dialer {
                tx: tx.clone(),
                addr,
                config: config.clone(),
                server: "127.0.0.1",
                send: pattern(300 * 1024),
                got: Vec::new(),
            })
            .unwrap(),
    );
    let d = recv(&seen, "opened");
    assert!(matches!(d, Dial::Opened(Some(_), 1)), "{d:?}");
    assert_eq!(recv(&seen, "echo"), Dial::Echoed(pattern(300 * 1024)));
    // Our close: close_notify, FIN; the server sees its end of input.
    assert_eq!(recv(&seen, "closed"), Dial::Closed(CloseReason::Local));
    opened(&rx);
    let (_, reason) = closed(&rx);
    assert_eq!(reason, CloseReason::PeerClosed);
    client.shutdown();
    server.shutdown();
}

#[test]
fn rotating_the_certificate_keeps_old_connections_and_serves_new_ones() {
    let p = pki();
    let acceptor = TlsAcceptor::new(server_config(&p.server, None));
    let (server, rx) = start_tls_echo(acceptor.clone(), false);
    let mut old = tls_client(server.addr(), client_config(&p.ca, None), "server.test");
    tls_ping(&mut old, b"before");
    opened(&rx);

    // A new CA and certificate: old clients' trust no longer matches new connections.
    let ca2 = Ca::new("rotated CA");
    let server2 = ca2.issue(
        &["server.test"],
        &["spiffe://test/provider-v2"],
        Validity::Good,
    );
    acceptor.set_config(server_config(&server2, None));

    tls_ping(&mut old, b"after rotation, same connection");
    let mut new = tls_client(server.addr(), client_config(&ca2, None), "server.test");
    tls_ping(&mut new, b"new connection");
    let leaf = &new.conn.peer_certificates().unwrap()[0];
    let id = reactor::PeerIdentity::from_certificate(leaf).unwrap();
    assert_eq!(id.spiffe_id(), Some("spiffe://test/provider-v2"));
    // A client trusting only the old CA is refused by the new certificate.
    let e = handshake_error(server.addr(), client_config(&p.ca, None), "server.test");
    assert!(
        e.contains("UnknownIssuer") || e.contains("invalid peer certificate"),
        "{e}"
    );
    tls_ping(&mut old, b"still");
    server.shutdown();
}

#[test]
fn plain_and_tls_listeners_on_one_loop() {
    let p = pki();
    let (make, rx) = tls_echo(false);
    let server = Running::new(
        Builder::new(Config::default())
            .listen(any_port(), ())
            .listen_tls(
                any_port(),
                (),
                TlsAcceptor::new(server_config(&p.server, None)),
            )
            .start(make)
            .unwrap(),
    );
    let addrs = server.addrs();
    let mut plain = client(addrs[0]);
    ping(&mut plain, b"plain");
    let mut tls = tls_client(addrs[1], client_config(&p.ca, None), "server.test");
    tls_ping(&mut tls, b"tls");
    let mut seen = Vec::new();
    for _ in 0..2 {
        if let Event::Opened { tls, .. } = next(&rx) {
            seen.push(tls);
        }
    }
    seen.sort();
    assert_eq!(seen, vec![false, true]);
    server.shutdown();
}
