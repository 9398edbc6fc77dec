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

/// A download's progress: a bar of bytes on stderr for a file of at least
/// 4 MiB (none with `hidden`, `--json`), and a note on stderr for each
/// retry, resume and restart either way.
pub(crate) struct DownloadBar {
    hidden: bool,
    bar: Option<ProgressBar>,
}

impl DownloadBar {
    pub(crate) fn new(hidden: bool) -> DownloadBar {
        DownloadBar { hidden, bar: None }
    }

    fn note(&self, text: &str) {
        let say = || eprintln!("ovdiff-bank: {text}");
        match &self.bar {
            Some(pb) => pb.suspend(say),
            None => say(),
        }
    }

    /// Hears one event of [`ovdiff_learn::fetch::download`].
    pub(crate) fn event(&mut self, e: &ovdiff_learn::fetch::FetchEvent) {
        use ovdiff_learn::fetch::FetchEvent;
        match e {
            FetchEvent::Started { offset, total } => {
                if *offset > 0 {
                    self.note(&format!(
                        "resuming the download at byte {offset}{}",
                        total.map_or(String::new(), |t| format!(" of {t}"))
                    ));
                }
                if self.bar.is_none() && !self.hidden && total.is_some_and(|t| t >= 4 << 20) {
                    let pb = ProgressBar::new(total.unwrap_or(0));
                    pb.set_style(
                        ProgressStyle::with_template(
                            "download [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}, ETA {eta}",
                        )
                        .expect("invariant: template is valid")
                        .progress_chars("=> "),
                    );
                    self.bar = Some(pb);
                }
                if let Some(pb) = &self.bar {
                    pb.set_position(*offset);
                }
            }
            FetchEvent::Received { have, .. } => {
                if let Some(pb) = &self.bar {
                    pb.set_position(*have);
                }
            }
            FetchEvent::Retrying {
                attempt,
                attempts,
                error,
                have,
                delay,
            } => self.note(&format!(
                "download attempt {attempt} of {attempts} failed ({error}); {have} bytes kept, \
                 retrying in {:.1} s",
                delay.as_secs_f64()
            )),
            FetchEvent::Restarting { reason } => {
                self.note(&format!("{reason}; downloading it again from the start"))
            }
            _ => {}
        }
    }

    /// Clears the bar.
    pub(crate) fn finish(self) {
        if let Some(pb) = self.bar {
            pb.finish_and_clear();
        }
    }
}
