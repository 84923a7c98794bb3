//! One way to reach a control plane, shared by the SDK, the CLI and the worker: `http://` in
//! clear (loopback and trusted networks), `https://` over TLS verified against a CA file (a
//! private CA) or the system's roots.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::ClientError;

/// The endpoint for `url`; `ca_file` (PEM) is the CA that signed the server's certificate.
pub fn endpoint(url: &str, ca_file: Option<&Path>) -> Result<Endpoint, ClientError> {
    let bad = |message: String| ClientError::Url {
        url: url.to_string(),
        message,
    };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    let tls = url.starts_with("https://");
    if tls {
        tuna_telemetry::install_tls_provider();
    }
    match (tls, ca_file) {
        (true, Some(ca)) => {
            let pem = std::fs::read(ca).map_err(|source| ClientError::Io {
                path: ca.display().to_string(),
                source,
            })?;
            let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| bad(format!("TLS settings: {e}")))?;
        }
        (true, None) => {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| bad(format!("TLS settings: {e}")))?;
        }
        (false, Some(ca)) => {
            return Err(bad(format!(
                "a CA file ({}) was given for a plain http:// server; use https://",
                ca.display()
            )));
        }
        (false, None) => {}
    }
    Ok(endpoint)
}
