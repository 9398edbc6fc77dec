//! The sample images, medians and process counters every section uses.

use image::RgbImage;
use ovdiff_core::Home;
use ovdiff_learn::support_set::{self, SupportImage};
use ovdiff_models::features::preprocess;
use std::path::PathBuf;

pub(crate) fn sample_images(home: &Home) -> Vec<RgbImage> {
    let root = home.samples_dir().join("support");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("sample kit missing: run scripts/setup")
        .flatten()
        .flat_map(|d| support_set::list_images(&d.path()).unwrap_or_default())
        .collect();
    files.sort();
    let base: Vec<RgbImage> = files
        .iter()
        .map(|p| preprocess::load_rgb(p).unwrap())
        .collect();
    let mut out = Vec::new();
    let mut k = 0;
    while out.len() < 32 {
        let img = &base[k % base.len()];
        let variant = k / base.len();
        let v = match variant {
            0 => img.clone(),
            1 => image::imageops::flip_horizontal(img),
            _ => {
                let (w, h) = img.dimensions();
                let c = 0.8 - 0.05 * variant as f32;
                let (cw, ch) = ((w as f32 * c) as u32, (h as f32 * c) as u32);
                image::imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image()
            }
        };
        out.push(v);
        k += 1;
    }
    out
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU seconds (user + system) of this process's finished children.
pub(crate) fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields 16 and 17 of stat (cutime, cstime) are 14 and 15 after the ')'
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(13) + ticks(14)) / 100.0
}

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`).
pub(crate) fn proc_status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Support images without attribution maps (user folders).
pub(crate) fn support_images(files: &[std::path::PathBuf]) -> Vec<SupportImage> {
    files.iter().cloned().map(SupportImage::from).collect()
}
