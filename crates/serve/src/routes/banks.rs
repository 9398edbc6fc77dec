//! The bank routes: the list, a bank's classes, its shareable file and its
//! support thumbnails.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tower::ServiceExt;

use super::{check_name, path_segment};
use crate::banks::{ServedBank, Version};
use crate::error::{chain, ApiError};
use crate::AppState;

/// The served bank `name` and its current version: 404 for a name not
/// served, 503 while it is loading.
pub(crate) fn version_of(
    st: &AppState,
    name: &str,
) -> Result<(Arc<ServedBank>, Arc<Version>), ApiError> {
    check_name("bank", name)?;
    let Some(bank) = st.bank(name) else {
        let names: Vec<&str> = st.banks.iter().map(|b| b.name()).collect();
        return Err(ApiError::not_found(format!(
            "no bank `{name}` is served here; the banks are: {}",
            names.join(", ")
        )));
    };
    match bank.current() {
        Some(v) => Ok((bank.clone(), v)),
        None => Err(ApiError::busy(
            format!("bank `{name}` is still loading (or failed to; see the server's log)"),
            1,
        )),
    }
}

/// `GET /v1/banks`
pub(crate) async fn list(State(st): State<Arc<AppState>>) -> Response {
    let mut out = Vec::new();
    for b in &st.banks {
        let Some(v) = b.current() else {
            out.push(json!({"name": b.name(), "loaded": false}));
            continue;
        };
        let encoders: Vec<_> = v
            .segmenter
            .store()
            .encoders()
            .unwrap_or_default()
            .into_iter()
            .map(|e| json!({"name": e.name, "fingerprint": e.fingerprint, "dim": e.dim}))
            .collect();
        out.push(json!({
            "name": b.name(),
            "loaded": true,
            "classes": v.classes,
            "encoders": encoders,
            "bytes": v.bytes,
            "sha256": v.sha256,
            "file": format!("/v1/banks/{}.ovbank", path_segment(b.name())),
        }));
    }
    Json(json!({ "banks": out })).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct ClassesParams {
    q: Option<String>,
}

/// `GET /v1/banks/{bank}/classes[?q=prefix]`: per class, what `show
/// --json` prints.
pub(crate) async fn classes(
    State(st): State<Arc<AppState>>,
    Path(bank): Path<String>,
    Query(p): Query<ClassesParams>,
) -> Result<Response, ApiError> {
    let (_, v) = version_of(&st, &bank)?;
    let store = v.segmenter.store();
    let prefix = p.q.unwrap_or_default();
    let mut out = Vec::new();
    for rec in store.classes().map_err(|e| ApiError::internal(&e))? {
        if !rec.name.starts_with(&prefix) {
            continue;
        }
        if let Some(d) = ovdiff_learn::catalog::class_details(store, &rec.name)
            .map_err(|e| ApiError::internal(&e))?
        {
            out.push(d);
        }
    }
    Ok(Json(json!({ "bank": bank, "classes": out })).into_response())
}

/// `GET /v1/banks/{bank}.ovbank`: the shareable file, with its SHA-256 as
/// `ETag`, and `Range` requests.
pub(crate) async fn download(
    State(st): State<Arc<AppState>>,
    Path(file): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let Some(name) = file.strip_suffix(".ovbank") else {
        return Err(ApiError::not_found(format!(
            "no route /v1/banks/{file}; the bank file is /v1/banks/{file}.ovbank"
        )));
    };
    let (_, v) = version_of(&st, name)?;
    let etag = format!("\"{}\"", v.sha256);
    // (In a block: a borrow of the request is not Send across an await.)
    let (not_modified, stale_range) = {
        let matches = |h: header::HeaderName| {
            req.headers()
                .get(h)
                .and_then(|x| x.to_str().ok())
                .map(|x| x.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
        };
        // A range of another version is not served: the whole file is.
        (
            matches(header::IF_NONE_MATCH) == Some(true),
            req.headers().contains_key(header::RANGE) && matches(header::IF_RANGE) == Some(false),
        )
    };
    if not_modified {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let req = if stale_range {
        Request::new(Body::empty())
    } else {
        req
    };
    let mut r = tower_http::services::ServeFile::new(&v.file)
        .oneshot(req)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map(Body::new);
    let h = r.headers_mut();
    h.insert(header::ETAG, header_value(&etag));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        header_value(&format!(
            "attachment; filename=\"{}.ovbank\"",
            path_segment(name)
        )),
    );
    Ok(r)
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `GET /v1/banks/{bank}/support/{class}/{index}.jpg`
pub(crate) async fn thumbnail(
    State(st): State<Arc<AppState>>,
    Path((bank, class, file)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let (_, v) = version_of(&st, &bank)?;
    check_name("class", &class)?;
    let index: u32 = file
        .strip_suffix(".jpg")
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| {
            ApiError::not_found(format!("{file:?} is not a thumbnail name; use INDEX.jpg"))
        })?;
    let store = v.segmenter.store();
    let rec = store
        .class(&class)
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found(format!("no class `{class}` in bank `{bank}`")))?;
    let jpeg = store
        .thumbnail(&rec, index)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, chain(&e)))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "class `{class}` has no thumbnail for support image {index} (it has {} images)",
                rec.support.len()
            ))
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        jpeg,
    )
        .into_response())
}
