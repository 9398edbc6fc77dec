//! Atomic file writes: the one way the library replaces a file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Tells apart temporary files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `bytes` to `path` atomically: a temporary file in the same folder,
/// synced, then renamed over `path`. Readers see the old file or the new
/// one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] for a file too large to hold in memory at once: `write`
/// streams its bytes into the temporary file (buffered; it may seek, e.g. to
/// fill in a header once the rest is written), which is then synced and
/// renamed over `path`. When `write` fails, the temporary file is removed
/// and `path` is left as it was.
pub fn write_atomic_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
{
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("writing", tmp, e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("renaming a temporary file onto", path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom};

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
    fn writes_replace_the_file_and_leave_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(names(dir.path()), ["out.bin"]);
        assert!(write_atomic(Path::new("/"), b"x").is_err());
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
