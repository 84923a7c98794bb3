//! Bearer-token authentication, decided once per call by its gRPC path: the API key for client
//! services, a separate worker token for `tuna.v1.WorkerService` (so a leaked worker token
//! cannot read or cancel users' jobs), nothing for health checks and reflection.

use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use http::{HeaderMap, Request, Response};
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::methods::{Audience, audience};

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

    /// Accepts when no secret is set or `authorization: Bearer <secret>` matches (the scheme
    /// is case-insensitive, as RFC 7235 says).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Status> {
        let Some(expected) = &self.digest else {
            return Ok(());
        };
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(|| Status::unauthenticated(format!("missing bearer {}", self.what)))?;
        let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Comparing digests keeps the comparison time independent of the secret's prefix.
        let diff = got
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!("invalid {}", self.what)))
        }
    }
}

/// The credentials of `Bearer <token>`, any case of the scheme.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start())
        .filter(|t| !t.is_empty())
}

/// Checks the token the call's service needs.
#[derive(Clone)]
pub struct AuthLayer {
    pub api_key: Token,
    pub worker_token: Token,
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.clone(),
        }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: AuthLayer,
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let token = match audience(req.uri().path()) {
            Audience::Public => None,
            Audience::Worker => Some(&self.tokens.worker_token),
            Audience::Client => Some(&self.tokens.api_key),
        };
        match token.map(|t| t.check(req.headers())) {
            Some(Err(status)) => Either::Left(ready(Ok(status.into_http()))),
            _ => Either::Right(self.inner.call(req)),
        }
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
}
