//! Loopback ports and connections.

use std::io::{self, ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A free loopback port: bound, then released (good enough on a quiet host; another
/// process may still take it before the caller binds it).
///
/// # Errors
/// No loopback port could be bound.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `127.0.0.1` on a [`free_port`].
///
/// # Errors
/// No loopback port could be bound.
pub fn free_addr() -> io::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Reads until the peer closes (end of stream or reset) or `limit` passes with nothing
/// more arriving; true for a close. Bytes read meanwhile are discarded.
///
/// # Panics
/// The read timeout cannot be set.
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
