//! TLS peers that misbehave or fail verification: each failure ends that connection
//! alone (reported to `closed` with a TLS reason, counted in `tls_stats`), and another
//! connection on the same loop keeps working.

mod tls_util;
mod util;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use reactor::{Builder, CloseReason, Config, Conn, Ctx, Handler, TlsAcceptor, TlsStats};
use tls_util::*;
use util::*;

struct Setup {
    ca: Ca,
    client_ca: Ca,
    server: Running<()>,
    rx: mpsc::Receiver<Event>,
    stats: std::sync::Arc<std::sync::Mutex<TlsStats>>,
    /// A mutual-TLS connection that must survive everything.
    good: Client,
}

/// An mTLS echo server (client certificates from `client_ca`) on one loop, with a short
/// handshake timeout, and one good connection open on it.
fn setup() -> Setup {
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server_id = ca.issue(&["server.test"], &[], Validity::Good);
    let (make, rx, stats) = tls_echo_with_stats(false);
    let server = Running::new(
        Builder::new(Config {
            tls_handshake_timeout: Duration::from_millis(300),
            ..Config::default()
        })
        .listen_tls(
            any_port(),
            (),
            TlsAcceptor::new(server_config(&server_id, Some(&client_ca))),
        )
        .start(make)
        .unwrap(),
    );
    let good_id = client_ca.issue(&[], &["spiffe://test/good"], Validity::Good);
    let mut good = tls_client(
        server.addr(),
        client_config(&ca, Some(&good_id)),
        "server.test",
    );
    tls_ping(&mut good, b"good");
    opened(&rx);
    Setup {
        ca,
        client_ca,
        server,
        rx,
        stats,
        good,
    }
}

impl Setup {
    /// The next close, which must be a handshake failure mentioning one of `what`.
    #[track_caller]
    fn handshake_failed(&mut self, what: &[&str]) {
        match closed(&self.rx) {
            (_, CloseReason::TlsHandshake(e)) => {
                assert!(
                    what.iter().any(|w| e.contains(w)),
                    "{e} (wanted one of {what:?})"
                )
            }
            (_, r) => panic!("wanted a handshake failure, got {r:?}"),
        }
        self.still_good();
    }

    #[track_caller]
    fn still_good(&mut self) {
        tls_ping(&mut self.good, b"still here");
        assert_empty(&self.rx, "event");
    }

    fn stats(&self) -> TlsStats {
        *self.stats.lock().unwrap()
    }
}

#[test]
fn a_plaintext_client_on_a_tls_port() {
    let mut s = setup();
    let mut c = client(s.server.addr());
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // Whatever comes back (an alert, or nothing), the connection ends.
    let mut sink = Vec::new();
    let _ = c.read_to_end(&mut sink);
    s.handshake_failed(&["corrupt message", "InvalidMessage", "invalid"]);
    assert_eq!(s.stats().handshake_failures, 1);
}

#[test]
fn garbage_instead_of_a_client_hello() {
    let mut s = setup();
    let mut c = client(s.server.addr());
    c.write_all(&[0x16, 0x03, 0x01, 0x00, 0x10]).unwrap();
    c.write_all(&[0xff; 16]).unwrap();
    let mut sink = Vec::new();
    let _ = c.read_to_end(&mut sink);
    s.handshake_failed(&["corrupt", "invalid", "Invalid"]);
}

#[test]
fn untrusted_expired_and_not_yet_valid_client_certificates_are_refused() {
    let mut s = setup();
    let other_ca = Ca::new("other CA");
    let cases = [
        (
            other_ca.issue(&[], &["spiffe://test/x"], Validity::Good),
            "UnknownIssuer",
        ),
        (
            s.client_ca
                .issue(&[], &["spiffe://test/x"], Validity::Expired),
            "expired",
        ),
        (
            s.client_ca
                .issue(&[], &["spiffe://test/x"], Validity::NotYetValid),
            "not valid",
        ),
    ];
    for (i, (id, why)) in cases.iter().enumerate() {
        let e = handshake_error(
            s.server.addr(),
            client_config(&s.ca, Some(id)),
            "server.test",
        );
        assert!(!e.starts_with("no error"), "{why}: {e}");
        s.handshake_failed(&[why]);
        assert_eq!(s.stats().handshake_failures, i as u64 + 1);
    }
    // No certificate at all.
    let e = handshake_error(s.server.addr(), client_config(&s.ca, None), "server.test");
    assert!(!e.starts_with("no error"), "{e}");
    s.handshake_failed(&["certificate"]);
}

#[test]
fn a_stalled_handshake_times_out() {
    let mut s = setup();
    // Connects and says nothing; another sends half a ClientHello.
    let mut silent = client(s.server.addr());
    let mut half = client(s.server.addr());
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    for _ in 0..2 {
        match closed(&s.rx) {
            (_, CloseReason::HandshakeTimeout) => {}
            (_, r) => panic!("{r:?}"),
        }
    }
    let mut buf = [0; 1];
    assert_eq!(silent.read(&mut buf).unwrap_or(0), 0, "closed");
    assert_eq!(half.read(&mut buf).unwrap_or(0), 0, "closed");
    s.still_good();
    let stats = s.stats();
    assert_eq!((stats.handshake_failures, stats.handshake_timeouts), (2, 2));
}

