//! The web dashboard at `/ui`: a few static files embedded in the binary
//! (no separate server, no CDN). The page talks to the management API with
//! the token it is given in the URL fragment (`/ui#token=…`, as `lampyr ui`
//! prints it), which never reaches the server's logs.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../ui/index.html");
const APP: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'"),
    );
    r
}

pub(crate) async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

pub(crate) async fn app_js() -> Response {
    asset(APP, "text/javascript; charset=utf-8")
}

pub(crate) async fn style_css() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}
