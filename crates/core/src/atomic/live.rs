//! Temporary files of atomic writes that are still open: removed when the process is stopped by a signal, and swept when a dead process left them.
//!
//! Every [`AtomicFile`](super::AtomicFile) registers its temporary path here
//! while it lives and holds an exclusive `flock` on it. Two things follow:
//!
//! * [`remove_temporary_files_on_signals`] (opt-in, for a front-end: the
//!   command line calls it first thing) makes SIGINT and SIGTERM remove the
//!   registered files before the process ends by that signal (a shell
//!   reports 130 or 143). The signal handler itself only writes the signal
//!   number to a pipe (async-signal-safe); a watcher thread does the
//!   removal with ordinary code and then re-raises the signal. While it removes, no new
//!   temporary file can be created, so none is left behind.
//! * [`remove_stale_temporary_files`] removes what a process that could not
//!   clean up (SIGKILL, a crash, a power cut) left in a folder. The first
//!   atomic write of a process into a folder sweeps it once. A file goes
//!   only when its name is exactly `.NAME.tmp-PID-N`, PID is not this
//!   process nor a live process on this machine, and nobody holds its
//!   lock: a writer on another machine or in another PID namespace that
//!   shares the folder still holds its lock, so its file is kept.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The temporary files of this process's atomic writes, not yet committed
/// or removed.
pub(super) struct Live {
    paths: Vec<PathBuf>,
    /// Set once a signal's clean-up began: no new temporary file after it.
    closing: bool,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    paths: Vec::new(),
    closing: false,
});

/// The registry, locked (a panic while it was held does not matter: it is
/// a list of paths).
pub(super) fn live() -> MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// Whether a signal's clean-up has begun.
    pub(super) fn closing(&self) -> bool {
        self.closing
    }

    /// Records a temporary file.
    pub(super) fn add(&mut self, path: PathBuf) {
        self.paths.push(path);
    }

    /// Forgets a temporary file (committed or removed).
    pub(super) fn forget(&mut self, path: &Path) {
        if let Some(i) = self.paths.iter().rposition(|p| p == path) {
            self.paths.swap_remove(i);
        }
    }
}

/// Removes every temporary file of this process's unfinished atomic writes
/// (and every folder given to [`remove_on_signal`]), and refuses new ones
/// from then on; returns what it removed. This is what a signal runs before
/// the process exits; a front-end that stops the process its own way may
/// call it first.
pub fn remove_temporary_files() -> Vec<PathBuf> {
    let mut live = live();
    live.closing = true;
    let mut removed = Vec::new();
    for p in live.paths.drain(..) {
        let gone = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p).is_ok(),
            Ok(_) => std::fs::remove_file(&p).is_ok(),
            Err(_) => false,
        };
        if gone {
            removed.push(p);
        }
    }
    removed
}

/// Registers a temporary folder of this process (a private copy, say) for
/// removal by [`remove_temporary_files`], as atomic writes' files are;
/// [`keep_on_signal`] undoes it once the folder is gone.
pub fn remove_on_signal(path: PathBuf) {
    live().add(path);
}

/// Forgets a path given to [`remove_on_signal`].
pub fn keep_on_signal(path: &Path) {
    live().forget(path);
}

/// A private folder of this process, `PARENT/PREFIX{pid}-{n}`: removed on
/// drop, and on SIGINT/SIGTERM ([`remove_on_signal`]); creating one first
/// removes the folders of that prefix left by processes that are gone.
#[derive(Debug)]
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    /// Create one under `parent` (which must exist). The error carries the
    /// folder it could not create.
    pub fn create(parent: &Path, prefix: &str) -> Result<PrivateDir, (PathBuf, std::io::Error)> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        remove_stale_private_dirs(parent, prefix);
        let dir = parent.join(format!(
            "{prefix}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).map_err(|e| (dir.clone(), e))?;
        remove_on_signal(dir.clone());
        Ok(PrivateDir(dir))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        keep_on_signal(&self.0);
    }
}

