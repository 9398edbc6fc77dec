//! Checked ONNX sessions: one builder for every model, and a signature check against the manifest.

use std::path::{Path, PathBuf};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use super::manifest::{Dim, Dtype, TensorSpec};
use super::{Bundle, Provider, Runtime};
use crate::{Error, Result};

/// An ONNX Runtime session whose inputs and outputs matched its manifest.
pub struct ModelSession {
    session: Session,
    path: PathBuf,
}

impl std::fmt::Debug for ModelSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSession")
            .field("path", &self.path)
            .finish()
    }
}

impl ModelSession {
    /// Build the session for `bundle`'s graph and check its signature.
    pub fn new(runtime: &Runtime, bundle: &Bundle) -> Result<ModelSession> {
        ModelSession::for_bundle(runtime, bundle, Spinning::On)
    }

    /// [`new`](Self::new) for a bundle whose graph runs in turns with
    /// others (see [`from_graph_in_turns`](Self::from_graph_in_turns)).
    pub fn new_in_turns(runtime: &Runtime, bundle: &Bundle) -> Result<ModelSession> {
        ModelSession::for_bundle(runtime, bundle, Spinning::Off)
    }

    fn for_bundle(runtime: &Runtime, bundle: &Bundle, spinning: Spinning) -> Result<ModelSession> {
        let manifest = bundle.manifest();
        let path = manifest
            .graph_path(bundle.dir())
            .ok_or_else(|| Error::bundle(bundle.dir(), "bundle has no [graph] to load"))?;
        let session = build(runtime, &path, bundle.dir(), spinning)?;
        check_signature(&session, &path, &manifest.inputs, &manifest.outputs)?;
        Ok(ModelSession { session, path })
    }

    /// Build a session for a bare ONNX file that has no manifest (a graph
    /// inside an exported pipeline folder, say): the caller checks its
    /// inputs and outputs. `dir` is the folder named in errors.
    pub fn from_graph(runtime: &Runtime, path: &Path, dir: &Path) -> Result<ModelSession> {
        let session = build(runtime, path, dir, Spinning::On)?;
        Ok(ModelSession {
            session,
            path: path.to_path_buf(),
        })
    }

    /// [`from_graph`](Self::from_graph) for one of several graphs that run
    /// in turns, with work of the caller's in between (the text encoder,
    /// UNet and VAE of a diffusion export): its intra-op threads sleep when
    /// a run ends instead of spinning. Each session has its own thread
    /// pool, and a pool left spinning after one graph's run takes the cores
    /// from the next graph and from the sampling loop: on the tiny SD
    /// export, sampling 16 images at 512 px took 202–218 ms with spinning
    /// and 167–168 ms without (VAE decode 56–69 ms → 31 ms); the real
    /// encoder's 32 forwards in `add` were the same either way.
    pub fn from_graph_in_turns(runtime: &Runtime, path: &Path, dir: &Path) -> Result<ModelSession> {
        let session = build(runtime, path, dir, Spinning::Off)?;
        Ok(ModelSession {
            session,
            path: path.to_path_buf(),
        })
    }

    /// The graph file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The graph's inputs as the session reports them (name, dtype, shape).
    pub fn inputs(&self) -> Vec<Signature> {
        signatures(self.session.inputs())
    }

    /// The graph's outputs as the session reports them.
    pub fn outputs(&self) -> Vec<Signature> {
        signatures(self.session.outputs())
    }

