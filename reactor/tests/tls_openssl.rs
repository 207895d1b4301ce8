//! Interoperability with someone else's TLS: Debian's `openssl s_client` against the
//! reactor's TLS server (mutual TLS, TLS 1.3 and 1.2), and the reactor's TLS client
//! against `openssl s_server`. Needs `/usr/bin/openssl` (`.ci/setup` installs it).

mod tls_util;
mod util;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;

use reactor::{Builder, CloseReason, Config, Conn, Ctx, Handler, TlsAcceptor};
use tls_util::*;
use util::*;

/// The test's own temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("reactor-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed when dropped, its stdout lines on a channel.
struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn spawn(args: &[&str]) -> Peer {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl (apt-get install openssl; .ci/setup installs it)");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer { child, lines }
    }

    /// Writes `line`; an error if the process has gone.
    fn try_send(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or(std::io::ErrorKind::BrokenPipe)?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The next stdout line that is not empty.
    fn line(&self) -> String {
        loop {
            let l = recv(&self.lines, "a line from openssl");
            if !l.trim().is_empty() {
                return l;
            }
        }
    }

    /// Waits for the process to exit (closing its stdin first); its success.
    fn finish(mut self) -> bool {
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(std::time::Instant::now() < deadline, "openssl did not exit");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn openssl_s_client_against_our_mutual_tls_server() {
    let dir = TempDir::new("s_client");
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server_id = ca.issue(&["server.test"], &[], Validity::Good);
    let client_id = client_ca.issue(
        &["consumer.test"],
        &["spiffe://mesh.test/consumer"],
        Validity::Good,
    );
    let ca_pem = dir.write("ca.pem", &ca.pem());
    let cert = dir.write("client.pem", &client_id.cert_pem);
    let key = dir.write("client.key", &client_id.key_pem);

    let (make, rx) = tls_echo(false);
    let server = Running::new(
        Builder::new(Config::default())
            .listen_tls(
                any_port(),
                (),
                TlsAcceptor::new(server_config(&server_id, Some(&client_ca))),
            )
            .start(make)
            .unwrap(),
    );
    let connect = server.addr().to_string();
    for (version, want) in [("-tls1_3", "TLSv1_3"), ("-tls1_2", "TLSv1_2")] {
        let mut peer = Peer::spawn(&[
            "s_client",
            "-connect",
            &connect,
            version,
            "-CAfile",
            &ca_pem,
            "-verify_return_error",
            "-servername",
            "server.test",
            "-verify_hostname",
            "server.test",
            "-cert",
            &cert,
            "-key",
            &key,
            "-quiet",
            "-no_ign_eof",
        ]);
        peer.send("hello from openssl s_client");
        assert_eq!(peer.line(), "hello from openssl s_client");
        match next(&rx) {
            Event::Opened {
                identity, version, ..
            } => {
                assert_eq!(version.as_deref(), Some(want));
                let identity = identity.expect("client certificate");
                assert_eq!(identity.spiffe_id(), Some("spiffe://mesh.test/consumer"));
            }
            e => panic!("{e:?}"),
        }
        peer.send(&"x".repeat(100_000));
        assert_eq!(peer.line().len(), 100_000);
        assert!(peer.finish(), "s_client {version} failed");
        let (_, reason) = closed(&rx);
        assert_eq!(reason, CloseReason::PeerClosed);
    }

    // Without a client certificate: refused, and reported as a handshake failure.
    let mut peer = Peer::spawn(&[
        "s_client",
        "-connect",
        &connect,
        "-CAfile",
        &ca_pem,
        "-servername",
        "server.test",
        "-quiet",
        "-no_ign_eof",
    ]);
    peer.send("no certificate");
    // s_client's exit status depends on whether it read the server's alert before its
    // stdin closed (TLS 1.3: its side of the handshake is already done); the server's
    // verdict is what counts.
    let _ = peer.finish();
    match closed(&rx) {
        (_, CloseReason::TlsHandshake(e)) => assert!(e.contains("certificate"), "{e}"),
        (_, r) => panic!("{r:?}"),
    }
    server.shutdown();
}

/// Connects to `addr` with the reactor's TLS client, sends `line`, reports what came
/// back (up to a newline) and how it ended.
#[derive(Debug)]
struct LineClient {
    addr: std::net::SocketAddr,
    config: Arc<reactor::rustls::ClientConfig>,
    line: String,
    got: Vec<u8>,
    tx: mpsc::Sender<Result<String, CloseReason>>,
}

impl Handler for LineClient {
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
                name("server.test"),
            )
            .unwrap();
        cx.write(id, format!("{}\n", self.line).as_bytes());
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        self.got.extend_from_slice(input);
        if let Some(end) = self.got.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.got[..end]).into_owned();
            let _ = self.tx.send(Ok(line));
            self.got.clear();
            cx.close(conn.id);
        }
        input.len()
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, reason: CloseReason) {
        let _ = self.tx.send(Err(reason));
    }
}

