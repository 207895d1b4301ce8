//! Helpers shared by dubbo-mesh's tests and its bench, one copy each:
//!
//! - [`alloc`]: a counting global allocator for the no-allocation tests;
//! - [`net`]: free loopback ports, and whether a peer closed a connection;
//! - [`wait`]: polling until a condition holds;
//! - [`openssl`]: exchanges with `openssl s_client`, an independent TLS peer;
//! - [`etcd`]: a real etcd server on free loopback ports;
//! - [`zk`]: a real ZooKeeper (standalone or an ensemble) on free loopback ports.
//!
//! Tests take it as a dev-dependency (`test-support.workspace = true`). It depends on
//! none of the workspace's crates, so any of them can use it without a cycle.

#![deny(missing_docs)]

pub mod alloc;
pub mod etcd;
pub mod net;
pub mod openssl;
pub mod wait;
pub mod zk;
