//! Atomic file writes: the one way the library replaces a file.
//!
//! A new file is written under a temporary name in the destination's folder,
//! `.NAME.tmp-PID-N` (N tells apart the writers of one process), synced, and
//! renamed over the destination: readers see the old file or the new one,
//! never half of one. [`write_atomic`] does it for bytes held in memory,
//! [`write_atomic_with`] for bytes streamed through a buffer, and
//! [`AtomicFile`] for a file written piece by piece (and read back or
//! patched before it is committed). A temporary file that is never committed
//! is deleted: when its writer drops it, when the process is stopped by
//! SIGINT or SIGTERM (once a front-end opted in with
//! [`remove_temporary_files_on_signals`]), and, for one left by a process
//! killed outright, by the next process's first atomic write into that
//! folder ([`remove_stale_temporary_files`]; see [`live`] for the rules).
//!
//! ```
//! use std::io::Write;
//! use ovdiff_core::atomic::AtomicFile;
//! let dir = tempfile::tempdir().unwrap();
//! let dest = dir.path().join("out.bin");
//! let mut f = AtomicFile::create(&dest).unwrap();
//! f.write_all(b"hello").unwrap();
//! assert!(!dest.exists());
//! f.commit().unwrap();
//! assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
//! ```

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

pub mod live;

pub use live::{
    keep_on_signal, process_alive, remove_on_signal, remove_stale_temporary_files,
    remove_temporary_files, remove_temporary_files_on_signals, temporary_file_pid, PrivateDir,
};

/// Tells apart temporary files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `bytes` to `path` atomically: a temporary file in the same folder,
/// synced, then renamed over `path`. Readers see the old file or the new
/// one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path).map_err(|e| e.into_error("writing"))?;
    if let Err(e) = file.write_all(bytes) {
        return Err(Error::io("writing", file.temp_path(), e));
    }
    file.commit().map_err(|e| e.into_error("writing"))
}

/// [`write_atomic`] for a file too large to hold in memory at once: `write`
/// streams its bytes into the temporary file (buffered; it may seek, e.g. to
/// fill in a header once the rest is written), which is then synced and
/// renamed over `path`. When `write` fails, the temporary file is removed
/// and `path` is left as it was.
pub fn write_atomic_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<AtomicFile>) -> io::Result<()>,
{
    let file = AtomicFile::create(path).map_err(|e| e.into_error("writing"))?;
    let temp = file.temp_path().to_path_buf();
    let mut w = BufWriter::new(file);
    if let Err(e) = write(&mut w) {
        return Err(Error::io("writing", temp, e));
    }
    let file = w
        .into_inner()
        .map_err(|e| Error::io("writing", &temp, e.into_error()))?;
    file.commit().map_err(|e| e.into_error("writing"))
}

/// The step of an atomic write that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicStep {
    /// The destination has no file name to derive a temporary name from.
    Name,
    /// Creating the temporary file.
    Create,
    /// Syncing the temporary file to disk.
    Sync,
    /// Renaming the temporary file over the destination.
    Rename,
    /// Syncing the folder, so that a rename into it is durable.
    SyncFolder,
}

/// A failed step of an atomic write, with the path it was done on: the
/// destination for [`AtomicStep::Name`] and [`AtomicStep::Rename`], the
/// temporary file for [`AtomicStep::Create`] and [`AtomicStep::Sync`], the
/// folder for [`AtomicStep::SyncFolder`].
#[derive(Debug)]
pub struct AtomicError {
    /// What failed.
    pub step: AtomicStep,
    /// The file or folder it failed on.
    pub path: PathBuf,
    /// The I/O error.
    pub source: io::Error,
}

impl fmt::Display for AtomicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.step {
            AtomicStep::Name => "finding the file name of",
            AtomicStep::Create => "creating",
            AtomicStep::Sync => "syncing",
            AtomicStep::Rename => "renaming a temporary file onto",
            AtomicStep::SyncFolder => "syncing the folder",
        };
        write!(f, "{what} {}", self.path.display())
    }
}

