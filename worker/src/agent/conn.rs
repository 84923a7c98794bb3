//! The gRPC client of the control plane's WorkerService, with the worker token on every call
//! (inputs are downloaded through the lease, so a worker holds no client API key).

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tuna_proto::v1::worker_service_client::WorkerServiceClient;

use super::AgentError;

/// Adds `authorization: Bearer <secret>` when a secret is set, and the caller's `traceparent`.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(secret: Option<&str>) -> Result<Self, AgentError> {
        match secret.filter(|s| !s.is_empty()) {
            None => Ok(Self(None)),
            Some(s) => format!("Bearer {s}")
                .parse()
                .map(|v| Self(Some(v)))
                .map_err(|_| {
                    AgentError::Config("a token has characters not allowed in a header".into())
                }),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        tuna_telemetry::propagation::inject_current(req.metadata_mut());
        Ok(req)
    }
}

pub type Worker = WorkerServiceClient<InterceptedService<Channel, Bearer>>;

/// One HTTP/2 connection, shared by all clients; reconnects lazily after the server restarts.
#[derive(Clone, Debug)]
pub struct Conn {
    channel: Channel,
    worker_token: Bearer,
}

impl Conn {
    pub fn new(
        url: &str,
        worker_token: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, AgentError> {
        let channel = tuna_client::endpoint::endpoint(url, ca_file)
            .map_err(|e| AgentError::Config(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .connect_lazy();
        Ok(Self {
            channel,
            worker_token: Bearer::new(worker_token)?,
        })
    }

    pub fn worker(&self) -> Worker {
        WorkerServiceClient::with_interceptor(self.channel.clone(), self.worker_token.clone())
    }
}
