//! Real-model tests: the installed `dinov2-s14` bundle on real images (skipped off CI when missing, failed on CI).

use ovdiff_learn::split::split_by_saliency;
use ovdiff_models::features::{preprocess, Encoder};
use ovdiff_models::runtime::{Runtime, RuntimeOptions};

use crate::harness::{installed_home, require};

fn dinov2() -> Option<Encoder> {
    let home = installed_home();
    let dir = home.models_dir().join("dinov2-s14");
    if !require(&dir.join("manifest.toml"), "the dinov2-s14 bundle")
        || !require(&home.lib_dir().join("libonnxruntime.so"), "ONNX Runtime")
    {
        return None;
    }
    let runtime = Runtime::init(&home, RuntimeOptions::default()).unwrap();
    let bundle = runtime.open_bundle(&dir).unwrap();
    Some(Encoder::load(&runtime, bundle).unwrap())
}

fn mean_cosine(f: &ndarray::Array2<f32>, a: &[usize], b: &[usize]) -> f32 {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for &i in a {
        for &j in b {
            if i != j {
                sum += f64::from(f.row(i).dot(&f.row(j)));
                n += 1;
            }
        }
    }
    (sum / n.max(1) as f64) as f32
}

/// On chelsea (a cat), patch tokens inside the cat are much more alike than
/// cat and background tokens: true of a trained DINO, false of random weights
/// (where tokens follow pixel statistics, not objects).
#[test]
fn dinov2_groups_the_cat_in_chelsea() {
    let Some(mut enc) = dinov2() else { return };
    let path = installed_home()
        .samples_dir()
        .join("support/cat/chelsea.png");
    if !require(&path, "the sample kit") {
        return;
    }
    let img = preprocess::load_rgb(&path).unwrap();
    let out = enc.encode_image(&img).unwrap();
    let g = &out.grid;
    assert_eq!(
        (out.input_size, g.h, g.w, g.dim()),
        ((672, 448), 32, 48, 384)
    );
    assert!(g.features.iter().all(|v| v.is_finite()));
    for row in g.features.rows() {
        let norm = row.dot(&row).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "row norm {norm}");
    }
    let sal = out
        .saliency
        .as_ref()
        .expect("dinov2-s14 has a saliency head");
    assert_eq!(sal.dim(), (448, 672));
    let split = split_by_saliency(sal.view(), g.h, g.w);
    assert!(!split.fallback);
    let fg: Vec<usize> = (0..g.len()).filter(|&i| split.fg[i]).collect();
    let bg: Vec<usize> = (0..g.len()).filter(|&i| split.bg[i]).collect();
    assert!(
        fg.len() > 200 && bg.len() > 50,
        "fg {} bg {}",
        fg.len(),
        bg.len()
    );
    let fg_fg = mean_cosine(&g.features, &fg, &fg);
    let fg_bg = mean_cosine(&g.features, &fg, &bg);
    eprintln!("chelsea: fg-fg cosine {fg_fg:.3}, fg-bg cosine {fg_bg:.3}");
    assert!(fg_fg > 0.5, "cat tokens should agree: {fg_fg}");
    assert!(
        fg_fg - fg_bg > 0.3,
        "cat vs background should differ: {fg_fg} vs {fg_bg}"
    );
}
