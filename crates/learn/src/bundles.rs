//! Installed model bundles, as front-ends list and check them, and one
//! image through an encoder (the patch grid it gives).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use ovdiff_core::Home;
use ovdiff_models::features::{preprocess, Encoder};
use ovdiff_models::runtime::manifest::{Manifest, Role, MANIFEST_FILE};
use ovdiff_models::runtime::{Bundle, Runtime, VerifyMode};

use ovdiff_store::bank::{EncoderInfo, DTYPE_F16};

use crate::{Error, Result};

/// The bundle folders under `<home>/models` (those holding a manifest),
/// sorted; none when the folder does not exist.
pub fn installed(home: &Home) -> Result<Vec<PathBuf>> {
    let dir = home.models_dir();
    let mut out: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join(MANIFEST_FILE).is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    out.sort();
    Ok(out)
}

/// The installed encoder bundles (see [`installed`]) as the records a bank
/// keeps for them — fingerprint (from the manifest and its recorded hashes;
/// no file is hashed), manifest name, feature dimension — against which the
/// encoder records of untrusted files are checked
/// ([`ovdiff_store::ovbank::check_encoder_record`]). Bundles whose manifest
/// cannot be read, and bundles of other roles, are left out.
pub fn installed_encoders(home: &Home) -> Vec<EncoderInfo> {
    installed(home)
        .unwrap_or_default()
        .iter()
        .filter_map(|dir| Bundle::open(dir, VerifyMode::Off, &home.cache_dir()).ok())
        .filter(|b| b.manifest().role == Role::FeatureEncoder)
        .filter_map(|b| {
            let spec = b.manifest().encoder.as_ref()?;
            Some(EncoderInfo {
                fingerprint: b.fingerprint().to_string(),
                name: b.name().to_string(),
                dim: spec.feature_dim,
                dtype: DTYPE_F16.into(),
            })
        })
        .collect()
}

/// Bytes in the files directly in `dir`.
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The folder name of a bundle path.
fn folder_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An installed bundle, from its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleRow {
    /// The folder name.
    pub name: String,
    /// The folder.
    pub path: PathBuf,
    /// Its role (`feature-encoder`, …); `None` when the manifest is broken.
    pub role: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// The weights' licence.
    pub licence: Option<String>,
    /// Bytes in the folder's files.
    pub size_bytes: u64,
    /// Why its manifest cannot be read.
    pub error: Option<String>,
}

/// Every installed bundle (see [`installed`]), a broken manifest included
/// with its error.
pub fn list(home: &Home) -> Result<Vec<BundleRow>> {
    Ok(installed(home)?
        .into_iter()
        .map(|path| {
            let name = folder_name(&path);
            let size_bytes = dir_size(&path);
            match Manifest::load(&path) {
                Ok(m) => BundleRow {
                    name,
                    role: Some(m.role.to_string()),
                    version: Some(m.version),
                    licence: Some(m.provenance.licence),
                    size_bytes,
                    path,
                    error: None,
                },
                Err(e) => BundleRow {
                    name,
                    role: None,
                    version: None,
                    licence: None,
                    size_bytes,
                    path,
                    error: Some(e.report()),
                },
            }
        })
        .collect())
}

/// The outcome of checking one bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRow {
    /// The folder name.
    pub name: String,
    /// The folder.
    pub path: PathBuf,
    /// Every check passed.
    pub ok: bool,
    /// Its role.
    pub role: Option<String>,
    /// Its fingerprint.
    pub fingerprint: Option<String>,
    /// Files whose sha256 was checked.
    pub files_verified: usize,
    /// For an encoder, what a forward pass on a grey image gave.
    pub forward_pass: Option<String>,
    /// The first check that failed.
    pub error: Option<String>,
}

/// The bundles to check: the one named (a name or a folder), else every
/// installed bundle; an error when there is none.
pub fn check_targets(home: &Home, name: Option<&str>) -> Result<Vec<PathBuf>> {
    let targets = match name {
        Some(n) => vec![home.bundle_path(n)],
        None => installed(home)?,
    };
    if targets.is_empty() {
        return Err(Error::Invalid(format!(
            "no model bundles in {}; run `scripts/setup` to install the default encoder",
            home.models_dir().display()
        )));
    }
    Ok(targets)
}

