//! The CLIP folder, checked before any graph is loaded: its layout, `preprocessor_config.json`, the tokenizer, and the image as the image tower takes it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::RgbImage;
use serde::Deserialize;

use super::{
    CLIP_MEAN, CLIP_STD, DEFAULT_IMAGE_SIZE, EXPORT_HINT, JOINT_MODEL, PREPROCESSOR_CONFIG,
    TEXT_MODEL, VISION_MODEL,
};
use crate::features::preprocess;
use crate::fingerprint::fingerprint_dir;
use crate::tokenizer::ClipTokenizer;
use crate::{Error, Result};

/// How the bundle's graphs are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One `model.onnx` with both towers (what optimum writes).
    Joint(PathBuf),
    /// Two graphs: the text tower and the image tower.
    Split {
        /// `text_model.onnx`.
        text: PathBuf,
        /// `vision_model.onnx`.
        vision: PathBuf,
    },
}

/// `preprocessor_config.json` (a transformers `CLIPImageProcessor`): the
/// fields read here.
#[derive(Debug, Clone, Deserialize)]
struct PreprocessorConfig {
    #[serde(default)]
    crop_size: Option<SizeField>,
    #[serde(default)]
    size: Option<SizeField>,
    #[serde(default)]
    image_mean: Option<Vec<f32>>,
    #[serde(default)]
    image_std: Option<Vec<f32>>,
}

/// `224`, `{"height": 224, "width": 224}` or `{"shortest_edge": 224}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeField {
    Int(u32),
    Map {
        #[serde(default)]
        height: Option<u32>,
        #[serde(default)]
        width: Option<u32>,
        #[serde(default)]
        shortest_edge: Option<u32>,
    },
}

impl SizeField {
    fn side(&self) -> Option<u32> {
        match self {
            SizeField::Int(n) => Some(*n),
            SizeField::Map {
                height,
                width,
                shortest_edge,
            } => match (height, width) {
                (Some(h), Some(w)) if h == w => Some(*h),
                (Some(_), Some(_)) => None,
                _ => *shortest_edge,
            },
        }
    }
}

/// A checked CLIP folder: files, preprocessing and tokenizer, before any
/// graph is loaded.
#[derive(Debug)]
pub struct ClipBundle {
    root: PathBuf,
    layout: Layout,
    tokenizer: ClipTokenizer,
    image_size: u32,
    mean: [f32; 3],
    std: [f32; 3],
    fingerprint: OnceLock<String>,
}

impl ClipBundle {
    /// Check the folder (see the module docs): the graphs of one of the
    /// layouts are there, `preprocessor_config.json` parses into a square
    /// size and three-channel mean and std, the tokenizer loads. Reads
    /// only small files.
    pub fn open(dir: &Path) -> Result<ClipBundle> {
        let fail = |problem: String| Error::bundle(dir, problem);
        if !dir.is_dir() {
            return Err(fail(format!(
                "the CLIP bundle folder does not exist; {EXPORT_HINT}"
            )));
        }
        let layout = find_layout(dir)?;
        let pre_path = dir.join(PREPROCESSOR_CONFIG);
        if !pre_path.is_file() {
            let extra = if dir.join("manifest.toml").is_file() {
                "; this folder has a manifest.toml: it looks like an encoder bundle, not CLIP"
            } else {
                ""
            };
            return Err(fail(format!(
                "`{PREPROCESSOR_CONFIG}` is missing (it gives the image size, mean and \
                 std){extra}; {EXPORT_HINT}"
            )));
        }
        let bytes = std::fs::read(&pre_path).map_err(|e| Error::io("reading", &pre_path, e))?;
        let pre: PreprocessorConfig = serde_json::from_slice(&bytes).map_err(|e| {
            fail(format!(
                "`{PREPROCESSOR_CONFIG}` is not a valid config: {e}"
            ))
        })?;
        let image_size = match pre.crop_size.as_ref().or(pre.size.as_ref()) {
            None => DEFAULT_IMAGE_SIZE,
            Some(s) => s.side().filter(|&n| n > 0).ok_or_else(|| {
                fail(format!(
                    "`{PREPROCESSOR_CONFIG}` has a crop_size/size that is not one square side \
                     (e.g. 224 or {{\"height\": 224, \"width\": 224}})"
                ))
            })?,
        };
        let three = |v: Option<Vec<f32>>, what: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v {
                None => Ok(default),
                Some(v) => <[f32; 3]>::try_from(v.as_slice())
                    .ok()
                    .filter(|a| a.iter().all(|x| x.is_finite()))
                    .ok_or_else(|| {
                        fail(format!(
                            "`{PREPROCESSOR_CONFIG}` has {what} {v:?}; three finite numbers \
                             (R, G, B) are needed"
                        ))
                    }),
            }
        };
        let mean = three(pre.image_mean, "image_mean", CLIP_MEAN)?;
        let std = three(pre.image_std, "image_std", CLIP_STD)?;
        if std.iter().any(|s| *s <= 0.0) {
            return Err(fail(format!(
                "`{PREPROCESSOR_CONFIG}` has image_std {std:?}; every value must be positive"
            )));
        }
        let tokenizer = ClipTokenizer::from_dir(dir).map_err(|e| {
            fail(format!(
                "its tokenizer does not load ({}); {EXPORT_HINT}",
                e.report()
            ))
        })?;
        Ok(ClipBundle {
            root: dir.to_path_buf(),
            layout,
            tokenizer,
            image_size,
            mean,
            std,
            fingerprint: OnceLock::new(),
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Which graphs it has.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The square side images are resized to.
    pub fn image_size(&self) -> u32 {
        self.image_size
    }

    /// The normalisation mean and std.
    pub fn normalisation(&self) -> ([f32; 3], [f32; 3]) {
        (self.mean, self.std)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// sha256 over every file's relative path and sha256 (as for a
    /// diffusion export); hashes every byte once, then is cached.
    pub fn fingerprint(&self) -> Result<&str> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f);
        }
        let f = fingerprint_dir(&self.root)?;
        Ok(self.fingerprint.get_or_init(|| f))
    }

