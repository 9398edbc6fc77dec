//! Text-to-image diffusion for support sets: schedulers, the denoising loop and the ONNX UNet.
//!
//! OVDiff samples each class's support set with Stable Diffusion
//! (`sample_support_set.py` in `karazijal/sdov`: SD 1.5,
//! `DPMSolverMultistepScheduler`, 30 steps, guidance 8, the prompt "A good
//! picture of a {class}" against a fixed negative prompt). This module holds
//! the numeric core of that:
//!
//! * [`scheduler`]: `scheduler_config.json`, the noise table and the
//!   samplers (DDIM, DPM-Solver++ 2M, Euler, one-step turbo);
//! * [`denoise`]: the [`Denoiser`](denoise::Denoiser) trait, the sampling
//!   loop with classifier-free guidance, seeded noise, and the ONNX UNet;
//! * [`pipeline_dir`]: an `optimum-cli export onnx` folder, checked and
//!   fingerprinted before sampling;
//! * [`text`]: the ONNX text encoder (`input_ids` -> `last_hidden_state`);
//! * [`attribution`]: OVDiff's attribution maps from the UNet's
//!   cross-attention, for the foreground/background split;
//! * [`generate`]: prompt to cached support images (and maps);
//! * [`timing`]: where sampling time goes, in named parts.

#![warn(missing_docs)]

pub mod attribution;
pub mod denoise;
pub mod generate;
pub mod pipeline_dir;
pub mod scheduler;
pub mod text;
pub mod timing;

use ovdiff_core::{Error, Result};
