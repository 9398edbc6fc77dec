//! `POST /v1/segment?bank=B&classes=a,b|all&engine=auto&preset=accurate&explain=false&overlay=false`:
//! the image (raw JPEG or PNG body, or a multipart field) through the
//! bank's segmenter, behind the work queue.
//!
//! The answer is JSON (image size, the label map, per class its fraction,
//! mean score and COCO RLE mask, and with `explain=true` the support images
//! and prototypes that won it, with thumbnail URLs); the label PNG with
//! `Accept: image/png` or `format=labels`, byte for byte what `segment`
//! writes; the overlay PNG with `format=overlay`, or inside the JSON as a
//! `data:` URI with `overlay=true`.

use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query as UrlQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use ovdiff_models::features::preprocess::{decode_rgb, RefusalKind};
use ovdiff_segment::query::{closest_names, EnginePolicy, Matching};
use ovdiff_segment::render::encode_label_png;
use ovdiff_segment::rle::CocoRle;
use ovdiff_segment::{Query, Segmentation};

use super::banks::version_of;
use super::{path_segment, ImageSize};
use crate::banks::Version;
use crate::error::{chain, ApiError};
use crate::AppState;

#[derive(Debug, Deserialize)]
pub(crate) struct SegmentParams {
    bank: Option<String>,
    classes: Option<String>,
    engine: Option<String>,
    explain: Option<String>,
    format: Option<String>,
    overlay: Option<String>,
    preset: Option<String>,
}

/// What the answer is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Labels,
    Overlay,
}

pub(crate) async fn segment(
    State(st): State<Arc<AppState>>,
    UrlQuery(p): UrlQuery<SegmentParams>,
    req: Request,
) -> Result<Response, ApiError> {
    let bank = match (&p.bank, st.banks.as_slice()) {
        (Some(b), _) => b.clone(),
        (None, [only]) => only.name().to_string(),
        (None, all) => {
            let names: Vec<&str> = all.iter().map(|b| b.name()).collect();
            return Err(ApiError::bad_request(format!(
                "bank= is required when several banks are served: {}",
                names.join(", ")
            )));
        }
    };
    let (_, version) = version_of(&st, &bank)?;
    let query = query_of(&version, &p)?;
    let with_overlay = flag("overlay", p.overlay.as_deref())?;
    let accept_png = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("image/png"));
    let format = match p.format.as_deref() {
        None if accept_png => Format::Labels,
        None | Some("json") => Format::Json,
        Some("labels" | "png") => Format::Labels,
        Some("overlay") => Format::Overlay,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format={other} is not one of json, labels, overlay"
            )))
        }
    };
    // A place in the queue before the body is read, so that uploads in
    // memory are bounded by the queue too, and the timeout covers them.
    let ticket = st.queue.admit().map_err(|refusal| {
        ApiError::busy(refusal.message(st.options.timeout), refusal.retry_after_s())
    })?;
    let max_body = st.options.max_body;
    let work = async {
        let body = image_body(req, max_body).await?;
        let worker = ticket.worker().await;
        let st = st.clone();
        let bank = bank.clone();
        tokio::task::spawn_blocking(move || {
            let _worker = worker;
            let answer = run(&st, &version, &bank, &body, &query, format, with_overlay);
            drop(body);
            // The request's buffers are free now: hand their pages back,
            // so that the server's memory stays at one request's level.
            ovdiff_core::heap::trim();
            answer
        })
        .await
        .map_err(|join| {
            tracing::error!(error = %join, "a segmentation panicked; answered 500, still serving");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error while segmenting (the server logged it); please report it",
            )
        })?
    };
    match tokio::time::timeout(st.options.timeout, work).await {
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request took longer than the server's --timeout ({:.0} s) and was dropped",
                st.options.timeout.as_secs_f64()
            ),
        )),
        Ok(answer) => answer,
    }
}