impl std::error::Error for AtomicError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl AtomicError {
    /// The library error [`write_atomic`] reports: a destination without a
    /// file name is [`Error::Invalid`], a failed rename says so, and every
    /// other step is `context` on its path.
    fn into_error(self, context: &'static str) -> Error {
        match self.step {
            AtomicStep::Name => Error::Invalid(format!("{}: not a file path", self.path.display())),
            AtomicStep::Rename => {
                Error::io("renaming a temporary file onto", self.path, self.source)
            }
            _ => Error::io(context, self.path, self.source),
        }
    }
}

/// A file being written under a temporary name beside its destination;
/// [`AtomicFile::commit`] syncs it and renames it into place. Dropped
/// without a commit, it deletes the temporary file.
///
/// It reads, writes and seeks like the [`File`] it wraps (opened for
/// reading and writing), so a writer can stream the bulk of a file, then
/// go back to fill in a header or read the bytes back for a checksum.
#[derive(Debug)]
pub struct AtomicFile {
    dest: PathBuf,
    temp: PathBuf,
    /// `None` once committed.
    file: Option<File>,
}

impl AtomicFile {
    /// Creates the temporary file `.NAME.tmp-PID-N` in the folder of `dest`
    /// (the current folder when `dest` names none), locked (`flock`) and
    /// registered for removal on a signal; `dest` itself is not touched
    /// until [`AtomicFile::commit`]. The first call of a process for a
    /// folder first removes what dead writers left there
    /// ([`remove_stale_temporary_files`]).
    pub fn create(dest: &Path) -> std::result::Result<AtomicFile, AtomicError> {
        let Some(name) = dest.file_name() else {
            return Err(AtomicError {
                step: AtomicStep::Name,
                path: dest.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
            });
        };
        let folder = parent_folder(dest);
        live::sweep_once(folder);
        let temp = folder.join(format!(
            ".{}.tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let create_err = |source| AtomicError {
            step: AtomicStep::Create,
            path: temp.clone(),
            source,
        };
        // Created and registered under the registry's lock, so that a
        // signal's clean-up sees either no file or a registered one.
        let mut live = live::live();
        if live.closing() {
            return Err(create_err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the process is stopping on a signal",
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(create_err)?;
        // Tells a sweeping process that this writer is alive; a file system
        // without locks leaves the PID to tell it.
        let _ = file.try_lock();
        live.add(temp.clone());
        drop(live);
        Ok(AtomicFile {
            dest: dest.to_path_buf(),
            temp,
            file: Some(file),
        })
    }

    /// The temporary file's path (where errors of reads and writes happen).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The destination.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Syncs the temporary file and renames it over the destination. On
    /// failure the temporary file is deleted and the destination is as it
    /// was. The folder is not synced: see [`sync_folder`].
    pub fn commit(mut self) -> std::result::Result<(), AtomicError> {
        let file = self.file.take().ok_or_else(|| AtomicError {
            step: AtomicStep::Sync,
            path: self.temp.clone(),
            source: io::ErrorKind::Other.into(),
        })?;
        let synced = file.sync_all();
        drop(file);
        let result = synced
            .map_err(|source| AtomicError {
                step: AtomicStep::Sync,
                path: self.temp.clone(),
                source,
            })
            .and_then(|()| {
                std::fs::rename(&self.temp, &self.dest).map_err(|source| AtomicError {
                    step: AtomicStep::Rename,
                    path: self.dest.clone(),
                    source,
                })
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&self.temp);
        }
        live::live().forget(&self.temp);
        result
    }

    fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::ErrorKind::Other.into())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
            live::live().forget(&self.temp);
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file()?.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file()?.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl Read for AtomicFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file()?.read(buf)
    }
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file()?.seek(pos)
    }
}

/// Syncs the folder `dir`, so that files renamed into it survive a crash
/// (Unix; elsewhere a no-op).
pub fn sync_folder(dir: &Path) -> std::result::Result<(), AtomicError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| AtomicError {
                step: AtomicStep::SyncFolder,
                path: dir.to_path_buf(),
                source,
            })?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The folder a file at `path` lives in (the current folder for a bare name).