/// Check each bundle: its manifest, every file's sha256 (in full, unless
/// the runtime skips hash checks), its graph signature, and for encoders
/// one forward pass on a grey image.
pub fn check(runtime: &Runtime, targets: &[PathBuf]) -> Vec<CheckRow> {
    let verify = if runtime.options().verify == VerifyMode::Off {
        VerifyMode::Off
    } else {
        VerifyMode::Full
    };
    let mut rows = Vec::new();
    for path in targets {
        let mut row = CheckRow {
            name: folder_name(path),
            path: path.clone(),
            ok: false,
            role: None,
            fingerprint: None,
            files_verified: 0,
            forward_pass: None,
            error: None,
        };
        let result = (|| -> Result<()> {
            let bundle = Bundle::open(path, verify, &runtime.home().cache_dir())?;
            row.role = Some(bundle.manifest().role.to_string());
            row.fingerprint = Some(bundle.fingerprint().to_string());
            row.files_verified = if verify == VerifyMode::Off {
                0
            } else {
                bundle.manifest().files.len()
            };
            if bundle.manifest().role == Role::FeatureEncoder {
                let mut enc = Encoder::load(runtime, bundle)?;
                let side = enc.patch_size() * 8;
                let grey = image::RgbImage::from_pixel(side, side, image::Rgb([128, 128, 128]));
                let out = enc.encode_sized(&grey)?;
                row.forward_pass = Some(format!(
                    "{side}×{side} → {}×{} patches × {} dims{}",
                    out.grid.w,
                    out.grid.h,
                    out.grid.dim(),
                    out.saliency
                        .as_ref()
                        .map(|s| format!(", saliency {}×{}", s.ncols(), s.nrows()))
                        .unwrap_or_default()
                ));
            } else if bundle.manifest().graph.is_some() {
                runtime.session(&bundle)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => row.ok = true,
            Err(e) => row.error = Some(e.report()),
        }
        rows.push(row);
    }
    rows
}

/// One image through an encoder: the patch grid it gives. Every size is
/// `[width, height]` (columns, then rows), as the text output's `W×H`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncodeReport {
    /// The image.
    pub image: PathBuf,
    /// The encoder bundle's name.
    pub encoder: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The size the image was resized to, `[width, height]`.
    pub input_size: [u32; 2],
    /// The patch grid, `[width, height]` in patches.
    pub grid: [usize; 2],
    /// Feature dimension.
    pub dim: usize,
    /// The saliency map's `[width, height]`, when the encoder has one.
    pub saliency: Option<[usize; 2]>,
    /// Mean cosine between horizontally adjacent patches: high for a real
    /// encoder on a natural image, near zero for random features.
    pub mean_neighbour_cosine: f32,
    /// Time of the forward pass, in milliseconds.
    pub encode_ms: f64,
}

/// Encode `image` with the bundle `encoder` (a name under `<home>/models`
/// or a folder) and describe the patch grid.
pub fn encode_image(runtime: &Runtime, encoder: &str, image: &Path) -> Result<EncodeReport> {
    let bundle = runtime.open_bundle(&runtime.home().bundle_path(encoder))?;
    let mut enc = Encoder::load(runtime, bundle)?;
    let img = preprocess::load_rgb(image)?;
    let t = Instant::now();
    let out = enc.encode_image(&img)?;
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let g = &out.grid;
    let mut sum = 0.0f32;
    let mut n = 0usize;
    for y in 0..g.h {
        for x in 1..g.w {
            let a = g.features.row(y * g.w + x - 1);
            let b = g.features.row(y * g.w + x);
            sum += a.dot(&b);
            n += 1;
        }
    }
    Ok(EncodeReport {
        image: image.to_path_buf(),
        encoder: enc.bundle().name().to_string(),
        fingerprint: enc.bundle().fingerprint().to_string(),
        input_size: [out.input_size.0, out.input_size.1],
        grid: [g.w, g.h],
        dim: g.dim(),
        saliency: out.saliency.as_ref().map(|s| [s.ncols(), s.nrows()]),
        mean_neighbour_cosine: if n > 0 { sum / n as f32 } else { 0.0 },
        encode_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_are_folders_with_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        assert!(installed(&home).unwrap().is_empty(), "no models folder");
        let err = check_targets(&home, None).unwrap_err().to_string();
        assert!(err.contains("run `scripts/setup`"), "{err}");
        std::fs::create_dir_all(home.models_dir().join("b-broken")).unwrap();
        std::fs::write(
            home.models_dir().join("b-broken").join(MANIFEST_FILE),
            "x = ",
        )
        .unwrap();
        std::fs::create_dir_all(home.models_dir().join("a-empty")).unwrap();
        let rows = list(&home).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "b-broken");
        assert!(rows[0].role.is_none() && rows[0].error.is_some());
        assert_eq!(
            check_targets(&home, Some("elsewhere")).unwrap(),
            [home.models_dir().join("elsewhere")]
        );
    }
}
