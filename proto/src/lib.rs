//! The Tuna gRPC API (`tuna.v1`): protobuf messages and tonic clients and servers.
//!
//! The `.proto` files under `tuna/v1/` are the contract; their comments document semantics.

/// Generated `tuna.v1` types.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("tuna.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tuna_descriptor");
}

pub use prost_types::Timestamp;

/// Chunk size for streamed uploads and downloads (well under tonic's 4 MiB decode limit).
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// Converts milliseconds since the Unix epoch to a protobuf timestamp.
pub fn ts_from_ms(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Converts a protobuf timestamp to milliseconds since the Unix epoch.
pub fn ts_to_ms(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}