/// Removes the folders `PARENT/PREFIX{pid}-{n}` whose process is gone.
fn remove_stale_private_dirs(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(pid, n)| n.parse::<u64>().ok().and(pid.parse::<u32>().ok()))
        else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Whether a process with this PID lives on this machine (when that cannot
/// be told, it is taken as alive): what the sweeps of stale temporary files
/// go by.
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: kill with signal 0 sends nothing; it only checks the PID.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Folders this process has swept for stale temporary files.
static SWEPT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Sweeps `dir` ([`remove_stale_temporary_files`]) unless this process did
/// already.
pub(super) fn sweep_once(dir: &Path) {
    let first = SWEPT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(dir.to_path_buf());
    if first {
        remove_stale_temporary_files(dir);
    }
}

/// Removes the temporary files that writers which are gone left in `dir`;
/// returns them. A file goes only when its name is exactly `.NAME.tmp-PID-N`
/// (what [`AtomicFile`](super::AtomicFile) names them), PID is neither this
/// process nor a live process here, and no one holds the file's lock (a
/// live writer always does). Anything that cannot be decided is kept.
pub fn remove_stale_temporary_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temporary_file_pid) else {
            continue;
        };
        let path = entry.path();
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if !regular || pid == own || process_alive(pid) || lock_held(&path) {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed.sort();
    removed
}

/// The PID in a temporary file name `.NAME.tmp-PID-N` (NAME not empty, PID
/// and N decimal), or `None` for any other name.
pub fn temporary_file_pid(file_name: &str) -> Option<u32> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (rest, n) = file_name.rsplit_once('-')?;
    let (rest, pid) = rest.rsplit_once('-')?;
    let name = rest.strip_suffix(".tmp")?.strip_prefix('.')?;
    if name.is_empty() || !digits(n) || !digits(pid) || n.parse::<u64>().is_err() {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

/// Whether someone holds the lock of `path` (when that cannot be told, it
/// is taken as held, unless locks are not supported there at all).
fn lock_held(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return true;
    };
    match f.try_lock() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        // No locks on this file system: the PID alone decides.
        Err(std::fs::TryLockError::Error(_)) => false,
    }
}

/// Makes SIGINT and SIGTERM remove the temporary files of unfinished atomic
/// writes ([`remove_temporary_files`]), call `report` with the signal and
/// the files removed, and then end the process by that signal (its default
/// action, re-raised), so that the parent sees what it would have seen
/// without the clean-up: a shell reports status 130 for SIGINT and 143 for
/// SIGTERM, and a shell loop over the command stops. A signal that was
/// ignored when this is called (a job started with `nohup`) stays ignored.
/// Calling it again does nothing.
///
/// For front-ends that own the process (the command line, a server); a
/// library embedded in another program (Python) leaves signals to it.
pub fn remove_temporary_files_on_signals(report: fn(i32, &[PathBuf])) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        signals::install(report)
    }
    #[cfg(not(unix))]
    {
        let _ = report;
        Ok(())
    }
}

#[cfg(unix)]
mod signals {
    use std::io;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Once;

    /// The write end of the pipe the handler writes signal numbers to.
    static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
    static INSTALL: Once = Once::new();

    /// The handler: async-signal-safe (an atomic load and `write`; errno is
    /// kept).
    extern "C" fn on_signal(sig: libc::c_int) {
        // SAFETY: errno is thread-local; reading and restoring it is safe.
        let errno = unsafe { *libc::__errno_location() };
        let fd = PIPE_WRITE.load(Ordering::Relaxed);
        if fd >= 0 {
            let byte = sig as u8;
            // SAFETY: writes one byte from a live stack variable.
            unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        }
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
    }

    pub(super) fn install(report: fn(i32, &[PathBuf])) -> io::Result<()> {
        let mut result = Ok(());
        INSTALL.call_once(|| result = install_once(report));
        result
    }

