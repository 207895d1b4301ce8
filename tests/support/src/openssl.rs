//! Debian's `openssl s_client` as an independent TLS peer in tests.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wait::wait_until;

/// Kills and reaps the child however the test ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` (an `openssl s_client`), writes `input` to it and keeps its input open
/// until what it printed is `done`, it ends its output, or `limit` passes (openssl's
/// start and handshake take a while on a busy machine: wait for the answer rather than
/// for a fixed time); returns what it printed.
///
/// # Panics
/// `openssl` does not start (it is installed by `.ci/setup`).
pub fn s_client_exchange(
    cmd: &mut Command,
    input: &[u8],
    limit: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let mut child = Reaped(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client (Debian's openssl, installed by .ci/setup)"),
    );
    // What openssl printed so far, and whether it ended, read by a thread.
    let out = Arc::new(Mutex::new((Vec::new(), false)));
    let reader = child.0.stdout.take().map(|mut stdout| {
        let out = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.lock().unwrap().0.extend_from_slice(&buf[..n]),
                }
            }
            out.lock().unwrap().1 = true;
        })
    });
    if let Some(mut stdin) = child.0.stdin.take() {
        let _ = stdin.write_all(input);
        // Keep stdin open while the answer comes back.
        wait_until(limit, || {
            let out = out.lock().unwrap();
            out.1 || done(&out.0)
        });
        drop(stdin);
    }
    // s_client stays up after its input ends: what it printed is in the pipe.
    drop(child);
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    let out = std::mem::take(&mut out.lock().unwrap().0);
    out
}
