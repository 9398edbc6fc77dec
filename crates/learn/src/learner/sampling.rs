//! Support sets sampled by a diffusion generator: which export to use, the
//! sampling itself, and copies of the sampled images for the user.

use std::path::{Path, PathBuf};

use ovdiff_core::Home;
use ovdiff_diffusion::attribution;
use ovdiff_diffusion::generate::{Generator, Progress as GenProgress, SampleOptions};
use ovdiff_models::runtime::Runtime;
use ovdiff_store::bank::ClassSource;

use super::progress::{Progress, Stage};
use crate::support_set::SupportImage;
use crate::{Error, Result};

/// `<home>/config.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HomeConfig {
    /// The default diffusion export folder.
    generator: Option<PathBuf>,
}

/// The export folder to sample with: the one asked for, else `generator`
/// in `<home>/config.toml`; an error that says how to make one when there
/// is neither.
pub(crate) fn generator_dir(home: &Home, asked: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = asked {
        return Ok(p.to_path_buf());
    }
    let cfg_path = home.root().join("config.toml");
    let cfg: HomeConfig = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => toml::from_str(&t)
            .map_err(|e| Error::Invalid(format!("reading {}: {e}", cfg_path.display())))?,
        Err(_) => HomeConfig::default(),
    };
    cfg.generator.ok_or_else(|| {
        Error::Invalid(format!(
            "no support images and no generator: pass --images DIR, or a Stable Diffusion ONNX \
             export with --generator DIR. To make one (with the weights and Python's optimum): \
             `optimum-cli export onnx --model stabilityai/sd-turbo sd-turbo-onnx/`; then pass \
             --generator sd-turbo-onnx, or put `generator = \"/abs/path/sd-turbo-onnx\"` in {} \
             (see docs/generators.md)",
            cfg_path.display()
        ))
    })
}

/// Open the generator a class is sampled with (see [`generator_dir`]).
pub(crate) fn open_generator(
    runtime: &Runtime,
    home: &Home,
    asked: Option<&Path>,
) -> Result<Generator> {
    let dir = generator_dir(home, asked)?;
    Generator::open(runtime, &dir).map_err(|e| {
        Error::Invalid(format!(
            "opening generator {}: {}",
            dir.display(),
            e.report()
        ))
    })
}

/// Sample the support set of `class` (or find it in the cache under
/// `cache_root`); returns the images, with their attribution maps when the
/// generator gives them, and the class source. With `keep`, the images
/// (and maps) are also copied there, named as `--images KEEP` pairs them.
pub(crate) fn sample_support(
    generator: &mut Generator,
    class: &str,
    opts: &SampleOptions,
    cache_root: &Path,
    keep: Option<&Path>,
    progress: &dyn Progress,
) -> Result<(Vec<SupportImage>, ClassSource)> {
    progress.stage(Stage::Sample, class, opts.n as u64);
    let paths = generator.generate(class, opts, cache_root, &mut |p| match p {
        GenProgress::Cached { .. } => progress.advance(1),
        GenProgress::Step {
            step,
            steps,
            first,
            count,
        } => progress.message(&format!(
            "images {}..{}: step {step}/{steps}",
            first + 1,
            first + count
        )),
        GenProgress::Written { count, .. } => progress.advance(count as u64),
    });
    progress.finish();
    let with_maps = generator.has_attribution();
    let images: Vec<SupportImage> = paths?
        .into_iter()
        .map(|path| SupportImage {
            attribution: with_maps.then(|| attribution::map_path(&path)),
            path,
        })
        .collect();
    if let Some(keep) = keep {
        std::fs::create_dir_all(keep).map_err(|e| Error::io("creating", keep, e))?;
        for (i, image) in images.iter().enumerate() {
            // maps keep the name `add --images KEEP` pairs them by
            let kept = keep.join(format!("{class}-{i:03}.png"));
            let mut copies = vec![(&image.path, kept.clone())];
            if let Some(map) = &image.attribution {
                copies.push((map, attribution::map_path(&kept)));
            }
            for (from, to) in copies {
                std::fs::copy(from, &to).map_err(|e| Error::io("writing", &to, e))?;
            }
        }
    }
    let source = ClassSource::Generator {
        fingerprint: generator.fingerprint().to_string(),
        params: opts.params(class),
    };
    Ok((images, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_comes_from_the_argument_then_config_toml() {
        let home = tempfile::tempdir().unwrap();
        let home = Home::at(home.path());
        let asked = PathBuf::from("/somewhere/sd");
        assert_eq!(generator_dir(&home, Some(&asked)).unwrap(), asked);

        let err = generator_dir(&home, None).unwrap_err().to_string();
        assert!(
            err.contains("optimum-cli export onnx") && err.contains("config.toml"),
            "{err}"
        );

        std::fs::write(
            home.root().join("config.toml"),
            "generator = \"/abs/sd-turbo-onnx\"\n",
        )
        .unwrap();
        assert_eq!(
            generator_dir(&home, None).unwrap(),
            PathBuf::from("/abs/sd-turbo-onnx")
        );

        std::fs::write(home.root().join("config.toml"), "colour = 1\n").unwrap();
        let err = generator_dir(&home, None).unwrap_err().to_string();
        assert!(err.starts_with("reading "), "{err}");
    }
}
