//! With mutual TLS from the consumer-agent, the provider-agent's loop allocates nothing
//! of its own on the race's call path once warm (see `no_alloc_mtls.rs` for the
//! consumer-agent's side and why rustls still allocates one buffer per record sealed
//! and one per record opened; `agent-provider/tests/no_alloc.rs` has the plaintext
//! path). Here because the consumer-agent that drives it lives in this crate.

mod util;

use test_support::alloc::Counting;
use util::*;

/// Counts the provider-agent's threads (`provider-agent-N`), not the consumer-agent's.
#[global_allocator]
static GLOBAL: Counting = Counting::threads_named("provider-agent");

#[test]
fn race_calls_over_mutual_tls_allocate_only_rustls_records_on_the_provider_loop() {
    let mesh = MtlsMesh::start();
    let during = allocations_in_race_calls(mesh.consumer.http_addr(), || GLOBAL.allocations());
    assert!(
        during <= 2 * 1000,
        "{during} loop allocations during 1,000 calls over mTLS: more than rustls's two"
    );
    mesh.stop();
}
