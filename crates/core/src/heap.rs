//! The C allocator of long-lived processes (the server, the Python
//! package): the one place that tunes it. ONNX Runtime and the image
//! buffers of a segmentation make large, short-lived allocations on
//! whichever thread runs the request; with glibc each such thread may get
//! its own arena, and freed memory stays mapped in all of them. Fewer
//! arenas and a trim after each request keep a serving process's memory
//! at the level of one request. Elsewhere (not glibc) both calls do
//! nothing.
//!
//! ```
//! ovdiff_core::heap::limit_arenas(2);
//! ovdiff_core::heap::trim();
//! ```

/// Use at most `n` malloc arenas (at least 1). Call it early, before the
/// threads that allocate start; it changes nothing for memory already
/// allocated.
pub fn limit_arenas(n: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let n = n.clamp(1, i32::MAX as usize) as libc::c_int;
        // SAFETY: mallopt only sets a tunable of the allocator; M_ARENA_MAX
        // takes any positive count. Its result (1 on success) needs no
        // handling: on failure the allocator keeps its defaults.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, n);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

/// Give free heap memory back to the system (free pages inside the arenas
/// too, not only at their tops).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it is
    // thread-safe and takes a padding in bytes.
    unsafe {
        libc::malloc_trim(0);
    }
}
