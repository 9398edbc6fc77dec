//! Progress bars on the terminal: the command line's [`Progress`] for the learner.

use std::path::Path;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use ovdiff_learn::learner::{Progress, Stage};

/// One indicatif bar per learner stage (hidden with `--json`); skipped
/// images are warned about on stderr either way.
pub(crate) struct Bars {
    hidden: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Bars that draw, or with `hidden` only the warnings.
    pub(crate) fn new(hidden: bool) -> Bars {
        Bars {
            hidden,
            bar: Mutex::new(None),
        }
    }

    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(pb) = self
            .bar
            .lock()
            .expect("invariant: no panic holds the bar")
            .as_ref()
        {
            f(pb);
        }
    }
}

impl Progress for Bars {
    fn stage(&self, stage: Stage, class: &str, total: u64) {
        let pb = if self.hidden {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total)
        };
        let (template, prefix) = match stage {
            Stage::Sample => (
                "sample {prefix} [{bar:30}] {pos}/{len} images, {msg}, ETA {eta}",
                class.to_string(),
            ),
            Stage::Learn => (
                "{prefix} [{bar:30}] {pos}/{len} images, {elapsed} elapsed, ETA {eta}",
                format!("add {class}"),
            ),
        };
        pb.set_style(
            ProgressStyle::with_template(template)
                .expect("invariant: template is valid")
                .progress_chars("=> "),
        );
        pb.set_prefix(prefix);
        *self.bar.lock().expect("invariant: no panic holds the bar") = Some(pb);
    }

    fn advance(&self, done: u64) {
        self.with_bar(|pb| pb.inc(done));
    }

    fn message(&self, text: &str) {
        self.with_bar(|pb| pb.set_message(text.to_string()));
    }

    fn skipped(&self, image: &Path, reason: &str) {
        let warn = || eprintln!("warning: skipping {}: {}", image.display(), reason);
        let bar = self.bar.lock().expect("invariant: no panic holds the bar");
        match bar.as_ref() {
            Some(pb) => pb.suspend(warn),
            None => warn(),
        }
    }

    fn finish(&self) {
        if let Some(pb) = self
            .bar
            .lock()
            .expect("invariant: no panic holds the bar")
            .take()
        {
            pb.finish_and_clear();
        }
    }
}