pub fn parent_folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["a.txt"]);
        let err = write_atomic(Path::new("/"), b"x").unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert_eq!(err.to_string(), "/: not a file path");
        let missing = dir.path().join("no/such/folder/a.txt");
        let err = write_atomic(&missing, b"x").unwrap_err();
        assert!(
            matches!(err, Error::Io { context: "writing", ref path, .. }
                if path.file_name().unwrap().to_string_lossy().starts_with(".a.txt.tmp-")),
            "{err}"
        );
    }

    #[test]
    fn atomic_file_streams_patches_reads_back_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        std::fs::write(&dest, b"old").unwrap();
        let mut f = AtomicFile::create(&dest).unwrap();
        assert_eq!(f.dest(), dest);
        let temp = f.temp_path().to_path_buf();
        let name = temp.file_name().unwrap().to_string_lossy().into_owned();
        let pattern = format!(".f.bin.tmp-{}-", std::process::id());
        assert!(name.starts_with(&pattern), "{name}");
        assert!(name[pattern.len()..].parse::<u64>().is_ok(), "{name}");
        f.write_all(&[0; 4]).unwrap();
        f.write_all(b"body").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"headbody");
        assert_eq!(std::fs::read(&dest).unwrap(), b"old", "not yet visible");
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"headbody");
        assert!(!temp.exists());
        assert_eq!(names(dir.path()), ["f.bin"]);
    }

    #[test]
    fn atomic_file_dropped_or_failing_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("g.bin");
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.write_all(b"half").unwrap();
            assert!(f.temp_path().exists());
        }
        assert!(names(dir.path()).is_empty());
        // Two writers of one process get two temporary files.
        let (a, b) = (
            AtomicFile::create(&dest).unwrap(),
            AtomicFile::create(&dest).unwrap(),
        );
        assert_ne!(a.temp_path(), b.temp_path());
        drop((a, b));
        // A rename onto a folder fails: the temporary file goes.
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("x"), b"x").unwrap();
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"data").unwrap();
        let err = f.commit().unwrap_err();
        assert_eq!(err.step, AtomicStep::Rename);
        assert_eq!(err.path, dest);
        assert!(err
            .to_string()
            .starts_with("renaming a temporary file onto"));
        assert_eq!(names(dir.path()), ["g.bin"]);
        let err = AtomicFile::create(&dir.path().join("none/g.bin")).unwrap_err();
        assert_eq!(err.step, AtomicStep::Create);
        assert_eq!(
            AtomicFile::create(Path::new("..")).unwrap_err().step,
            AtomicStep::Name
        );
    }

    #[test]
    fn folders_sync_and_bare_names_live_here() {
        let dir = tempfile::tempdir().unwrap();
        sync_folder(dir.path()).unwrap();
        if cfg!(unix) {
            let err = sync_folder(&dir.path().join("missing")).unwrap_err();
            assert_eq!(err.step, AtomicStep::SyncFolder);
        }
        assert_eq!(parent_folder(Path::new("x.png")), Path::new("."));
        assert_eq!(parent_folder(Path::new("a/x.png")), Path::new("a"));
    }

    #[test]
    fn streamed_writes_may_seek_back_and_failures_keep_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        write_atomic(&path, b"old").unwrap();
        // a header filled in after the body, as the HNSW cache does
        write_atomic_with(&path, |w| {
            w.write_all(&[0; 4])?;
            for i in 0..100_000u32 {
                w.write_all(&i.to_le_bytes())?;
            }
            w.seek(SeekFrom::Start(0))?;
            w.write_all(b"HEAD")
        })
        .unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 4 + 400_000);
        assert_eq!(&got[..4], b"HEAD");
        assert_eq!(&got[4 + 4 * 99_999..], &99_999u32.to_le_bytes());
        let e = write_atomic_with(&path, |w| {
            w.write_all(b"half of a new file")?;
            Err(std::io::Error::other("the writer gave up"))
        })
        .unwrap_err();
        assert!(e.report().contains("the writer gave up"), "{}", e.report());
        assert_eq!(std::fs::read(&path).unwrap(), got);
        assert_eq!(names(dir.path()), ["big.bin"]);
    }
}