    fn install_once(report: fn(i32, &[PathBuf])) -> io::Result<()> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let [read_end, write_end] = fds;
        PIPE_WRITE.store(write_end, Ordering::Relaxed);
        std::thread::Builder::new()
            .name("ovdiff-signals".into())
            .spawn(move || watch(read_end, report))?;
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: plain sigaction calls with zeroed, then filled structs.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if old.sa_sigaction == libc::SIG_IGN {
                    continue;
                }
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                act.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut act.sa_mask);
                if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// The watcher thread: waits for a signal number, cleans up, exits.
    fn watch(read_end: libc::c_int, report: fn(i32, &[PathBuf])) {
        loop {
            let mut byte = 0u8;
            // SAFETY: reads one byte into a live stack variable.
            let n = unsafe { libc::read(read_end, (&mut byte as *mut u8).cast(), 1) };
            if n == 1 {
                let sig = i32::from(byte);
                let removed = super::remove_temporary_files();
                report(sig, &removed);
                // End as the signal would have: the parent sees a death by
                // SIGINT (a shell reports 130, and a script looping over
                // the command stops too). Should that not end the process,
                // `_exit` with the same status; not `exit`, since other
                // threads may be inside native libraries whose exit-time
                // destructors must not run under them.
                // SAFETY: resets the disposition, re-raises, ends the process.
                unsafe {
                    libc::signal(sig, libc::SIG_DFL);
                    libc::raise(sig);
                    libc::_exit(128 + sig);
                }
            }
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_parsed_exactly() {
        assert_eq!(temporary_file_pid(".x.ovbank.tmp-123-0"), Some(123));
        assert_eq!(temporary_file_pid(".a.tmp-b.tmp-7-12"), Some(7));
        for other in [
            "x.ovbank",
            ".x.ovbank.tmp-123",
            ".x.ovbank.tmp-123-",
            ".x.ovbank.tmp--0",
            ".x.ovbank.tmp-12a-0",
            ".x.ovbank.tmp-+12-0",
            "x.ovbank.tmp-123-0",
            "..tmp-123-0",
            ".x.ovbank.tmp-0-0",
            ".x.ovbank.tmp-123-0.bak",
            ".x.ovbank.tmpx-123-0",
        ] {
            assert_eq!(temporary_file_pid(other), None, "{other}");
        }
    }

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn only_files_of_dead_writers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dead_pid();
        let names = [
            format!(".out.ovbank.tmp-{dead}-0"),
            format!(".out.ovbank.tmp-{}-3", std::process::id()),
            ".out.ovbank.tmp-1-0".to_string(), // init: alive
            format!(".out.ovbank.tmp-{dead}-0.keep"),
            format!("out.ovbank.tmp-{dead}-0"),
            format!(".locked.tmp-{dead}-1"),
        ];
        for n in &names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        // A writer that shares the folder from elsewhere holds its lock.
        let held = File::open(dir.path().join(&names[5])).unwrap();
        held.lock().unwrap();
        let removed = remove_stale_temporary_files(dir.path());
        assert_eq!(removed, vec![dir.path().join(&names[0])]);
        for n in &names[1..] {
            assert!(dir.path().join(n).exists(), "{n} is kept");
        }
        drop(held);
        assert_eq!(
            remove_stale_temporary_files(dir.path()),
            vec![dir.path().join(&names[5])]
        );
    }

    #[test]
    fn the_registry_forgets_committed_files() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("r.bin");
        let f = super::super::AtomicFile::create(&dest).unwrap();
        let temp = f.temp_path().to_path_buf();
        assert!(live().paths.contains(&temp));
        f.commit().unwrap();
        assert!(!live().paths.contains(&temp));
        let f = super::super::AtomicFile::create(&dest).unwrap();
        let temp = f.temp_path().to_path_buf();
        drop(f);
        assert!(!live().paths.contains(&temp));
    }
}
