//! Tuna's control plane: gRPC services over a durable job queue (docs/design.md §2–§3, §6).
//!
//! The library is run by `tuna server`; [`serve::ControlPlane`] is the composition root.

pub mod api;
pub mod blobs;
pub mod config;
pub mod dataset;
pub mod domain;
pub mod edge;
pub mod error;
pub mod http;
pub mod lofi;
pub mod metrics;
pub mod model_facts;
pub mod prometheus;
pub mod readiness;
pub mod retention;
pub mod search;
pub mod serve;
pub mod store;
pub mod sweeps;

/// Who holds a singleton lease (sweep controller, retention): the process id says which
/// replica leads when an operator looks at `leader_leases`; the suffix keeps it unique.
pub fn leader_holder() -> String {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    format!("pid-{}-{}", std::process::id(), &unique[..12])
}