/// Opens a good mTLS connection, then writes `bytes` straight onto its socket, past
/// rustls: the server must close it with `CloseReason::Tls`.
fn raw_after_handshake(s: &mut Setup, bytes: &[u8], what: &[&str]) {
    let id = s
        .client_ca
        .issue(&[], &["spiffe://test/bad"], Validity::Good);
    let mut c = tls_client(
        s.server.addr(),
        client_config(&s.ca, Some(&id)),
        "server.test",
    );
    tls_ping(&mut c, b"fine so far");
    opened(&s.rx);
    c.sock.write_all(bytes).unwrap();
    match closed(&s.rx) {
        (_, CloseReason::Tls(e)) => {
            assert!(
                what.iter().any(|w| e.contains(w)),
                "{e} (wanted one of {what:?})"
            )
        }
        (_, r) => panic!("wanted a TLS error, got {r:?}"),
    }
    let mut sink = Vec::new();
    let _ = c.sock.read_to_end(&mut sink);
    s.still_good();
}

#[test]
fn garbage_after_the_handshake() {
    let mut s = setup();
    // An application-data record that does not decrypt.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend_from_slice(&[0x5a; 0x40]);
    raw_after_handshake(&mut s, &record, &["decrypt", "Decrypt"]);
    // A record of an unknown type.
    raw_after_handshake(
        &mut s,
        &[0x42, 0x03, 0x03, 0x00, 0x01, 0x00],
        &["corrupt", "invalid", "Invalid"],
    );
    assert_eq!(s.stats().record_failures, 2);
    assert_eq!(s.stats().handshake_failures, 0);
}

#[test]
fn an_oversized_record() {
    let mut s = setup();
    // Declares 65,535 bytes, past the 16 KiB + 2 KiB TLS allows.
    let mut record = vec![0x17, 0x03, 0x03, 0xff, 0xff];
    record.extend_from_slice(&[0; 1024]);
    raw_after_handshake(
        &mut s,
        &record,
        &["too large", "TooLarge", "corrupt", "Invalid"],
    );
}

/// Connects with the reactor's TLS client (which must fail its handshake) and returns
/// how the connection ended.
fn dial(
    addr: std::net::SocketAddr,
    config: std::sync::Arc<reactor::rustls::ClientConfig>,
    server: &'static str,
) -> CloseReason {
    let (tx, rx) = mpsc::channel();
    let r = Running::new(
        Builder::new(Config::default())
            .start(move |_, _| Starter {
                tx: tx.clone(),
                addr,
                config: config.clone(),
                server,
            })
            .unwrap(),
    );
    let reason = recv(&rx, "client close");
    r.shutdown();
    reason
}

/// The reactor's client: connects at start, writes before the handshake (never sent),
/// reports how its connection ended.
#[derive(Debug)]
struct Starter {
    tx: mpsc::Sender<CloseReason>,
    addr: std::net::SocketAddr,
    config: std::sync::Arc<reactor::rustls::ClientConfig>,
    server: &'static str,
}

impl Handler for Starter {
    type Tag = ();
    type Msg = ();
    type Timer = ();
    fn started(&mut self, cx: &mut Ctx<'_, Self>) {
        let id = cx
            .connect_tls(
                self.addr,
                (),
                Some(LIMIT),
                self.config.clone(),
                name(self.server),
            )
            .unwrap();
        cx.write(id, b"never sent in the clear");
    }
    fn opened(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>) {
        panic!("must not open");
    }
    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        input.len()
    }
    fn closed(&mut self, cx: &mut Ctx<'_, Self>, _: Conn<()>, reason: CloseReason) {
        assert!(reason.is_connect_failure(), "{reason:?}");
        assert_eq!(cx.tls_stats().handshake_failures, 1);
        let _ = self.tx.send(reason);
    }
}

#[test]
fn the_reactor_client_refuses_a_server_with_the_wrong_name() {
    let mut s = setup();
    let id = s.client_ca.issue(&[], &["spiffe://test/c"], Validity::Good);
    let reason = dial(
        s.server.addr(),
        client_config(&s.ca, Some(&id)),
        "other.test",
    );
    match reason {
        CloseReason::TlsHandshake(e) => assert!(e.contains("not valid for name"), "{e}"),
        r => panic!("{r:?}"),
    }
    // The server hears the client's alert.
    s.handshake_failed(&["BadCertificate", "alert", "Alert"]);
}

#[test]
fn a_tls_client_on_a_plaintext_port() {
    // A plain echo sends our ClientHello back: not a ServerHello.
    let (echo, _) = start_echo(Config::default());
    let reason = dial(
        echo.addr(),
        client_config(&Ca::new("any"), None),
        "server.test",
    );
    assert!(matches!(reason, CloseReason::TlsHandshake(_)), "{reason:?}");
    let mut c = client(echo.addr());
    ping(&mut c, b"the plain port is fine");
}