/// The library query of the URL's parameters, checked against the bank.
fn query_of(v: &Version, p: &SegmentParams) -> Result<Query, ApiError> {
    let classes = p.classes.as_deref().map(str::trim).unwrap_or("");
    let store = v.segmenter.store();
    let mut q = if classes.is_empty() {
        return Err(ApiError::bad_request(
            "classes= is required: class names separated by commas, or `all`",
        ));
    } else if classes == "all" {
        Query::all_classes()
    } else {
        let names: Vec<String> = classes.split(',').map(|c| c.trim().to_string()).collect();
        for n in &names {
            if store
                .class(n)
                .map_err(|e| ApiError::internal(&e))?
                .is_none()
            {
                // Only a miss lists the bank, for the closest names.
                let known = store.classes().map_err(|e| ApiError::internal(&e))?;
                let near = closest_names(n, known.iter().map(|r| r.name.as_str()));
                let hint = if near.is_empty() {
                    "GET /v1/banks/{bank}/classes lists them".to_string()
                } else {
                    let near: Vec<String> = near.iter().map(|n| format!("`{n}`")).collect();
                    format!("did you mean {}?", near.join(", "))
                };
                return Err(ApiError::unprocessable(format!(
                    "no class `{n}` in this bank; {hint}"
                )));
            }
        }
        Query::classes(names)
    };
    q = q.with_engine(match p.engine.as_deref().unwrap_or("auto") {
        "auto" => EnginePolicy::Auto,
        "exact" => EnginePolicy::Fixed(Matching::Exact),
        "ivf" => EnginePolicy::Fixed(Matching::Ivf),
        "hnsw" => EnginePolicy::Fixed(Matching::Hnsw),
        other => {
            return Err(ApiError::bad_request(format!(
                "engine={other} is not one of auto, exact, ivf, hnsw"
            )))
        }
    });
    if let Some(name) = p.preset.as_deref() {
        let preset: ovdiff_segment::WindowPreset = name
            .parse()
            .map_err(|e: String| ApiError::bad_request(format!("preset={name}: {e}")))?;
        q = q.with_windows(preset.layout());
    }
    Ok(q.with_explain(flag("explain", p.explain.as_deref())?))
}

/// A yes/no parameter (`true`/`1`/`yes`, `false`/`0`/`no`; absent: no).
fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false" | "0" | "no") => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name}={other} is not true or false"
        ))),
    }
}

/// The image bytes: the raw body, or the `image` field (else the first
/// file field) of a multipart form. 413 past `max` bytes.
async fn image_body(req: Request, max: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the server's --max-body of {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("multipart/form-data"));
    let bytes = if multipart {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("bad multipart form: {}", e.body_text())))?;
        let mut found = None;
        loop {
            let field = form.next_field().await.map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::bad_request(format!("bad multipart form: {}", e.body_text()))
                }
            })?;
            let Some(field) = field else { break };
            let named = field.name() == Some("image");
            if named || (found.is_none() && field.file_name().is_some()) {
                let data = field.bytes().await.map_err(|e| {
                    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        too_large()
                    } else {
                        ApiError::bad_request(format!("bad multipart form: {}", e.body_text()))
                    }
                })?;
                found = Some(data);
                if named {
                    break;
                }
            }
        }
        found.ok_or_else(|| {
            ApiError::bad_request("the multipart form has no `image` field and no file field")
        })?
    } else {
        axum::body::to_bytes(req.into_body(), max)
            .await
            .map_err(|_| too_large())?
    };
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "no image: send a JPEG or PNG as the request body, or as the `image` field of a \
             multipart form",
        ));
    }
    Ok(bytes)
}

