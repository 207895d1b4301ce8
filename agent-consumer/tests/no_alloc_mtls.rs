//! With mutual TLS to the provider-agent, the consumer-agent's loop allocates nothing of
//! its own on the race's request path once warm: the request is encoded into an output
//! buffer from the loop's pool, sealed into the loop's scratch, and the answer opened in
//! the loop's input buffer (`no_alloc.rs` has the plaintext path). What is left is
//! rustls's: its `encrypt` builds each record in a new buffer before copying it out, and
//! its client keeps each received record's plaintext in one: one allocation per record
//! sealed, one per record opened.

mod util;

use test_support::alloc::Counting;
use util::*;

/// Counts the consumer-agent's threads (its loops are `consumer-N`), not the test's nor
/// the provider-agent's.
#[global_allocator]
static GLOBAL: Counting = Counting::threads_named("consumer-");

#[test]
fn race_requests_over_mutual_tls_allocate_only_rustls_records_on_the_consumer_loop() {
    let mesh = MtlsMesh::start();
    let during = allocations_in_race_calls(mesh.consumer.http_addr(), || GLOBAL.allocations());
    // One call at a time: each request is one record sealed, each answer one opened.
    assert!(
        during <= 2 * 1000,
        "{during} loop allocations during 1,000 calls over mTLS: more than rustls's two"
    );
    mesh.stop();
}