    /// The image as the image tower takes it: `[1, 3, S, S]`, resized
    /// (squashed) to the square side and normalised.
    pub fn pixels(&self, img: &RgbImage) -> Vec<f32> {
        let s = self.image_size;
        let small = preprocess::resize(img, s, s);
        let n = (s * s) as usize;
        let mut out = vec![0f32; 3 * n];
        for (i, p) in small.pixels().enumerate() {
            for c in 0..3 {
                out[c * n + i] = (f32::from(p.0[c]) / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

fn find_layout(dir: &Path) -> Result<Layout> {
    let joint = dir.join(JOINT_MODEL);
    if joint.is_file() {
        return Ok(Layout::Joint(joint));
    }
    for sub in [dir.to_path_buf(), dir.join("onnx")] {
        let (text, vision) = (sub.join(TEXT_MODEL), sub.join(VISION_MODEL));
        match (text.is_file(), vision.is_file()) {
            (true, true) => return Ok(Layout::Split { text, vision }),
            (true, false) | (false, true) => {
                let missing = if text.is_file() { &vision } else { &text };
                return Err(Error::bundle(
                    dir,
                    format!(
                        "`{}` is missing: the split layout needs both `{TEXT_MODEL}` and \
                         `{VISION_MODEL}`; {EXPORT_HINT}",
                        missing.strip_prefix(dir).unwrap_or(missing).display()
                    ),
                ));
            }
            (false, false) => {}
        }
    }
    let extra = if dir.join("manifest.toml").is_file() {
        " (this folder has a manifest.toml: it looks like an encoder bundle, not CLIP)"
    } else if dir.join("model.safetensors").is_file() || dir.join("pytorch_model.bin").is_file() {
        " (this looks like a PyTorch checkpoint; it has to be exported to ONNX)"
    } else {
        ""
    };
    Err(Error::bundle(
        dir,
        format!(
            "`{JOINT_MODEL}` is missing (nor are there `{TEXT_MODEL}` and `{VISION_MODEL}`){extra}; \
             {EXPORT_HINT}"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::tests::{copy_fixture, fixture};

    fn open_err(dir: &Path) -> String {
        ClipBundle::open(dir).unwrap_err().report()
    }

    #[test]
    fn the_fixture_opens_in_the_optimum_layout() {
        let b = ClipBundle::open(&fixture()).unwrap();
        assert_eq!(b.layout(), &Layout::Joint(fixture().join("model.onnx")));
        assert_eq!(b.image_size(), 32);
        assert_eq!(b.normalisation(), (CLIP_MEAN, CLIP_STD));
        assert_eq!(b.tokenizer().tokenize("a red and a green").len(), 5);
        assert_eq!(b.fingerprint().unwrap().len(), 64);
    }

    #[test]
    fn missing_files_are_named_before_anything_runs() {
        let tmp = copy_fixture();
        std::fs::remove_file(tmp.path().join("model.onnx")).unwrap();
        let err = open_err(tmp.path());
        assert!(
            err.contains("`model.onnx` is missing") && err.contains("optimum-cli export onnx"),
            "{err}"
        );
        // half a split layout names the other half
        std::fs::copy(
            fixture().join("variants/text_model.onnx"),
            tmp.path().join("text_model.onnx"),
        )
        .unwrap();
        let err = open_err(tmp.path());
        assert!(err.contains("`vision_model.onnx` is missing"), "{err}");

        let tmp = copy_fixture();
        std::fs::remove_file(tmp.path().join("preprocessor_config.json")).unwrap();
        let err = open_err(tmp.path());
        assert!(
            err.contains("`preprocessor_config.json` is missing"),
            "{err}"
        );

        let tmp = copy_fixture();
        std::fs::remove_file(tmp.path().join("merges.txt")).unwrap();
        let err = open_err(tmp.path());
        assert!(
            err.contains("merges.txt") && err.contains("tokenizer"),
            "{err}"
        );

        let tmp = copy_fixture();
        std::fs::write(
            tmp.path().join("preprocessor_config.json"),
            r#"{"crop_size": 32, "image_mean": [0.5, 0.5]}"#,
        )
        .unwrap();
        let err = open_err(tmp.path());
        assert!(err.contains("image_mean") && err.contains("three"), "{err}");

        let err = open_err(&tmp.path().join("nope"));
        assert!(err.contains("does not exist"), "{err}");
    }
}
