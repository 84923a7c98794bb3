//! What the edge layers need to know about a gRPC path: who may call it and how long it may
//! run. Read from the services' own descriptor sets, so a new streaming RPC is exempt from the
//! unary deadline without anyone remembering to list it.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

/// The one unary call that legitimately waits: the worker's AcquireJob long-poll.
pub const LONG_POLL: &str = "/tuna.v1.WorkerService/AcquireJob";
const WORKER_SERVICE: &str = "/tuna.v1.WorkerService/";
const ADMIN_SERVICE: &str = "/tuna.v1.AdminService/";
const REFLECTION: &str = "/grpc.reflection.";
const HEALTH: &str = "/grpc.health.v1.Health/";

/// How long a call may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One request, one response: bounded by the unary deadline.
    Unary,
    /// A long-poll: bounded by the longest wait the server grants plus the unary deadline.
    LongPoll,
    /// Client, server or bidirectional streaming: bounded only by its own protocol.
    Streaming,
}

/// Who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Health checks and reflection: open, so probes and tools work without secrets.
    Public,
    /// `tuna.v1.WorkerService`: worker keys and the worker token.
    Worker,
    /// `tuna.v1.AdminService`: admin keys (and the configured API key).
    Admin,
    /// Everything else: the API key (unknown paths included, so the default is closed).
    Client,
}

/// Who may call `path`.
pub fn audience(path: &str) -> Audience {
    if path.starts_with(HEALTH) || path.starts_with(REFLECTION) {
        Audience::Public
    } else if path.starts_with(WORKER_SERVICE) {
        Audience::Worker
    } else if path.starts_with(ADMIN_SERVICE) {
        Audience::Admin
    } else {
        Audience::Client
    }
}

/// The served methods, by path.
#[derive(Debug, Clone)]
pub struct Catalog {
    methods: HashMap<String, (Arc<str>, Kind)>,
    unknown: Arc<str>,
}

impl Catalog {
    /// The Tuna services plus health (reflection is recognised by its prefix).
    pub fn served() -> Self {
        Self::from_descriptor_sets(&[
            tuna_proto::v1::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ])
    }

    /// Methods of encoded `FileDescriptorSet`s; an undecodable set contributes nothing (its
    /// methods are then treated as unary and labelled "unknown", never refused).
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Self {
        let mut methods = HashMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::warn!("undecodable file descriptor set; its RPCs count as unary");
                continue;
            };
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for m in &service.method {
                        let path = if package.is_empty() {
                            format!("/{}/{}", service.name(), m.name())
                        } else {
                            format!("/{package}.{}/{}", service.name(), m.name())
                        };
                        let kind = if m.client_streaming() || m.server_streaming() {
                            Kind::Streaming
                        } else if path == LONG_POLL {
                            Kind::LongPoll
                        } else {
                            Kind::Unary
                        };
                        methods.insert(path.clone(), (Arc::from(path.as_str()), kind));
                    }
                }
            }
        }
        Self {
            methods,
            unknown: Arc::from("unknown"),
        }
    }

    /// How long a call to `path` may take.
    pub fn kind(&self, path: &str) -> Kind {
        match self.methods.get(path) {
            Some((_, kind)) => *kind,
            None if path.starts_with(REFLECTION) => Kind::Streaming,
            None => Kind::Unary,
        }
    }

    /// The metrics label of `path`: the path itself when served, so arbitrary paths sent by
    /// clients cannot grow the label set without bound.
    pub fn label(&self, path: &str) -> Arc<str> {
        match self.methods.get(path) {
            Some((label, _)) => label.clone(),
            None if path.starts_with(REFLECTION) => Arc::from("grpc.reflection"),
            None => self.unknown.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_and_long_poll_methods_come_from_the_descriptors() {
        let c = Catalog::served();
        assert_eq!(c.kind("/tuna.v1.JobService/GetJob"), Kind::Unary);
        assert_eq!(c.kind("/tuna.v1.JobService/WatchJob"), Kind::Streaming);
        assert_eq!(c.kind("/tuna.v1.FileService/Upload"), Kind::Streaming);
        assert_eq!(
            c.kind("/tuna.v1.WorkerService/UploadArtifact"),
            Kind::Streaming
        );
        assert_eq!(c.kind(LONG_POLL), Kind::LongPoll);
        assert_eq!(c.kind("/tuna.v1.WorkerService/Heartbeat"), Kind::Unary);
        assert_eq!(c.kind("/grpc.health.v1.Health/Watch"), Kind::Streaming);
        assert_eq!(
            c.kind("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Kind::Streaming
        );
        assert_eq!(
            &*c.label("/tuna.v1.JobService/GetJob"),
            "/tuna.v1.JobService/GetJob"
        );
        assert_eq!(&*c.label("/no.Such/Thing"), "unknown");
    }

    #[test]
    fn audiences_default_to_the_api_key() {
        assert_eq!(audience("/grpc.health.v1.Health/Check"), Audience::Public);
        assert_eq!(
            audience("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Audience::Public
        );
        assert_eq!(
            audience("/tuna.v1.WorkerService/AcquireJob"),
            Audience::Worker
        );
        assert_eq!(audience("/tuna.v1.JobService/GetJob"), Audience::Client);
        assert_eq!(audience("/other.Service/Method"), Audience::Client);
    }
}
