//! Bearer-token checks: an API key for client services, a separate token for WorkerService,
//! so a leaked worker token cannot read or cancel users' jobs.

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// A configured secret, kept only as its hash.
#[derive(Clone)]
pub struct Token {
    digest: Option<[u8; 32]>,
    what: &'static str,
}

impl Token {
    /// `secret` empty means no check.
    pub fn new(secret: &str, what: &'static str) -> Self {
        Self {
            digest: (!secret.is_empty()).then(|| Sha256::digest(secret.as_bytes()).into()),
            what,
        }
    }

    /// Interceptor body: accepts the request when no secret is set or the bearer token matches.
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.digest else {
            return Ok(req);
        };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated(format!("missing bearer {}", self.what)))?;
        let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Comparing digests keeps the comparison time independent of the secret's prefix.
        let diff = got
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(req)
        } else {
            Err(Status::unauthenticated(format!("invalid {}", self.what)))
        }
    }
}