    /// The names of an input's symbolic dimensions (`""` for a fixed or
    /// unnamed one), empty when there is no such input. Two inputs whose
    /// dimensions share a name must get the same size at run time.
    pub fn input_symbols(&self, name: &str) -> Vec<String> {
        self.session
            .inputs()
            .iter()
            .find(|o| o.name() == name)
            .and_then(|o| match o.dtype() {
                ValueType::Tensor {
                    dimension_symbols, ..
                } => Some(dimension_symbols.to_vec()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The underlying session, for running it.
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

/// Whether a session's intra-op threads spin after a run (ONNX Runtime's
/// default) or go to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spinning {
    On,
    Off,
}

/// A session for `path` with the runtime's options (threads, provider).
fn build(runtime: &Runtime, path: &Path, dir: &Path, spinning: Spinning) -> Result<Session> {
    let opts = runtime.options();
    let ctx = |what: &str| format!("{what} for {}", path.display());
    let mut builder = Session::builder(runtime.environment())
        .map_err(|e| Error::ort(ctx("creating a session builder"), e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| {
            Error::ort(
                ctx("setting the optimisation level"),
                ort::Error::<()>::from(e),
            )
        })?
        .with_intra_threads(opts.threads.max(1))
        .map_err(|e| Error::ort(ctx("setting intra-op threads"), ort::Error::<()>::from(e)))?
        .with_intra_op_spinning(spinning == Spinning::On)
        .map_err(|e| Error::ort(ctx("setting intra-op spinning"), ort::Error::<()>::from(e)))?;
    if opts.provider == Provider::Cuda {
        builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| {
                Error::ort(
                    ctx("registering the CUDA provider"),
                    ort::Error::<()>::from(e),
                )
            })?;
    }
    builder.commit_from_file(path).map_err(|e| {
        Error::bundle(
            dir,
            format!(
                "`{}` could not be loaded as an ONNX model ({e}); the file is damaged \
                 or not ONNX — re-run `scripts/setup` or rebuild the bundle",
                path.display()
            ),
        )
    })
}

fn dtype_of(t: TensorElementType) -> Option<Dtype> {
    match t {
        TensorElementType::Float32 => Some(Dtype::F32),
        TensorElementType::Float16 => Some(Dtype::F16),
        TensorElementType::Int64 => Some(Dtype::I64),
        TensorElementType::Int32 => Some(Dtype::I32),
        _ => None,
    }
}

/// One outlet as the session reports it: name, dtype, shape (-1 = dynamic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Tensor name.
    pub name: String,
    /// Element type, `None` when it is not one we use.
    pub dtype: Option<Dtype>,
    /// Dimensions, -1 for dynamic.
    pub shape: Vec<i64>,
}

fn signatures(outlets: &[ort::value::Outlet]) -> Vec<Signature> {
    outlets
        .iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => Signature {
                name: o.name().to_string(),
                dtype: dtype_of(*ty),
                shape: shape.to_vec(),
            },
            _ => Signature {
                name: o.name().to_string(),
                dtype: None,
                shape: vec![],
            },
        })
        .collect()
}

fn check_signature(
    session: &Session,
    path: &Path,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
) -> Result<()> {
    let real_in = signatures(session.inputs());
    let real_out = signatures(session.outputs());
    compare("input", inputs, &real_in, true).map_err(|problem| Error::SignatureMismatch {
        path: path.to_path_buf(),
        problem,
    })?;
    compare("output", outputs, &real_out, false).map_err(|problem| Error::SignatureMismatch {
        path: path.to_path_buf(),
        problem,
    })
}

/// Compare manifest specs with what the session reports. Every spec must
/// exist with the same dtype and rank; a fixed manifest dimension must equal
/// a fixed graph dimension. With `exhaustive`, the graph may have nothing
/// the manifest lacks (an input we would not feed).
pub fn compare(
    kind: &str,
    specs: &[TensorSpec],
    real: &[Signature],
    exhaustive: bool,
) -> std::result::Result<(), String> {
    let names = |v: &[Signature]| {
        v.iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for spec in specs {
        let Some(sig) = real.iter().find(|s| s.name == spec.name) else {
            return Err(format!(
                "the manifest names {kind} `{}` but the graph's {kind}s are: {}",
                spec.name,
                names(real)
            ));
        };
        if sig.dtype != Some(spec.dtype) {
            return Err(format!(
                "{kind} `{}` is {} in the graph but {} in the manifest",
                spec.name,
                sig.dtype
                    .map(|d| d.as_str())
                    .unwrap_or("an unsupported type"),
                spec.dtype.as_str()
            ));
        }
        if sig.shape.len() != spec.shape.len() {
            return Err(format!(
                "{kind} `{}` has rank {} in the graph but the manifest says {}",
                spec.name,
                sig.shape.len(),
                spec.describe()
            ));
        }
        for (i, (dim, real)) in spec.shape.iter().zip(&sig.shape).enumerate() {
            if let Dim::Fixed(n) = dim {
                if *real >= 0 && real != n {
                    return Err(format!(
                        "{kind} `{}` dimension {i} is {real} in the graph but {n} in the manifest",
                        spec.name
                    ));
                }
            }
        }
    }
    if exhaustive {
        if let Some(extra) = real
            .iter()
            .find(|s| !specs.iter().any(|p| p.name == s.name))
        {
            return Err(format!(
                "the graph has {kind} `{}` that the manifest does not declare",
                extra.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
        }
    }

    fn sig(name: &str, shape: Vec<i64>) -> Signature {
        Signature {
            name: name.into(),
            dtype: Some(Dtype::F32),
            shape,
        }
    }

    #[test]
    fn symbolic_matches_anything_fixed_must_agree() {
        let specs = [spec("t", vec![Dim::Symbolic("N".into()), Dim::Fixed(16)])];
        assert!(compare("output", &specs, &[sig("t", vec![-1, 16])], false).is_ok());
        assert!(compare("output", &specs, &[sig("t", vec![1, -1])], false).is_ok());
        let err = compare("output", &specs, &[sig("t", vec![-1, 32])], false).unwrap_err();
        assert!(err.contains("dimension 1 is 32"), "{err}");
    }

    #[test]
    fn missing_names_and_ranks_are_reported() {
        let specs = [spec("t", vec![Dim::Fixed(1)])];
        let err = compare("output", &specs, &[sig("u", vec![1])], false).unwrap_err();
        assert!(err.contains("`t`") && err.contains("u"), "{err}");
        let err = compare("output", &specs, &[sig("t", vec![1, 1])], false).unwrap_err();
        assert!(err.contains("rank 2"), "{err}");
        let err = compare(
            "input",
            &specs,
            &[sig("t", vec![1]), sig("x", vec![1])],
            true,
        )
        .unwrap_err();
        assert!(err.contains("`x`"), "{err}");
    }
}
