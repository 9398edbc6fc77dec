//! Counting the heap the program holds (not ONNX Runtime's, which allocates in C++).

/// Counts the bytes the program (not ONNX Runtime, which allocates in C++)
/// holds on the heap, and their peak since the last reset.
struct CountingAlloc;

static HEAP_NOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) static HEAP_PEAK: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only bookkeeping.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            let now = HEAP_NOW.fetch_add(layout.size(), Relaxed) + layout.size();
            HEAP_PEAK.fetch_max(now, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        HEAP_NOW.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Reset the heap peak to the current use; returns the current use.
pub(crate) fn heap_reset() -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let now = HEAP_NOW.load(Relaxed);
    HEAP_PEAK.store(now, Relaxed);
    now
}