/// Decode and segment (on a worker thread), then answer in `format`.
fn run(
    st: &AppState,
    v: &Version,
    bank: &str,
    bytes: &[u8],
    query: &Query,
    format: Format,
    with_overlay: bool,
) -> Result<Response, ApiError> {
    // Fault tests: a panic inside a request must be a 500, not a crash.
    if ovdiff_core::failpoint::is("serve-panic") {
        panic!("failpoint serve-panic");
    }
    // Load tests: every segmentation takes at least the pause.
    if ovdiff_core::failpoint::is("serve-slow") {
        ovdiff_core::failpoint::pause();
    }
    let started = std::time::Instant::now();
    let image = decode_rgb(bytes).map_err(|r| {
        let status = match r.kind {
            RefusalKind::Empty | RefusalKind::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RefusalKind::Size | RefusalKind::Corrupt => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, format!("image: {r}"))
    })?;
    let decode = started.elapsed();
    let seg = v.segmenter.segment(image, query).map_err(|e| {
        let status = match e {
            ovdiff_core::Error::Invalid(_) | ovdiff_core::Error::Image { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, chain(&e))
    })?;
    let mut seg = seg;
    seg.timings.decode = decode;
    st.metrics.segmented(seg.timings.engine.encode);
    let size = ImageSize(seg.width, seg.height);
    let mut r = match format {
        Format::Labels => {
            let png = encode_label_png(
                Path::new("labels.png"),
                seg.width,
                seg.height,
                &seg.labels,
                seg.label_depth(),
            )
            .map_err(|e| ApiError::internal(&e))?;
            ([(header::CONTENT_TYPE, "image/png")], png).into_response()
        }
        Format::Overlay => {
            let png =
                ovdiff_segment::render::encode_rgb_png(Path::new("overlay.png"), &seg.overlay(0.5))
                    .map_err(|e| ApiError::internal(&e))?;
            ([(header::CONTENT_TYPE, "image/png")], png).into_response()
        }
        Format::Json => {
            let mut a = answer(&seg, bank, v, query.explain)?;
            if with_overlay {
                // The overlay PNG in the JSON, as a data: URI (the web page's
                // one request).
                let png = ovdiff_segment::render::encode_rgb_png(
                    Path::new("overlay.png"),
                    &seg.overlay(0.5),
                )
                .map_err(|e| ApiError::internal(&e))?;
                a["overlay"] = json!(ovdiff_segment::report::data_uri(&png, "image/png"));
                // The colour of each label in it (CSS), for a legend.
                let colors: serde_json::Map<String, serde_json::Value> = seg
                    .label_map()
                    .entries()
                    .iter()
                    .map(|&(label, _)| {
                        (
                            label.to_string(),
                            json!(ovdiff_segment::report::css_color(label)),
                        )
                    })
                    .collect();
                a["overlay_colors"] = serde_json::Value::Object(colors);
            }
            Json(a).into_response()
        }
    };
    r.extensions_mut().insert(size);
    Ok(r)
}

/// The JSON answer.
fn answer(
    seg: &Segmentation,
    bank: &str,
    v: &Version,
    explain: bool,
) -> Result<serde_json::Value, ApiError> {
    let mut classes = Vec::with_capacity(seg.classes.len());
    for c in &seg.classes {
        let mask = CocoRle::encode_label(&seg.labels, seg.width, seg.height, c.label)
            .map_err(|e| ApiError::internal(&e))?;
        let mut o = json!({
            "label": c.label,
            "name": c.name,
            "pixels": c.pixels,
            "fraction": c.fraction,
            "mean_score": c.mean_score,
            "mask": mask,
        });
        if explain {
            let support: Vec<_> = c
                .support
                .iter()
                .map(|s| {
                    json!({
                        "image": s.image,
                        "name": s.name,
                        "pixels": s.pixels,
                        "prototypes": s.prototypes,
                        "thumbnail": format!(
                            "/v1/banks/{}/support/{}/{}.jpg",
                            path_segment(bank),
                            path_segment(&c.name),
                            s.image
                        ),
                    })
                })
                .collect();
            o["support"] = json!(support);
        }
        classes.push(o);
    }
    let mut labels = vec!["background".to_string()];
    labels.extend(seg.class_names.iter().cloned());
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    let t = &seg.timings;
    Ok(json!({
        "bank": bank,
        "bank_sha256": v.sha256,
        "width": seg.width,
        "height": seg.height,
        "size": [seg.height, seg.width],
        "labels": labels,
        "labels_format": seg.label_depth().name(),
        "classes": classes,
        "background_fraction": seg.background_fraction,
        "windows": t.engine.windows,
        "timings_ms": {
            "decode": ms(t.decode),
            "encoder": ms(t.engine.encode),
            "matching": ms(t.engine.matching),
            "upsampling": ms(t.engine.upsample),
            "segment": ms(t.segment),
        },
    }))
}
