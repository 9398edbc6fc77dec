//! Failure points for crash, signal and fault tests: the one place that
//! reads `OVDIFF_FAILPOINT` and `OVDIFF_FAILPOINT_PAUSE_MS`. Both are unset
//! in normal use, and then every call here does nothing.
//!
//! The points: `bank-after-prototypes`, `bank-after-commit` (a bank
//! write), `ovbank-after-class` (a `.ovbank` writer), `generate-after-batch`
//! (sampling a support set) abort the process as a kill would;
//! `serve-panic` makes a segment request of the server panic, and
//! `serve-slow` makes each of its segmentations pause first (load tests).

/// Names the failure point to act at.
pub const ENV: &str = "OVDIFF_FAILPOINT";

/// Milliseconds to pause at each pause point (at most 10 s), so that a
/// test's signal lands mid-write.
pub const PAUSE_ENV: &str = "OVDIFF_FAILPOINT_PAUSE_MS";

/// Whether [`ENV`] names `point`.
pub fn is(point: &str) -> bool {
    std::env::var_os(ENV).is_some_and(|v| v == point)
}

/// Abort the process (as a SIGKILL would leave things) when [`ENV`] names
/// `point`.
pub fn abort_at(point: &str) {
    if is(point) {
        std::process::abort();
    }
}

/// Sleep [`PAUSE_ENV`] milliseconds when it is set.
pub fn pause() {
    if let Some(ms) = std::env::var(PAUSE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms.min(10_000)));
    }
}
