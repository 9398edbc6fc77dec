//! Thread counts: 0 means one per core.

/// The machine's available parallelism (at least 1).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `threads` when positive, else the machine's cores.
pub fn threads_or_cores(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        default_threads()
    }
}
