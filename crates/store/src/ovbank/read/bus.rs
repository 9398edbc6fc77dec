//! Bus errors on mapped files (issue #20, case 8). A file that another
//! program truncates or rewrites in place while it is mapped loses the pages
//! past its new end, and the next read of one raises SIGBUS, which kills the
//! process with no message ("Bus error", exit 135).
//!
//! Writers of `.ovbank` files never do that (they write a temporary file
//! and rename it over the old one, which leaves mapped readers on the old
//! inode), but another program may. So every mapping registers its address
//! range, with a message naming its file, in a small fixed table; a SIGBUS
//! handler (installed once, with the first registration) that finds the
//! faulting address there writes the message to stderr with `write(2)` and
//! ends the process with `_exit(2)` — async-signal-safe calls only, no
//! allocation, no lock. Any other SIGBUS goes to the handler that was
//! installed before (Rust's own, or the default action).
//!
//! The table holds [`SLOTS`] mappings; past that a mapping is not
//! registered, and a bus error on it is the plain signal as before.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// How many mappings can be registered at once.
pub(crate) const SLOTS: usize = 64;

/// The exit code after a bus error on a registered mapping.
pub(crate) const EXIT_CODE: i32 = 2;

struct Slot {
    /// Claimed by a registration.
    busy: AtomicBool,
    /// First address of the range; 0 while the slot is not published.
    start: AtomicUsize,
    len: AtomicUsize,
    msg: AtomicPtr<u8>,
    msg_len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // the array's initialiser
const EMPTY: Slot = Slot {
    busy: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    msg: AtomicPtr::new(std::ptr::null_mut()),
    msg_len: AtomicUsize::new(0),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
static INSTALL: Once = Once::new();
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A registered mapping; dropping it (before the mapping is unmapped)
/// removes it from the table.
pub(crate) struct BusGuard {
    slot: Option<usize>,
}

impl BusGuard {
    /// Registers the mapped range `start .. start + len` of `path`.
    pub(crate) fn register(start: *const u8, len: usize, path: &Path) -> BusGuard {
        if len == 0 || start.is_null() {
            return BusGuard { slot: None };
        }
        INSTALL.call_once(install);
        let Some(i) = TABLE.iter().position(|s| {
            s.busy
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        }) else {
            return BusGuard { slot: None };
        };
        let msg = message(path).into_boxed_slice();
        let slot = &TABLE[i];
        slot.msg_len.store(msg.len(), Ordering::Release);
        slot.msg
            .store(Box::into_raw(msg).cast::<u8>(), Ordering::Release);
        slot.len.store(len, Ordering::Release);
        slot.start.store(start as usize, Ordering::Release);
        BusGuard { slot: Some(i) }
    }
}

impl Drop for BusGuard {
    fn drop(&mut self) {
        let Some(i) = self.slot else {
            return;
        };
        let slot = &TABLE[i];
        // No one reads the mapping any more (it is being dropped), so no
        // fault in its range can be in flight while the message is freed.
        slot.start.store(0, Ordering::Release);
        slot.len.store(0, Ordering::Release);
        let msg = slot.msg.swap(std::ptr::null_mut(), Ordering::AcqRel);
        let n = slot.msg_len.swap(0, Ordering::AcqRel);
        if !msg.is_null() {
            // SAFETY: `msg` came from `Box::into_raw` of a `[u8]` of length `n`.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(msg, n)) });
        }
        slot.busy.store(false, Ordering::Release);
    }
}

/// The line written when a read of `path`'s mapping faults; control
/// characters in the path are escaped.
fn message(path: &Path) -> Vec<u8> {
    let shown: String = path
        .display()
        .to_string()
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    format!(
        "ovdiff-bank: {shown} was truncated or rewritten while in use (bus error reading a \
         mapped bank file); shared bank files must be replaced by rename, never rewritten in \
         place\n"
    )
    .into_bytes()
}

fn install() {
    // SAFETY: plain libc calls on zeroed, then filled, sigaction structs.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
            return;
        }
        let _ = PREVIOUS.set(old);
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = on_bus_error as *const () as usize;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut new.sa_mask);
        libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut());
    }
}

extern "C" fn on_bus_error(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; only atomics, write(2),
    // _exit(2), sigaction(2) and raise(3) are used here.
    unsafe {
        let addr = (*info).si_addr() as usize;
        for s in &TABLE {
            let start = s.start.load(Ordering::Acquire);
            if start == 0 || addr < start || addr - start >= s.len.load(Ordering::Acquire) {
                continue;
            }
            let msg = s.msg.load(Ordering::Acquire);
            if !msg.is_null() {
                let _ = libc::write(2, msg.cast(), s.msg_len.load(Ordering::Acquire));
            }
            libc::_exit(EXIT_CODE);
        }
        // Not a registered mapping: restore the previous action. Returning
        // runs the faulting access again, which faults under it; a signal
        // sent by a process (no fault to repeat) is raised again.
        match PREVIOUS.get() {
            Some(old) => libc::sigaction(libc::SIGBUS, old, std::ptr::null_mut()),
            None => {
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
                0
            }
        };
        if (*info).si_code <= 0 {
            libc::raise(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::FromRawFd;

    use super::*;

    /// Truncates a mapped file and reads it in a forked child: the child
    /// exits 2 with the message naming the file instead of dying of SIGBUS.
    #[test]
    fn a_bus_error_on_a_registered_mapping_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.ovbank");
        std::fs::write(&path, vec![7u8; 1 << 16]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a test mapping of a file this test owns.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let guard = BusGuard::register(map.as_ptr(), map.len(), &path);
        assert!(guard.slot.is_some());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let mut fds = [0; 2];
        // SAFETY: pipe, fork, and in the child only async-signal-safe calls
        // (dup2, a volatile read, _exit) before the handler's write and exit.
        let status = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::dup2(fds[1], 2);
                let v = std::ptr::read_volatile(map.as_ptr().add(4096));
                libc::_exit(i32::from(v) + 100); // not reached
            }
            libc::close(fds[1]);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            status
        };
        let mut stderr = String::new();
        // SAFETY: the read end of the pipe, owned from here on.
        unsafe { std::fs::File::from_raw_fd(fds[0]) }
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(libc::WIFEXITED(status), "child status {status}: {stderr}");
        assert_eq!(libc::WEXITSTATUS(status), EXIT_CODE, "{stderr}");
        assert!(stderr.contains("shared.ovbank was truncated or rewritten while in use"));
        assert!(stderr.contains("replaced by rename, never rewritten in place"));
        let slot = guard.slot.unwrap();
        drop(guard);
        assert_eq!(TABLE[slot].start.load(Ordering::Acquire), 0);
        drop(map);
    }
}
