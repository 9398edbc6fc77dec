//! Model bundles: listing, checking, and every manifest validation failure, on committed fixtures.

use crate::harness::{fixture, installed_home, require, text, Sandbox};

#[test]
fn list_on_an_empty_home_points_at_setup() {
    let sb = Sandbox::bare();
    let out = sb.run(&["models", "list"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.contains("scripts/setup"), "{stdout}");
}

#[test]
fn missing_runtime_is_a_clear_error_not_a_panic() {
    let sb = Sandbox::bare();
    let out = sb.run(&[
        "models",
        "check",
        &fixture("models/tiny-encoder").to_string_lossy(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("ovdiff-bank: "), "{stderr}");
    assert!(
        stderr.contains("ONNX Runtime library not found"),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/setup"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn check_fixture(name: &str) -> (bool, String) {
    let sb = Sandbox::with_runtime().expect("runtime required");
    let out = sb.run(&[
        "models",
        "check",
        &fixture(&format!("models/{name}")).to_string_lossy(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), format!("{stdout}{stderr}"))
}

#[test]
fn tiny_encoder_fixture_checks_and_runs() {
    if Sandbox::with_runtime().is_none() {
        return;
    }
    let (ok, out) = check_fixture("tiny-encoder");
    assert!(ok, "{out}");
    assert!(out.contains("forward pass"), "{out}");
    assert!(out.contains("× 16 dims"), "{out}");
}

#[test]
fn tiny_saliency_fixture_checks() {
    if Sandbox::with_runtime().is_none() {
        return;
    }
    let (ok, out) = check_fixture("tiny-saliency");
    assert!(ok, "{out}");
}

#[test]
fn broken_bundles_fail_before_inference_with_clear_errors() {
    if Sandbox::with_runtime().is_none() {
        return;
    }
    let cases = [
        ("bad-output-name", "does not match its manifest"),
        ("bad-shape", "dimension"),
        ("bad-hash", "sha256"),
        ("missing-file", "missing"),
        ("not-onnx", "could not be loaded as an ONNX model"),
    ];
    for (name, expect) in cases {
        let (ok, out) = check_fixture(name);
        assert!(!ok, "{name} passed: {out}");
        assert!(
            out.contains(expect),
            "{name}: expected `{expect}` in: {out}"
        );
        assert!(!out.contains("forward pass"), "{name} ran inference: {out}");
    }
}

#[test]
fn json_output_is_machine_readable() {
    let Some(sb) = Sandbox::with_runtime() else {
        return;
    };
    sb.link_model("tiny-encoder", &fixture("models/tiny-encoder"));
    let out = sb.run(&["models", "check", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v[0]["name"], "tiny-encoder");
    assert_eq!(v[0]["ok"], true);
    assert_eq!(v[0]["fingerprint"].as_str().unwrap().len(), 64);
    let out = sb.run(&["models", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["role"], "feature-encoder");
}

#[test]
fn installed_dinov2_bundle_verifies() {
    let home = installed_home();
    let dir = home.models_dir().join("dinov2-s14");
    if !require(&dir.join("manifest.toml"), "the dinov2-s14 bundle") {
        return;
    }
    let Some(sb) = Sandbox::with_runtime() else {
        return;
    };
    sb.link_model("dinov2-s14", &dir);
    let out = sb.run(&["models", "check", "dinov2-s14"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("× 384 dims"), "{stdout}");
}

#[test]
fn cuda_without_a_gpu_build_is_a_clear_error() {
    let Some(sb) = Sandbox::with_runtime() else {
        return;
    };
    let tiny = fixture("models/tiny-encoder");
    let out = sb.run(&[
        "models",
        "check",
        tiny.to_str().unwrap(),
        "--provider",
        "cuda",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("execution provider `cuda` is not available"),
        "{stderr}"
    );
    assert!(stderr.contains("--provider cpu"), "{stderr}");
    // and threads are settable
    let out = sb.run(&["models", "check", tiny.to_str().unwrap(), "--threads", "1"]);
    assert!(out.status.success(), "{:?}", text(&out));
}
