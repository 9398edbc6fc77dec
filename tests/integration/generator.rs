//! `add` with a diffusion generator: the tiny SD export end to end, resume after a kill, and bad generator folders.

use std::path::Path;

use crate::harness::{copy_dir, fixture, text, Sandbox};

fn sandbox() -> Option<Sandbox> {
    let sb = Sandbox::with_runtime()?;
    sb.link_model("tiny-encoder", &fixture("models/tiny-encoder"));
    Some(sb)
}

const SMALL: [&str; 10] = [
    "--encoder",
    "tiny-encoder",
    "--n",
    "5",
    "--steps",
    "4",
    "--size",
    "64",
    "--batch",
    "2",
];

fn add(sb: &Sandbox, class: &str, generator: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["add", class, "--generator", generator.to_str().unwrap()];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    sb.run(&args)
}

fn cached_pngs(sb: &Sandbox) -> usize {
    let root = sb.home.path().join("cache/support");
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
                .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn tiny_pipeline_builds_a_class_end_to_end() {
    let Some(sb) = sandbox() else { return };
    let keep = sb.home.path().join("kept");
    let out = add(
        &sb,
        "fixture-class",
        &fixture("sd-tiny"),
        &["--keep-support", keep.to_str().unwrap()],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("5 images used"), "{stdout}");
    assert_eq!(std::fs::read_dir(&keep).unwrap().count(), 5);
    let out = sb.run(&["show", "fixture-class", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["source"].as_str().unwrap().starts_with("generator:"));
    let params = v["source_params"].as_array().unwrap();
    assert!(params
        .iter()
        .any(|p| p[0] == "prompt" && p[1] == "A good picture of a fixture-class"));
    assert!(params
        .iter()
        .any(|p| p[0] == "scheduler" && p[1] == "dpm++2m"));
    let support = v["support"].as_array().unwrap();
    assert_eq!(support.len(), 5);
    assert!(support
        .iter()
        .all(|s| s["thumbnail_bytes"].as_u64().unwrap() > 100));
    assert_eq!(
        (support[0]["width"].as_u64(), support[0]["height"].as_u64()),
        (Some(64), Some(64))
    );
}

#[test]
fn same_seed_same_images_bit_for_bit() {
    let Some(a) = sandbox() else { return };
    let b = sandbox().unwrap();
    let ka = a.home.path().join("k");
    let kb = b.home.path().join("k");
    assert!(add(
        &a,
        "c",
        &fixture("sd-tiny"),
        &["--keep-support", ka.to_str().unwrap()]
    )
    .status
    .success());
    // the same images with another batch size
    let gen = fixture("sd-tiny");
    let mut args = vec!["add", "c", "--generator", gen.to_str().unwrap()];
    args.extend_from_slice(&SMALL[..8]);
    args.extend_from_slice(&["--batch", "3", "--keep-support", kb.to_str().unwrap()]);
    let out = b.run(&args);
    assert!(out.status.success(), "{:?}", text(&out));
    for i in 0..5 {
        let name = format!("c-{i:03}.png");
        assert_eq!(
            std::fs::read(ka.join(&name)).unwrap(),
            std::fs::read(kb.join(&name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn an_interrupted_add_resumes_from_the_cache() {
    let Some(sb) = sandbox() else { return };
    let gen = fixture("sd-tiny");
    let mut args = vec!["add", "resumed", "--generator", gen.to_str().unwrap()];
    args.extend_from_slice(&SMALL);
    let out = sb
        .cmd()
        .env("OVDIFF_FAILPOINT", "generate-after-batch")
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint kills the process");
    assert_eq!(
        cached_pngs(&sb),
        2,
        "the first batch of 2 was cached before the kill"
    );
    let out = sb.run(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.as_array().unwrap().is_empty(), "no half class");
    let out = sb.run(&args);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(cached_pngs(&sb), 5);
}

#[test]
fn bad_generator_folders_fail_before_sampling() {
    let Some(sb) = sandbox() else { return };
    let copy = |name: &str| {
        let dst = sb.home.path().join(name);
        copy_dir(&fixture("sd-tiny"), &dst);
        dst
    };
    // a missing file
    let g = copy("missing");
    std::fs::remove_file(g.join("unet/model.onnx")).unwrap();
    let (_, stderr) = text(&add(&sb, "x", &g, &[]));
    assert!(
        stderr.contains("unet/model.onnx") && stderr.contains("optimum-cli export onnx"),
        "{stderr}"
    );
    // a wrong input name in the UNet: swap in the text encoder graph
    let g = copy("wrong-input");
    std::fs::copy(g.join("text_encoder/model.onnx"), g.join("unet/model.onnx")).unwrap();
    let (_, stderr) = text(&add(&sb, "x", &g, &[]));
    assert!(stderr.contains("sample"), "{stderr}");
    // a wrong hidden size in the config
    let g = copy("wrong-hidden");
    let cfg = std::fs::read_to_string(g.join("unet/config.json")).unwrap();
    std::fs::write(
        g.join("unet/config.json"),
        cfg.replace("\"cross_attention_dim\": 32", "\"cross_attention_dim\": 64"),
    )
    .unwrap();
    let (_, stderr) = text(&add(&sb, "x", &g, &[]));
    assert!(
        stderr.contains("cross_attention_dim") || stderr.contains("hidden"),
        "{stderr}"
    );
    assert_eq!(cached_pngs(&sb), 0, "nothing was sampled");
    // no generator at all: the error says how to make one
    let out = sb.run(&["add", "x", "--encoder", "tiny-encoder"]);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("optimum-cli export onnx") && stderr.contains("config.toml"),
        "{stderr}"
    );
}
