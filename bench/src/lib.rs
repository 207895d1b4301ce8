//! dubbo-mesh bench: a mock Dubbo provider, a checking HTTP load generator, and the
//! scenario runner that starts the whole mesh on loopback and reports how it fares.

pub mod chart;
pub mod direct;
pub mod echo;
pub mod harness;
pub mod hist;
#[cfg(feature = "tls")]
mod idle_tls;
pub mod load;
pub mod otlp_sink;
pub mod procs;
pub mod provider;
pub mod report;
pub mod scenario;
pub mod soak;
