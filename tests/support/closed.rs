//! Whether a peer closed a connection: shared by the agents' limit tests.
//!
//! Include with `#[path = "../../tests/support/closed.rs"] mod closed;`.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::Duration;

/// Reads until the peer closes (end of stream or reset) or `limit` passes with nothing
/// more arriving; true for a close. Bytes read meanwhile are discarded.
pub fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("read timeout");
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }
}
