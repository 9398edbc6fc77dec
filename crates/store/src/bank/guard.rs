//! Guards for careless paths: where a command may write a file, and where a bank may live.
//!
//! A bank folder is recognised by its files: sled's `conf` and `db`. A path
//! inside one (at any depth) is never an output target, and no bank may be
//! created inside another bank's folder (`--bank B/blobs`).

use std::fmt;
use std::path::{Path, PathBuf};

use super::store::is_sled_entry;

/// Why a path was refused as an output file or a bank location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRefused {
    /// The path that was refused.
    pub path: PathBuf,
    /// Why, as a sentence fragment.
    pub reason: String,
}

impl fmt::Display for PathRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refusing {}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for PathRefused {}

/// True when `dir` is a bank folder: it holds sled's `conf` and `db` files.
pub fn is_bank_root(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

/// `path` made absolute, with the part that exists resolved (symlinks
/// followed), so that walking up finds the real folders.
fn resolved(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut tail = Vec::new();
    let mut head = abs.as_path();
    loop {
        if let Ok(real) = head.canonicalize() {
            let mut out = real;
            for part in tail.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                head = parent;
            }
            _ => return abs,
        }
    }
}

/// The bank folder that holds `path` (`path` itself included), found by
/// walking up from it.
pub fn enclosing_bank(path: &Path) -> Option<PathBuf> {
    resolved(path)
        .ancestors()
        .find(|a| is_bank_root(a))
        .map(Path::to_path_buf)
}

/// Refuses `path` as the output file of a command (`export -o`, `merge -o`,
/// `migrate -o`, a report): it must be absent or a regular file, and not
/// inside a bank folder. Devices, FIFOs, sockets and folders are refused.
pub fn check_output_file(path: &Path) -> Result<(), PathRefused> {
    let refuse = |reason: String| PathRefused {
        path: path.to_path_buf(),
        reason,
    };
    if path.as_os_str().is_empty() {
        return Err(refuse("the path is empty".into()));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            return Err(refuse(format!(
                "it is {}; only a regular file or a new path is written",
                kind_of(&meta.file_type())
            )));
        }
    }
    if let Some(bank) = enclosing_bank(path) {
        return Err(refuse(format!(
            "it is inside the bank folder {}, and writing there would corrupt the bank; \
             write it outside the bank",
            bank.display()
        )));
    }
    Ok(())
}

/// Refuses `dir` as an output folder (`segment --out`): it must be absent or
/// a folder, and neither a bank folder nor inside one.
pub fn check_output_dir(dir: &Path) -> Result<(), PathRefused> {
    let refuse = |reason: String| PathRefused {
        path: dir.to_path_buf(),
        reason,
    };
    if let Ok(meta) = std::fs::metadata(dir) {
        if !meta.is_dir() {
            return Err(refuse(format!(
                "it is {}, not a folder",
                kind_of(&meta.file_type())
            )));
        }
    }
    if let Some(bank) = enclosing_bank(dir) {
        return Err(refuse(format!(
            "it is inside the bank folder {}, and files written there make the bank \
             unopenable; write them outside the bank",
            bank.display()
        )));
    }
    Ok(())
}

/// Refuses `path` as the location of a bank when it lies inside another
/// bank's folder (`--bank B/blobs`): banks do not nest.
pub fn check_bank_location(path: &Path) -> Result<(), PathRefused> {
    let full = resolved(path);
    if let Some(outer) = full.ancestors().skip(1).find(|a| is_bank_root(a)) {
        return Err(PathRefused {
            path: path.to_path_buf(),
            reason: format!(
                "it is inside the bank folder {}, one of its internal folders; \
                 give a bank folder of its own",
                outer.display()
            ),
        });
    }
    Ok(())
}

/// The entries of a bank folder that are not part of its database (stray
/// files that make the bank unopenable), sorted.
pub fn stray_entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| !e.file_name().to_str().is_some_and(is_sled_entry))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bank(dir: &Path) {
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::write(dir.join("conf"), b"x").unwrap();
        std::fs::write(dir.join("db"), b"x").unwrap();
    }

    #[test]
    fn absent_and_regular_files_are_written() {
        let t = tempfile::tempdir().unwrap();
        check_output_file(&t.path().join("new.ovbank")).unwrap();
        std::fs::write(t.path().join("old.ovbank"), b"x").unwrap();
        check_output_file(&t.path().join("old.ovbank")).unwrap();
    }

    #[test]
    fn devices_folders_and_fifos_are_refused() {
        let e = check_output_file(Path::new("/dev/null")).unwrap_err();
        assert!(e.to_string().contains("/dev/null"), "{e}");
        assert!(e.reason.contains("character device"), "{e}");
        let t = tempfile::tempdir().unwrap();
        assert!(check_output_file(t.path())
            .unwrap_err()
            .reason
            .contains("a folder"));
        let fifo = t.path().join("fifo");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            assert!(check_output_file(&fifo)
                .unwrap_err()
                .reason
                .contains("FIFO"));
        }
        assert!(check_output_file(Path::new("")).is_err());
    }

    #[test]
    fn paths_inside_a_bank_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let bank = t.path().join("bank");
        fake_bank(&bank);
        for p in [
            "db",
            "conf",
            "x.ovbank",
            "blobs/1",
            "builds/1.build",
            "snap.1",
        ] {
            let e = check_output_file(&bank.join(p)).unwrap_err();
            assert!(e.reason.contains("inside the bank folder"), "{p}: {e}");
        }
        assert!(check_output_dir(&bank.join("ovdiff-out")).is_err());
        assert!(check_output_dir(&bank).is_err());
        check_output_dir(&t.path().join("out")).unwrap();
        check_output_file(&t.path().join("x.ovbank")).unwrap();
    }

    #[test]
    fn banks_do_not_nest() {
        let t = tempfile::tempdir().unwrap();
        let bank = t.path().join("bank");
        fake_bank(&bank);
        check_bank_location(&bank).unwrap();
        check_bank_location(&t.path().join("other")).unwrap();
        let e = check_bank_location(&bank.join("blobs")).unwrap_err();
        assert!(e.reason.contains("inside the bank folder"), "{e}");
        assert!(check_bank_location(&bank.join("blobs/deeper")).is_err());
    }

    #[test]
    fn stray_entries_are_named() {
        let t = tempfile::tempdir().unwrap();
        fake_bank(t.path());
        std::fs::create_dir(t.path().join("ovdiff-out")).unwrap();
        std::fs::write(t.path().join("snap.0001"), b"").unwrap();
        assert_eq!(stray_entries(t.path()), [t.path().join("ovdiff-out")]);
    }
}
