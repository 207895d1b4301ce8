//! Allocations on the TLS request path stay a small constant per message: once a TLS
//! connection is warm, echoing a message costs the loop only rustls's own allocations
//! (one buffer per record decrypted and one per record encrypted). The output buffer
//! comes from the loop's pool and goes back once written (so idle connections hold
//! none); nothing grows.

mod tls_util;
mod util;

use std::io::{Read, Write};

use reactor::{Builder, Config, TlsAcceptor};
use test_support::alloc::Counting;
use tls_util::*;
use util::*;

/// Counts the allocations of the reactor's loop threads ("reactor-0", ...).
#[global_allocator]
static GLOBAL: Counting = Counting::threads_named("reactor");

/// rustls 0.23's: the decrypted record's buffer and the encrypted record's buffer (copied
/// into the loop's scratch). Nothing of the reactor's.
const PER_MESSAGE: usize = 2;

#[test]
fn echoing_on_a_warm_tls_connection_allocates_a_constant_few_times() {
    let ca = Ca::new("CA");
    let server_id = ca.issue(&["server.test"], &[], Validity::Good);
    let (make, _rx) = tls_echo(false);
    let server = Running::new(
        Builder::new(Config::default())
            .listen_tls(
                any_port(),
                (),
                TlsAcceptor::new(server_config(&server_id, None)),
            )
            .start(make)
            .unwrap(),
    );
    let mut c = tls_client(server.addr(), client_config(&ca, None), "server.test");
    let msg = [0x5a; 64];
    for _ in 0..100 {
        tls_ping(&mut c, &msg);
    }
    let mut back = [0; 64];
    let before = GLOBAL.allocations();
    for _ in 0..1000 {
        c.write_all(&msg).unwrap();
        c.flush().unwrap();
        c.read_exact(&mut back).unwrap();
    }
    let during = GLOBAL.allocations() - before;
    println!("{during} allocations in the loop for 1,000 echoed TLS messages");
    assert!(
        during <= 1000 * PER_MESSAGE,
        "{during} allocations for 1,000 messages: more than {PER_MESSAGE} each"
    );
    server.shutdown();
}
