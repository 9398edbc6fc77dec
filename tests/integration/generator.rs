//! `add` with a diffusion generator: the tiny SD export end to end, resume after a kill, bad generator folders, and attribution maps.

use std::path::{Path, PathBuf};

use crate::harness::{copy_dir, fixture, installed_home, require, text, Sandbox};

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

/// The support cache's files, sorted: (images, attribution maps).
fn cached(sb: &Sandbox) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let root = sb.home.path().join("cache/support");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "png"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .partition(|p| !p.to_string_lossy().ends_with(".attribution.png"))
}

/// Run `args` with the failpoint that aborts once the first batch is cached.
fn add_killed_after_first_batch(sb: &Sandbox, args: &[&str]) {
    let out = sb
        .cmd()
        .env("OVDIFF_FAILPOINT", "generate-after-batch")
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint kills the process");
}

fn cached_pngs(sb: &Sandbox) -> usize {
    cached(sb).0.len()
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
    add_killed_after_first_batch(&sb, &args);
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

// ------------------------------------------------------ attribution maps

/// A copy of the tiny export whose UNet exposes two cross-attention
/// layers (`variants/unet-attention-exposed`, see make_attention_unet.py).
fn attention_generator(sb: &Sandbox, name: &str) -> PathBuf {
    let dst = sb.home.path().join(name);
    copy_dir(&fixture("sd-tiny"), &dst);
    std::fs::remove_dir_all(dst.join("unet")).unwrap();
    std::fs::remove_dir_all(dst.join("variants")).unwrap();
    copy_dir(
        &fixture("sd-tiny/variants/unet-attention-exposed"),
        &dst.join("unet"),
    );
    dst
}

/// A 16-bit attribution map as values in [0, 1].
fn read_map(path: &Path) -> (u32, u32, Vec<f64>) {
    let img = image::open(path).unwrap();
    let grey = img.as_luma16().expect("a 16-bit greyscale PNG");
    let (w, h) = grey.dimensions();
    let v = grey
        .as_raw()
        .iter()
        .map(|v| f64::from(*v) / 65535.0)
        .collect();
    (w, h, v)
}

/// The attribution map the fixture implies at 64 px (an 8×8 latent grid),
/// computed here from make_attention_unet.py's formula, independently of
/// the crate: per layer and head, the probability of each text token
/// `j ≥ 1` is `e / (z + 76 e)` with `e = exp(s·c(p))`, `z = exp(s/2)`,
/// `c(p) = 1 − 8 r²(p)`. Layer A (scales 12, 24) is on the 8×8 grid, layer
/// B (16, 32) on 4×4, brought up bilinearly (half-pixel centres, edges
/// clamped). The number of class tokens and of steps are constant factors,
/// which min-max normalisation removes. This is the map of the rows of the
/// prompt "A good picture of a fixture-class"; the fixture's rows of the
/// empty negative prompt attend the other way (to the corners), so a map
/// read from the unconditional half of the guided batch would not match.
fn expected_map() -> Vec<f64> {
    let layer = |n: usize, scales: [f64; 2]| -> Vec<f64> {
        let mut out = Vec::new();
        for y in 0..n {
            for x in 0..n {
                let dy = (y as f64 + 0.5) / n as f64 - 0.5;
                let dx = (x as f64 + 0.5) / n as f64 - 0.5;
                let c = 1.0 - 8.0 * (dy * dy + dx * dx);
                out.push(
                    scales
                        .iter()
                        .map(|s| {
                            let e = (s * c).exp();
                            e / ((s * 0.5).exp() + 76.0 * e)
                        })
                        .sum(),
                );
            }
        }
        out
    };
    let a = layer(8, [12.0, 24.0]);
    let b = layer(4, [16.0, 32.0]);
    let tap = |i: usize| -> (usize, usize, f64) {
        let x = ((i as f64 + 0.5) / 2.0 - 0.5).clamp(0.0, 3.0);
        let lo = x.floor() as usize;
        (lo, (lo + 1).min(3), x - lo as f64)
    };
    let mut m: Vec<f64> = (0..64)
        .map(|i| {
            let ((y0, y1, ty), (x0, x1, tx)) = (tap(i / 8), tap(i % 8));
            let at = |y: usize, x: usize| b[y * 4 + x];
            let top = at(y0, x0) * (1.0 - tx) + at(y0, x1) * tx;
            let bottom = at(y1, x0) * (1.0 - tx) + at(y1, x1) * tx;
            a[i] + top * (1.0 - ty) + bottom * ty
        })
        .collect();
    let lo = m.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m.iter_mut().for_each(|v| *v = (*v - lo) / (hi - lo));
    m
}

#[test]
fn attribution_maps_match_the_fixture_and_split_the_support_set() {
    let Some(sb) = sandbox() else { return };
    let gen = attention_generator(&sb, "sd-tiny-attention");
    let keep = sb.home.path().join("kept");
    let out = add(
        &sb,
        "fixture-class",
        &gen,
        &[
            "--negative",
            "",
            "--keep-support",
            keep.to_str().unwrap(),
            "--json",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["split"], "attribution", "{stdout}");
    assert_eq!(v["fallback_splits"], 0, "the maps split every image");
    // five images and five maps in the cache and in --keep-support
    let (images, maps) = cached(&sb);
    assert_eq!((images.len(), maps.len()), (5, 5));
    assert_eq!(std::fs::read_dir(&keep).unwrap().count(), 10);
    assert!(keep.join("fixture-class-004.attribution.png").is_file());
    // every map is the one the fixture's cross-attention implies
    let want = expected_map();
    for map in &maps {
        let (w, h, got) = read_map(map);
        assert_eq!((w, h), (8, 8), "the latent grid at 64 px");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f64::max);
        assert!(worst < 2e-4, "{}: off by {worst}", map.display());
    }
    // a centred disc: the centre is foreground, the corners background
    assert!(want[3 * 8 + 3] > 0.99 && want[0] < 0.01);
    let out = sb.run(&["show", "fixture-class", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["split"], "attribution");
    // the kept folder is a support set with its maps: the maps are not
    // taken for images, and --split attribution reads them
    let out = sb.run(&[
        "add",
        "kept",
        "--images",
        keep.to_str().unwrap(),
        "--encoder",
        "tiny-encoder",
        "--split",
        "attribution",
        "--json",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (v["images_used"].as_u64(), v["split"].as_str()),
        (Some(5), Some("attribution"))
    );
    assert_eq!(v["fallback_splits"], 0);
    // --split saliency still overrides the generator's maps
    let out = add(&sb, "salient", &gen, &["--split", "saliency", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["split"], "saliency", "{:?}", text(&out));
    // the plain export's class still uses the encoder's saliency
    let out = add(&sb, "plain", &fixture("sd-tiny"), &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["split"], "saliency", "{:?}", text(&out));
}

#[test]
fn an_interrupted_attribution_add_resumes_with_its_maps() {
    let Some(sb) = sandbox() else { return };
    let gen = attention_generator(&sb, "sd-tiny-attention");
    let mut args = vec!["add", "resumed", "--generator", gen.to_str().unwrap()];
    args.extend_from_slice(&SMALL);
    add_killed_after_first_batch(&sb, &args);
    let (images, maps) = cached(&sb);
    assert_eq!(
        (images.len(), maps.len()),
        (2, 2),
        "the first batch, maps included"
    );
    // an image whose map was lost, or damaged, is sampled again, to the
    // same image and map
    let before: Vec<Vec<u8>> = images.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let map0 = std::fs::read(&maps[0]).unwrap();
    std::fs::write(&maps[0], &map0[..map0.len() / 2]).unwrap();
    std::fs::remove_file(&maps[1]).unwrap();
    let out = sb.run(&args);
    assert!(out.status.success(), "{:?}", text(&out));
    let (images, maps) = cached(&sb);
    assert_eq!((images.len(), maps.len()), (5, 5));
    for (i, bytes) in before.iter().enumerate() {
        assert_eq!(&std::fs::read(&images[i]).unwrap(), bytes, "image {i}");
    }
    assert_eq!(std::fs::read(&maps[0]).unwrap(), map0);
    let out = sb.run(&["show", "resumed", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["split"], "attribution");
    assert_eq!(v["support"].as_array().unwrap().len(), 5);
}

#[test]
fn attribution_problems_fail_before_sampling() {
    let Some(sb) = sandbox() else { return };
    // asked of a generator without cross-attention outputs
    let (_, stderr) = text(&add(
        &sb,
        "x",
        &fixture("sd-tiny"),
        &["--split", "attribution"],
    ));
    assert!(
        stderr.contains("--split attribution") && stderr.contains("expose_attention.py"),
        "{stderr}"
    );
    // asked of user images
    let out = sb.run(&[
        "add",
        "x",
        "--images",
        fixture("images").to_str().unwrap(),
        "--encoder",
        "tiny-encoder",
        "--split",
        "attribution",
    ]);
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success() && stderr.contains("--images"),
        "{stderr}"
    );
    // a prompt whose class name is cut off at 77 tokens: no class tokens
    let gen = attention_generator(&sb, "good");
    let long = format!("{}{{}}", "a good picture ".repeat(30));
    let (_, stderr) = text(&add(&sb, "x", &gen, &["--prompt", &long]));
    assert!(stderr.contains("class tokens"), "{stderr}");
    // a manifest naming an output the graph does not have
    let gen = attention_generator(&sb, "bad-output");
    let manifest = gen.join("unet/manifest.toml");
    let text_of = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text_of.replace("/up_blocks.1/attentions.0", "/up_blocks.9/attentions.0"),
    )
    .unwrap();
    let (_, stderr) = text(&add(&sb, "x", &gen, &[]));
    assert!(
        stderr.contains("/up_blocks.9/attentions.0") && stderr.contains("expose_attention.py"),
        "{stderr}"
    );
    // a UNet graph that no longer matches its manifest's hash
    let gen = attention_generator(&sb, "bad-hash");
    std::fs::copy(
        fixture("sd-tiny/unet/model.onnx"),
        gen.join("unet/model.onnx"),
    )
    .unwrap();
    let (_, stderr) = text(&add(&sb, "x", &gen, &[]));
    assert!(
        stderr.contains("changed since the manifest was written")
            && stderr.contains("expose_attention.py"),
        "{stderr}"
    );
    assert_eq!(cached(&sb), (vec![], vec![]), "nothing was sampled");
}

#[test]
fn expose_attention_script_reproduces_the_fixture() {
    let python = installed_home().root().join("setup-venv/bin/python");
    if !require(&python, "the set-up's Python (with onnx)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // the script names the export folder in the manifest: call it sd-tiny
    let export = tmp.path().join("sd-tiny");
    copy_dir(&fixture("sd-tiny"), &export);
    std::fs::remove_dir_all(export.join("unet")).unwrap();
    copy_dir(
        &fixture("sd-tiny/variants/unet-attention"),
        &export.join("unet"),
    );
    let script = crate::harness::repo().join("scripts/expose_attention.py");
    let run_with = |extra: &[&str]| {
        std::process::Command::new(&python)
            .arg(&script)
            .arg(&export)
            .args(extra)
            .output()
            .unwrap()
    };
    let run = || run_with(&[]);
    // a hidden file in unet/ is not part of the bundle
    std::fs::write(export.join("unet/.DS_Store"), b"x").unwrap();
    let want = fixture("sd-tiny/variants/unet-attention-exposed");
    for pass in 0..3 {
        if pass == 2 {
            // narrowed to one layer, the other output is dropped; widened
            // again (the pass below), the files are the fixture's again
            let out = run_with(&["--pattern", "/down_blocks.0/"]);
            assert!(out.status.success(), "{:?}", text(&out));
            let manifest = std::fs::read_to_string(export.join("unet/manifest.toml")).unwrap();
            assert!(
                manifest.contains("/down_blocks.0/") && !manifest.contains("/up_blocks.1/"),
                "{manifest}"
            );
        }
        let out = run();
        assert!(out.status.success(), "pass {pass}: {:?}", text(&out));
        for name in ["model.onnx", "manifest.toml", "config.json"] {
            assert_eq!(
                std::fs::read(export.join("unet").join(name)).unwrap(),
                std::fs::read(want.join(name)).unwrap(),
                "pass {pass}: {name}"
            );
        }
    }
    // an export without cross-attention: a clear error, exit 2
    let plain = tmp.path().join("plain");
    copy_dir(&fixture("sd-tiny"), &plain);
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&plain)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/attn2/"), "{stderr}");
}