#[test]
fn our_client_against_openssl_s_server() {
    let dir = TempDir::new("s_server");
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server_id = ca.issue(&["server.test"], &[], Validity::Good);
    let client_id = client_ca.issue(&[], &["spiffe://mesh.test/consumer"], Validity::Good);
    let cert = dir.write("server.pem", &server_id.cert_pem);
    let key = dir.write("server.key", &server_id.key_pem);
    let client_ca_pem = dir.write("client-ca.pem", &client_ca.pem());

    for version in ["-tls1_3", "-tls1_2"] {
        let addr = test_support::net::free_addr().unwrap();
        let accept = addr.to_string();
        // -rev: an echo that reverses each line; -Verify 1: a client certificate is
        // required.
        let peer = Peer::spawn(&[
            "s_server",
            "-accept",
            &accept,
            version,
            "-cert",
            &cert,
            "-key",
            &key,
            "-rev",
            "-Verify",
            "1",
            "-CAfile",
            &client_ca_pem,
            "-verify_return_error",
            "-naccept",
            "2",
        ]);
        while peer.line() != "ACCEPT" {}

        let (tx, rx) = mpsc::channel();
        let config = client_config(&ca, Some(&client_id));
        let client = Running::new(
            Builder::new(Config::default())
                .start(move |_, _| LineClient {
                    addr,
                    config: config.clone(),
                    line: "reactor says hello".into(),
                    got: Vec::new(),
                    tx: tx.clone(),
                })
                .unwrap(),
        );
        assert_eq!(
            recv(&rx, "reply"),
            Ok("olleh syas rotcaer".to_owned()),
            "{version}"
        );
        assert_eq!(recv(&rx, "close"), Err(CloseReason::Local));
        client.shutdown();

        // Without our certificate, s_server refuses us: a handshake failure.
        let (tx, rx) = mpsc::channel();
        let config = client_config(&ca, None);
        let client = Running::new(
            Builder::new(Config::default())
                .start(move |_, _| LineClient {
                    addr,
                    config: config.clone(),
                    line: "anonymous".into(),
                    got: Vec::new(),
                    tx: tx.clone(),
                })
                .unwrap(),
        );
        match recv(&rx, "refusal") {
            Err(CloseReason::TlsHandshake(_)) => {}
            // TLS 1.3: the client's handshake is done before the server checks its
            // (absent) certificate; the server's alert then ends the open connection.
            Err(CloseReason::Tls(e)) if version == "-tls1_3" => {
                assert!(
                    e.contains("Certificate") || e.contains("certificate"),
                    "{e}"
                )
            }
            r => panic!("{version}: {r:?}"),
        }
        client.shutdown();
        drop(peer);
    }
}

/// TLS 1.2 renegotiation (s_client's `R` command) is not supported: the client that
/// asks is cut off with a TLS error, and a second client connected beside it is
/// served before and after.
#[test]
fn a_client_that_renegotiates_is_cut_off_and_others_are_unharmed() {
    let dir = TempDir::new("renegotiate");
    let ca = Ca::new("server CA");
    let server_id = ca.issue(&["server.test"], &[], Validity::Good);
    let ca_pem = dir.write("ca.pem", &ca.pem());
    let (make, rx, stats) = tls_echo_with_stats(false);
    let server = Running::new(
        Builder::new(Config {
            loops: 1,
            ..Config::default()
        })
        .listen_tls(
            any_port(),
            (),
            TlsAcceptor::new(server_config_tls12(&server_id)),
        )
        .start(make)
        .unwrap(),
    );
    let connect = server.addr().to_string();
    let client = |commands: bool| {
        let mut args = vec![
            "s_client",
            "-connect",
            &connect,
            "-tls1_2",
            "-CAfile",
            &ca_pem,
            "-servername",
            "server.test",
        ];
        // Without -quiet, a line `R` asks s_client to renegotiate; -quiet turns the
        // commands off, so the bystander's lines are plain data. (-quiet implies
        // -ign_eof: -no_ign_eof must come after it.)
        args.push(if commands { "-brief" } else { "-quiet" });
        args.push("-no_ign_eof");
        Peer::spawn(&args)
    };
    let mut bystander = client(false);
    bystander.send("before");
    assert_eq!(bystander.line(), "before");
    let _ = opened(&rx);

    // s_client now and then leaves before it reads the `R` (a write to it then fails
    // with a broken pipe): that attempt proves nothing, so another client tries again.
    let mut attempts = 0;
    let (renegotiator, renegotiating, failures_before) = loop {
        attempts += 1;
        assert!(attempts <= 5, "s_client never stayed to renegotiate");
        // An attempt that s_client gave up on may have closed on a TLS error of its own
        // (counted): only the renegotiation's failure is this test's.
        let failures_before = stats.lock().unwrap().record_failures;
        let mut renegotiator = client(true);
        renegotiator.send("hello");
        // -brief prints the session's summary on stderr (discarded): the echo first.
        assert_eq!(renegotiator.line(), "hello");
        let (renegotiating, _) = opened(&rx);
        if renegotiator.try_send("R").is_ok() {
            break (renegotiator, renegotiating, failures_before);
        }
        let (id, _) = closed(&rx);
        assert_eq!(id, renegotiating);
    };
    match closed(&rx) {
        (id, CloseReason::Tls(e)) => {
            assert_eq!(id, renegotiating);
            // rustls answers the new ClientHello with a no_renegotiation alert, and
            // s_client gives up with a fatal one.
            eprintln!("renegotiation refused: {e}");
        }
        (id, r) => panic!("connection {id:?} closed {r:?} on renegotiation"),
    }
    let failures = stats.lock().unwrap().record_failures;
    assert_eq!(failures, failures_before + 1, "counted once");
    // (s_client may sit on its failed session until killed: dropping it kills it.)
    drop(renegotiator);

    bystander.send("after");
    assert_eq!(bystander.line(), "after");
    assert!(bystander.finish(), "the bystander's session ended cleanly");
    server.shutdown();
}
