//! Authentication, decided once per call by its gRPC path, and the caller's identity handed
//! to the services as a [`Caller`] request extension.
//!
//! Credentials, in the order they are tried:
//! - an API key `tuna_<id>_<secret>` (`tuna admin keys create`): its row is read on every
//!   call, so a revocation holds on the key's next call on every replica;
//! - the configured secrets: the API key (`TUNA_API_KEY`, the `default` tenant's admin) and
//!   the shared worker token (`TUNA_WORKER_TOKEN`);
//! - nothing, only where the matching secret is not configured (a loopback server; `serve`
//!   refuses a public address that way): the `default` tenant's admin, or a worker.
//!
//! Roles: `tuna.v1.WorkerService` takes worker credentials only (so a leaked worker key
//! cannot read users' jobs), `tuna.v1.AdminService` admin keys only, every other Tuna
//! service client or admin keys; health checks and reflection are open.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::methods::{Audience, audience};
use crate::domain::access::{self, Caller, Role};
use crate::store::{Store, StoreError};

/// A configured secret, kept only as its hash.
#[derive(Clone)]
pub struct Token {
    digest: Option<[u8; 32]>,
    what: &'static str,
}

impl Token {
    /// `secret` empty (or only whitespace, which no bearer header can carry) means no check;
    /// the server refuses to serve a non-loopback address that way (see `serve`).
    pub fn new(secret: &str, what: &'static str) -> Self {
        Self {
            digest: (!secret.trim().is_empty()).then(|| Sha256::digest(secret.as_bytes()).into()),
            what,
        }
    }

    /// Whether calls must present this secret.
    pub fn is_set(&self) -> bool {
        self.digest.is_some()
    }

    /// What the secret is called in messages ("API key", "worker token").
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Whether `presented` is this secret (always false when none is set). Digests are
    /// compared, so the time taken does not depend on how much of the secret was right.
    fn matches(&self, presented: &str) -> bool {
        let Some(expected) = &self.digest else {
            return false;
        };
        let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        got.iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Accepts when no secret is set or `authorization: Bearer <secret>` matches (the scheme
    /// is case-insensitive, as RFC 7235 says).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Status> {
        if self.digest.is_none() {
            return Ok(());
        }
        let presented = presented(headers)
            .ok_or_else(|| Status::unauthenticated(format!("missing bearer {}", self.what)))?;
        if self.matches(presented) {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!("invalid {}", self.what)))
        }
    }
}

/// The bearer credentials of a call, if any.
fn presented(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
}

/// The credentials of `Bearer <token>`, any case of the scheme.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start())
        .filter(|t| !t.is_empty())
}

/// Decides who a call is.
#[derive(Clone)]
pub struct Authenticator {
    pub api_key: Token,
    pub worker_token: Token,
    pub store: Arc<dyn Store>,
}

impl Authenticator {
    /// The caller of a call to `audience`, or the status that refuses it.
    pub async fn authenticate(
        &self,
        audience: Audience,
        headers: &HeaderMap,
    ) -> Result<Caller, Status> {
        let worker = audience == Audience::Worker;
        let configured = if worker {
            &self.worker_token
        } else {
            &self.api_key
        };
        let caller = match presented(headers) {
            Some(text) => match access::parse_key(text) {
                Some((id, secret)) => self.key(id, secret).await?,
                None if self.api_key.matches(text) => Caller {
                    key_id: Arc::from("config-api-key"),
                    tenant: Arc::from(access::DEFAULT_TENANT),
                    role: Role::Admin,
                },
                None if self.worker_token.matches(text) => Caller {
                    key_id: Arc::from("config-worker-token"),
                    tenant: Arc::from(access::DEFAULT_TENANT),
                    role: Role::Worker,
                },
                None if !configured.is_set() => open(worker),
                None => {
                    return Err(Status::unauthenticated(format!(
                        "invalid {}",
                        configured.what()
                    )));
                }
            },
            None if !configured.is_set() => open(worker),
            None => {
                return Err(Status::unauthenticated(format!(
                    "missing bearer {}",
                    configured.what()
                )));
            }
        };
        permit(audience, caller.role)?;
        Ok(caller)
    }

    async fn key(&self, id: &str, secret: &str) -> Result<Caller, Status> {
        let record = match self.store.get_api_key(id).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => {
                return Err(Status::unauthenticated("invalid API key"));
            }
            Err(e) => {
                tracing::warn!(error = %e, "API key lookup failed");
                return Err(Status::unavailable(
                    "cannot check the API key now (database unavailable); retry",
                ));
            }
        };
        if !access::digests_match(&access::secret_digest(secret), &record.secret_sha256) {
            return Err(Status::unauthenticated("invalid API key"));
        }
        if record.revoked_at.is_some() {
            return Err(Status::unauthenticated(format!(
                "API key {} was revoked",
                record.id
            )));
        }
        Ok(Caller {
            key_id: Arc::from(record.id),
            tenant: Arc::from(record.tenant),
            role: record.role,
        })
    }
}

/// The caller of an open (no secret configured) server.
fn open(worker: bool) -> Caller {
    Caller::anonymous(if worker { Role::Worker } else { Role::Admin })
}

/// Whether `role` may call services of `audience`.
fn permit(audience: Audience, role: Role) -> Result<(), Status> {
    let allowed = match audience {
        Audience::Public => true,
        Audience::Worker => role == Role::Worker,
        Audience::Client => matches!(role, Role::Client | Role::Admin),
        Audience::Admin => role == Role::Admin,
    };
    if allowed {
        return Ok(());
    }
    Err(Status::permission_denied(match audience {
        Audience::Worker => "only worker keys may call tuna.v1.WorkerService",
        Audience::Admin => "only admin keys may call tuna.v1.AdminService",
        _ => "worker keys may only call tuna.v1.WorkerService",
    }))
}

/// Authenticates every call and attaches its [`Caller`].
#[derive(Clone)]
pub struct AuthLayer {
    pub authenticator: Authenticator,
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    authenticator: Authenticator,
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh one waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let audience = audience(req.uri().path());
        if audience == Audience::Public {
            return Box::pin(inner.call(req));
        }
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            match authenticator.authenticate(audience, req.headers()).await {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = value.parse() {
            h.insert(http::header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let t = Token::new("s3cret", "API key");
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR  s3cret",
        ] {
            assert!(t.check(&headers(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "Bearer nope",
            "Basic s3cret",
            "Bearers3cret",
            "Bearer ",
            "s3cret",
        ] {
            assert!(t.check(&headers(bad)).is_err(), "{bad}");
        }
        assert!(t.check(&HeaderMap::new()).is_err());
        assert!(Token::new("", "API key").check(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn each_role_reaches_only_its_services() {
        use Audience::*;
        for (aud, role, ok) in [
            (Worker, Role::Worker, true),
            (Worker, Role::Client, false),
            (Worker, Role::Admin, false),
            (Client, Role::Client, true),
            (Client, Role::Admin, true),
            (Client, Role::Worker, false),
            (Audience::Admin, Role::Admin, true),
            (Audience::Admin, Role::Client, false),
            (Audience::Admin, Role::Worker, false),
        ] {
            assert_eq!(permit(aud, role).is_ok(), ok, "{aud:?} {role}");
        }
    }
}
