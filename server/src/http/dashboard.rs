//! The web dashboard: three static files compiled into the binary (no build step, no CDN),
//! served with headers that keep the page to its own origin.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tonic::body::Body;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// The page may talk only to this server; inline styles are allowed for SVG charts.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// Whether `path` is the dashboard's.
pub fn is_dashboard(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/") || path == "/favicon.ico"
}

pub fn serve<B>(req: &Request<B>) -> Response<Body> {
    let (status, content_type, body) =
        if req.method() != Method::GET && req.method() != Method::HEAD {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "use GET\n",
            )
        } else {
            match req.uri().path() {
                "/" => (StatusCode::OK, "text/html; charset=utf-8", INDEX),
                "/ui/app.js" => (StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
                "/ui/app.css" => (StatusCode::OK, "text/css; charset=utf-8", APP_CSS),
                "/favicon.ico" => (StatusCode::NO_CONTENT, "text/plain; charset=utf-8", ""),
                _ => (
                    StatusCode::NOT_FOUND,
                    "text/plain; charset=utf-8",
                    "not found\n",
                ),
            }
        };
    let body = if req.method() == Method::HEAD {
        ""
    } else {
        body
    };
    let mut response = Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
