//! The route table, derived from the API's own descriptors: every method of every client
//! service is `/api/<package.Service>/<Method>`. Nothing is listed by hand, so a new RPC is
//! reachable over HTTP (and in the OpenAPI document) the moment it is in a `.proto` file.

use std::collections::BTreeMap;

use http::uri::PathAndQuery;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};

use crate::edge::methods::{Audience, audience};

/// The descriptors could not be read (a build defect, reported at start-up).
#[derive(Debug, thiserror::Error)]
#[error("the API descriptors do not decode: {0}")]
pub struct RouteError(#[from] prost_reflect::DescriptorError);

/// How a method streams, which decides the HTTP framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Unary,
    /// Answered as server-sent events, or raw bytes for a [`ByteFrame`] response.
    ServerStream,
    /// Fed from an NDJSON body, or a raw body for a [`ByteFrame`] request.
    ClientStream,
    /// Not offered over HTTP/1.1 (no client RPC is bidirectional).
    Bidirectional,
}

/// One RPC as the gateway serves it.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: MethodDescriptor,
    pub grpc_path: PathAndQuery,
}

impl Route {
    pub fn shape(&self) -> Shape {
        match (
            self.method.is_client_streaming(),
            self.method.is_server_streaming(),
        ) {
            (false, false) => Shape::Unary,
            (false, true) => Shape::ServerStream,
            (true, false) => Shape::ClientStream,
            (true, true) => Shape::Bidirectional,
        }
    }
}

/// Every client RPC by `package.Service/Method`.
#[derive(Debug)]
pub struct RouteTable {
    pub pool: DescriptorPool,
    routes: BTreeMap<String, Route>,
}

impl RouteTable {
    /// The `tuna.v1` services a client may call: everything but the worker protocol (workers
    /// speak gRPC with their own credential; see `edge::methods::audience`).
    pub fn client_api() -> Result<Self, RouteError> {
        let pool = DescriptorPool::decode(tuna_proto::v1::FILE_DESCRIPTOR_SET)?;
        let mut routes = BTreeMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let key = format!("{}/{}", service.full_name(), method.name());
                let path = format!("/{key}");
                if audience(&path) != Audience::Client {
                    continue;
                }
                let Ok(grpc_path) = PathAndQuery::try_from(path) else {
                    continue;
                };
                routes.insert(key, Route { method, grpc_path });
            }
        }
        Ok(Self { pool, routes })
    }

    /// The route of `package.Service/Method`.
    pub fn get(&self, rpc: &str) -> Option<&Route> {
        self.routes.get(rpc)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Route)> {
        self.routes.iter()
    }
}

/// A `oneof { SomeMessage header; bytes chunk; }` message: a byte stream whose first message
/// describes it (uploads and downloads). Such streams travel as raw bytes over HTTP.
#[derive(Debug, Clone)]
pub struct ByteFrame {
    pub header: FieldDescriptor,
    pub chunk: FieldDescriptor,
}

impl ByteFrame {
    pub fn of(message: &MessageDescriptor) -> Option<Self> {
        let mut oneofs = message.oneofs();
        let oneof = oneofs.next()?;
        if oneofs.next().is_some() || message.fields().count() != 2 {
            return None;
        }
        let mut header = None;
        let mut chunk = None;
        for field in oneof.fields() {
            match field.kind() {
                Kind::Message(_) if header.is_none() => header = Some(field),
                Kind::Bytes if chunk.is_none() => chunk = Some(field),
                _ => return None,
            }
        }
        Some(Self {
            header: header?,
            chunk: chunk?,
        })
    }

    /// The header's message type.
    pub fn header_message(&self) -> Option<MessageDescriptor> {
        match self.header.kind() {
            Kind::Message(m) => Some(m),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_rpc_is_routed_and_the_worker_protocol_is_not() {
        let table = RouteTable::client_api().unwrap_or_else(|e| panic!("{e}"));
        for rpc in [
            "tuna.v1.JobService/CreateJob",
            "tuna.v1.JobService/WatchJob",
            "tuna.v1.FileService/Upload",
            "tuna.v1.ArtifactService/Download",
            "tuna.v1.ModelService/RegisterModel",
            "tuna.v1.SweepService/WatchSweep",
            "tuna.v1.FleetService/ListWorkers",
        ] {
            assert!(table.get(rpc).is_some(), "{rpc} is not routed");
        }
        assert!(table.get("tuna.v1.WorkerService/AcquireJob").is_none());
        assert!(
            table
                .iter()
                .all(|(k, _)| !k.starts_with("tuna.v1.WorkerService/"))
        );
        assert_eq!(
            table.get("tuna.v1.FileService/Upload").map(Route::shape),
            Some(Shape::ClientStream)
        );
    }

    #[test]
    fn uploads_and_downloads_are_byte_frames_and_job_updates_are_not() {
        let table = RouteTable::client_api().unwrap_or_else(|e| panic!("{e}"));
        let message = |name: &str| {
            table
                .pool
                .get_message_by_name(name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        for name in [
            "tuna.v1.UploadFileRequest",
            "tuna.v1.DownloadFileResponse",
            "tuna.v1.DownloadResponse",
        ] {
            let frame = ByteFrame::of(&message(name)).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(frame.chunk.name(), "chunk");
        }
        assert!(ByteFrame::of(&message("tuna.v1.JobUpdate")).is_none());
        assert!(ByteFrame::of(&message("tuna.v1.Job")).is_none());
    }
}
