//! The feature encoder: an ONNX ViT that turns an image into an L2-normalised patch grid (and a saliency map).

use image::RgbImage;
use ndarray::{Array2, Axis};
use ort::value::TensorRef;

use super::preprocess;
use crate::runtime::manifest::{EncoderSpec, Preprocess, Role};
use crate::runtime::{Bundle, ModelSession, Runtime};
use crate::{Error, Result};
use ovdiff_core::grid::{l2_normalize_rows, PatchGrid};

/// What one forward pass yields.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Patch tokens, L2-normalised.
    pub grid: PatchGrid,
    /// The saliency map `[H', W']`, when the bundle has one.
    pub saliency: Option<Array2<f32>>,
    /// The size (width, height) the image was encoded at.
    pub input_size: (u32, u32),
}

/// A loaded feature encoder bundle.
#[derive(Debug)]
pub struct Encoder {
    session: ModelSession,
    bundle: Bundle,
    pre: Preprocess,
    spec: EncoderSpec,
    input: String,
}

impl Encoder {
    /// Load a `feature-encoder` bundle and check it.
    pub fn load(runtime: &Runtime, bundle: Bundle) -> Result<Encoder> {
        let m = bundle.manifest();
        if m.role != Role::FeatureEncoder {
            return Err(Error::bundle(
                bundle.dir(),
                format!("role is {}, but a feature-encoder bundle is needed", m.role),
            ));
        }
        let (Some(pre), Some(spec)) = (m.preprocess.clone(), m.encoder.clone()) else {
            return Err(Error::bundle(
                bundle.dir(),
                "missing [preprocess] or [encoder]",
            ));
        };
        if m.inputs.len() != 1 {
            return Err(Error::bundle(
                bundle.dir(),
                format!(
                    "a feature encoder takes one image input, the manifest lists {}",
                    m.inputs.len()
                ),
            ));
        }
        let input = m.inputs[0].name.clone();
        let session = runtime.session(&bundle)?;
        Ok(Encoder {
            session,
            bundle,
            pre,
            spec,
            input,
        })
    }

    /// The bundle this encoder came from.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Preprocessing from the manifest.
    pub fn preprocess(&self) -> &Preprocess {
        &self.pre
    }

    /// Patch size in pixels.
    pub fn patch_size(&self) -> u32 {
        self.spec.patch_size
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.spec.feature_dim as usize
    }

    /// Whether the bundle yields a saliency map.
    pub fn has_saliency(&self) -> bool {
        self.spec.saliency_output.is_some()
    }

    /// Resize `img` as the manifest says, then encode it.
    pub fn encode_image(&mut self, img: &RgbImage) -> Result<Encoded> {
        let (w, h) = preprocess::target_size(&self.pre, img.width(), img.height());
        let resized = preprocess::resize(img, w, h);
        self.encode_sized(&resized)
    }

    /// Encode an image whose sides are already multiples of the patch size.
    pub fn encode_sized(&mut self, img: &RgbImage) -> Result<Encoded> {
        let p = self.spec.patch_size;
        let (w, h) = img.dimensions();
        if w % p != 0 || h % p != 0 || w == 0 || h == 0 {
            return Err(Error::DimensionMismatch {
                what: "encoder input size".into(),
                expected: format!("multiples of the patch size {p}"),
                found: format!("{w}×{h}"),
            });
        }
        let tensor = preprocess::to_tensor(img, &self.pre);
        let (gh, gw) = ((h / p) as usize, (w / p) as usize);
        let name = self.bundle.name().to_string();
        let dir = self.bundle.dir().to_path_buf();
        let input = TensorRef::from_array_view(&tensor)
            .map_err(|e| Error::ort(format!("building the input tensor for {name}"), e))?;
        let outputs = self
            .session
            .session_mut()
            .run(ort::inputs![self.input.as_str() => input])
            .map_err(|e| Error::ort(format!("running encoder {name} at {w}×{h}"), e))?;
        let tokens = outputs
            .get(&self.spec.tokens_output)
            .ok_or_else(|| Error::bundle(&dir, "tokens output missing at run time"))?
            .try_extract_array::<f32>()
            .map_err(|e| Error::ort(format!("reading the tokens of {name}"), e))?;
        let skip = self.spec.skip_tokens as usize;
        let dim = self.spec.feature_dim as usize;
        let expected = [1, skip + gh * gw, dim];
        if tokens.shape() != expected {
            return Err(Error::DimensionMismatch {
                what: format!("encoder {name} output `{}`", self.spec.tokens_output),
                expected: format!("{expected:?}"),
                found: format!("{:?}", tokens.shape()),
            });
        }
        let mut features: Array2<f32> = tokens
            .index_axis(Axis(0), 0)
            .slice(ndarray::s![skip.., ..])
            .to_owned()
            .into_dimensionality()
            .expect("invariant: a 3-d array minus one axis is 2-d");
        if features.iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "encoder {name} produced non-finite features at {w}×{h}"
            )));
        }
        l2_normalize_rows(&mut features);
        let saliency = match &self.spec.saliency_output {
            None => None,
            Some(out) => {
                let s = outputs
                    .get(out)
                    .ok_or_else(|| Error::bundle(&dir, "saliency output missing at run time"))?
                    .try_extract_array::<f32>()
                    .map_err(|e| Error::ort(format!("reading the saliency of {name}"), e))?;
                let shape = s.shape().to_vec();
                if shape.len() != 4 || shape[0] != 1 || shape[1] != 1 {
                    return Err(Error::DimensionMismatch {
                        what: format!("encoder {name} output `{out}`"),
                        expected: "[1, 1, H, W]".into(),
                        found: format!("{shape:?}"),
                    });
                }
                let map = s
                    .index_axis(Axis(0), 0)
                    .index_axis(Axis(0), 0)
                    .to_owned()
                    .into_dimensionality()
                    .expect("invariant: 4-d minus two axes is 2-d");
                Some(map)
            }
        };
        Ok(Encoded {
            grid: PatchGrid {
                h: gh,
                w: gw,
                features,
            },
            saliency,
            input_size: (w, h),
        })
    }
}
