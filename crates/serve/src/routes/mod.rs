//! The routes of API v1, and what wraps them: bearer-token auth, one log
//! line and the metrics per request, CORS when asked for, panics as 500s.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the web page ([`page`]) |
//! | `GET /healthz` | the process is alive |
//! | `GET /readyz` | 200 once every bank and its encoders are loaded |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/openapi.json` | this API as OpenAPI 3 |
//! | `GET /v1/banks` | the banks |
//! | `GET /v1/banks/{bank}/classes[?q=prefix]` | a bank's classes |
//! | `GET /v1/banks/{bank}.ovbank` | the bank's shareable file (`ETag`, `Range`) |
//! | `GET /v1/banks/{bank}/support/{class}/{index}.jpg` | a support thumbnail |
//! | `POST /v1/segment?bank=B&classes=a,b\|all&engine=auto&explain=false` | segment an image |

mod banks;
mod page;
mod segment;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::AppState;

/// The OpenAPI 3 document of this API.
const OPENAPI: &str = include_str!("openapi.json");

/// The image size of a segment request, for the log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageSize(pub u32, pub u32);

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let mut app = Router::new()
        .route("/", get(page::index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/banks", get(banks::list))
        .route("/v1/banks/{file}", get(banks::download))
        .route("/v1/banks/{bank}/classes", get(banks::classes))
        .route(
            "/v1/banks/{bank}/support/{class}/{file}",
            get(banks::thumbnail),
        )
        .route("/v1/segment", post(segment::segment))
        .fallback(|| async {
            ApiError::not_found("no such route; GET /v1/openapi.json lists them")
        })
        .layer(DefaultBodyLimit::max(state.options.max_body))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked));
    if let Some(origin) = &state.options.cors {
        // Checked by the caller (`ServeOptions::cors` is a header value).
        if let Ok(origin) = origin.parse::<HeaderValue>() {
            app = app.layer(
                tower_http::cors::CorsLayer::new()
                    .allow_origin(origin)
                    .allow_methods([Method::GET, Method::POST])
                    .allow_headers([
                        header::AUTHORIZATION,
                        header::CONTENT_TYPE,
                        header::ACCEPT,
                        header::RANGE,
                        header::IF_NONE_MATCH,
                        header::IF_RANGE,
                    ])
                    .expose_headers([
                        header::ETAG,
                        header::RETRY_AFTER,
                        header::CONTENT_LENGTH,
                        header::CONTENT_RANGE,
                    ]),
            );
        }
    }
    app.with_state(state)
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.ready.load(Ordering::SeqCst) {
        "ready\n".into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "loading the banks and their encoders",
        )
        .into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.queue.waiting(), st.queue.running()),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `a == b` in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(token) = &st.options.token else {
        return next.run(req).await;
    };
    // The web page is static (it asks for the token itself); the API is not.
    let open = matches!(req.uri().path(), "/healthz" | "/");
    if open || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same_secret(g.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required: send `Authorization: Bearer TOKEN` with the \
                 token in the server's --token-file",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// One log line and the metrics of a request: route, status, time and
/// image size; never a body, a token or a query string.
async fn log_request(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let r = next.run(req).await;
    let took = started.elapsed();
    let status = r.status().as_u16();
    st.metrics.request(&route, status, took);
    let image = r
        .extensions()
        .get::<ImageSize>()
        .map(|s| format!("{}x{}", s.0, s.1));
    tracing::info!(
        method = %method,
        route = %route,
        status,
        ms = (took.as_secs_f64() * 1e4).round() / 10.0,
        image = image.as_deref().unwrap_or("-"),
        "request"
    );
    r
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request panicked; answered 500, still serving");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error (the server logged it); please report it",
    )
    .into_response()
}

/// A bank, class or file name from a URL, refused when it could reach
/// outside what it names: separators, `..`, NUL, control characters.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains("..")
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(ApiError::bad_request(format!(
            "{what} {name:?} is not a valid name (no separators, `..`, NUL or control characters)"
        )));
    }
    Ok(())
}

/// `s` as one URL path segment (RFC 3986 unreserved characters kept).
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_their_folder_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "a\0b", "a\nb", "x..y"] {
            assert!(check_name("bank", bad).is_err(), "{bad:?}");
        }
        for ok in ["team", "dining table", "traffic-light_2", "ünïcode"] {
            assert!(check_name("bank", ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("dining table"), "dining%20table");
        assert_eq!(path_segment("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(path_segment("cat"), "cat");
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn the_openapi_document_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap().chars().next(), Some('3'));
        for p in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/openapi.json",
            "/v1/banks",
            "/v1/banks/{bank}/classes",
            "/v1/banks/{bank}.ovbank",
            "/v1/banks/{bank}/support/{class}/{index}.jpg",
            "/v1/segment",
        ] {
            assert!(doc["paths"].get(p).is_some(), "{p} is not documented");
        }
    }
}
