//! `GET /`: the web page: pick a bank, type classes (completed from the bank's), drop or pick an image, and see the overlay, the legend with fractions and, on request, the explanation.
//!
//! One plain HTML file with its CSS and script inline, compiled into the
//! binary; it calls the API of this server (`/v1/banks`,
//! `/v1/banks/{bank}/classes`, `POST /v1/segment?…&overlay=true`) and
//! needs nothing else, no network beyond it.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page.
const INDEX: &str = include_str!("page/index.html");

pub(crate) async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response()
}
