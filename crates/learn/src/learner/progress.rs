//! How a [`Learner`](super::Learner) reports its progress: a callback trait, so
//! that a terminal, a Python caller or an HTTP service can each show it their way.

use std::path::Path;

/// The stages of adding a class, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Sampling the support set with the generator (only when the class has
    /// no support folder). Its units are images sampled or found in the
    /// cache.
    Sample,
    /// Encoding, splitting and pooling the support images into prototypes.
    /// Its units are support images, used or skipped.
    Learn,
}

/// Receives a [`Learner`](super::Learner)'s progress.
///
/// For each stage the learner calls [`stage`](Progress::stage) once, then
/// [`advance`](Progress::advance), [`message`](Progress::message) and
/// [`skipped`](Progress::skipped) any number of times, then
/// [`finish`](Progress::finish) (also when the stage fails). Every method
/// does nothing by default.
pub trait Progress: Send + Sync {
    /// A stage of `class` starts, with `total` units of work.
    fn stage(&self, stage: Stage, class: &str, total: u64) {
        let _ = (stage, class, total);
    }

    /// `done` more units of the current stage are done.
    fn advance(&self, done: u64) {
        let _ = done;
    }

    /// What the current stage is doing now (the denoising step of a batch).
    fn message(&self, text: &str) {
        let _ = text;
    }

    /// A support image cannot be used and is skipped (it is counted in the
    /// report); `reason` is the error as one line.
    fn skipped(&self, image: &Path, reason: &str) {
        let _ = (image, reason);
    }

    /// The current stage is over.
    fn finish(&self) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
