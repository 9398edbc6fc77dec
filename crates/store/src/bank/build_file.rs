//! Build files (bank format 2): a class build's prototype blocks and thumbnail pack, outside sled.
//!
//! Large values make sled 0.34 rewrite whole leaves and keep old copies until
//! a segment is half empty, so a bank that stored ~100 KB blocks in sled grew
//! well past its content (figures: "Bank size" in `docs/benchmarks-notes.md`).
//! A build's bulk data is written once and never changed, so it lives in one
//! immutable file, `<bank>/builds/<id>.build`: written to a temporary name
//! ([`AtomicFile`]: `.<id>.build.tmp-PID-N`), synced, renamed, and the
//! directory synced, all **before** the class record that points to it is
//! committed. Nothing else refers to the file, so a crash leaves at worst an
//! unreferenced file or a temporary one, which the next open deletes (like
//! any leftover build).
//!
//! Layout (all little-endian):
//!
//! | part    | size        | content                                                |
//! |---------|-------------|--------------------------------------------------------|
//! | magic   | 8           | `OVBBUILD`                                             |
//! | version | 4           | `u32` = 1                                              |
//! | count   | 4           | `u32`: entries                                         |
//! | table   | 32 · count  | per entry: `kind: u32` (1 block, 2 thumbnail pack), `slot: u32`, `offset: u64`, `length: u64`, `checksum: u64` (xxh3-64 of the body) |
//! | bodies  | …           | the entries' bytes (`record::encode_block`, `record::encode_thumbnail_pack`) |

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ovdiff_core::atomic::{sync_folder, AtomicError, AtomicFile, AtomicStep};
use ovdiff_core::codec::{Reader, WriteLe};
use xxhash_rust::xxh3::xxh3_64;

use super::{BankError, Result};

/// Name of the directory, inside a bank, that holds build files.
pub(crate) const BUILDS_DIR: &str = "builds";

const MAGIC: &[u8; 8] = b"OVBBUILD";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;
const ENTRY_LEN: u64 = 32;
/// More entries than any build can have (65,535 encoders + one pack).
const MAX_ENTRIES: u32 = 1 << 17;

/// What an entry of a build file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// The prototype block of one encoder slot.
    Block,
    /// The thumbnail pack.
    Thumbnails,
}

impl EntryKind {
    fn code(self) -> u32 {
        match self {
            EntryKind::Block => 1,
            EntryKind::Thumbnails => 2,
        }
    }
}

/// Path of the build file of `build_id` in the bank at `bank`.
pub(crate) fn path(bank: &Path, build_id: u64) -> PathBuf {
    bank.join(BUILDS_DIR).join(format!("{build_id:016x}.build"))
}

/// The build id a file name in `builds/` stands for; `None` for anything else
/// (temporary files included).
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".build")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> BankError + 'a {
    move |source| BankError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn corrupt(path: &Path, reason: String) -> BankError {
    BankError::CorruptBuildFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// The bodies of one build file: (kind, slot, body).
pub(crate) type Entries = Vec<(EntryKind, u32, Vec<u8>)>;

/// Writes the build file of `build_id` durably: temporary file, fsync,
/// rename, fsync of the directory.
pub(crate) fn write(
    bank: &Path,
    build_id: u64,
    entries: &[(EntryKind, u32, Vec<u8>)],
) -> Result<()> {
    let dir = bank.join(BUILDS_DIR);
    fs::create_dir_all(&dir).map_err(io_err(&dir, "create"))?;
    write_file(bank, build_id, entries)?;
    sync_dir(&dir)
}

/// Writes many build files, a few at a time (each waits mostly on its
/// fsync), then syncs the directory once. Returns the first error.
pub(crate) fn write_many(bank: &Path, builds: &[(u64, Entries)]) -> Result<()> {
    const WRITERS: usize = 8;
    let dir = bank.join(BUILDS_DIR);
    fs::create_dir_all(&dir).map_err(io_err(&dir, "create"))?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let first_error = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..WRITERS.min(builds.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((id, entries)) = builds.get(i) else {
                    break;
                };
                if let Err(e) = write_file(bank, *id, entries) {
                    let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    break;
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    sync_dir(&dir)
}

/// Writes one build file (temporary name, fsync, rename); the caller syncs
/// the directory.
fn write_file(bank: &Path, build_id: u64, entries: &[(EntryKind, u32, Vec<u8>)]) -> Result<()> {
    let dest = path(bank, build_id);
    let mut head = Vec::with_capacity((HEADER_LEN + ENTRY_LEN * entries.len() as u64) as usize);
    head.extend_from_slice(MAGIC);
    head.put_u32(VERSION);
    head.put_u32(entries.len() as u32);
    let mut offset = HEADER_LEN + ENTRY_LEN * entries.len() as u64;
    for (kind, slot, body) in entries {
        head.put_u32(kind.code());
        head.put_u32(*slot);
        head.put_u64(offset);
        head.put_u64(body.len() as u64);
        head.put_u64(xxh3_64(body));
        offset += body.len() as u64;
    }
    let mut f = AtomicFile::create(&dest).map_err(atomic_err)?;
    // On an error `f` is dropped, which deletes the temporary file.
    f.write_all(&head).map_err(io_err(f.temp_path(), "write"))?;
    for (_, _, body) in entries {
        f.write_all(body).map_err(io_err(f.temp_path(), "write"))?;
    }
    f.commit().map_err(atomic_err)
}

/// A failed step of writing a build file, as the bank reports it.
fn atomic_err(e: AtomicError) -> BankError {
    let op = match e.step {
        AtomicStep::Name | AtomicStep::Create => "create",
        AtomicStep::Sync | AtomicStep::SyncFolder => "sync",
        AtomicStep::Rename => "rename a build file onto",
    };
    BankError::Io {
        path: e.path,
        op,
        source: e.source,
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    sync_folder(dir).map_err(atomic_err)
}

/// Reads the body of entry (`kind`, `slot`) of the build file of `build_id`,
/// checking its checksum. `Ok(None)` when the file has no such entry or does
/// not exist.
pub(crate) fn read(
    bank: &Path,
    build_id: u64,
    kind: EntryKind,
    slot: u32,
) -> Result<Option<Vec<u8>>> {
    let p = path(bank, build_id);
    let mut f = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&p, "open")(e)),
    };
    let len = f.metadata().map_err(io_err(&p, "inspect"))?.len();
    let mut head = [0u8; HEADER_LEN as usize];
    f.read_exact(&mut head)
        .map_err(|_| corrupt(&p, format!("it is {len} bytes long, shorter than a header")))?;
    let mut h = Reader::new(&head);
    if h.take(MAGIC.len()).ok() != Some(&MAGIC[..]) {
        return Err(corrupt(&p, "it does not start with OVBBUILD".into()));
    }
    let version = h.u32().unwrap_or_default();
    if version != VERSION {
        return Err(corrupt(
            &p,
            format!("build file version {version} is not {VERSION}"),
        ));
    }
    let count = h.u32().unwrap_or_default();
    let table_len = ENTRY_LEN * u64::from(count);
    if count > MAX_ENTRIES || HEADER_LEN + table_len > len {
        return Err(corrupt(
            &p,
            format!("its table of {count} entries does not fit"),
        ));
    }
    let mut table = vec![0u8; table_len as usize];
    f.read_exact(&mut table).map_err(io_err(&p, "read"))?;
    for e in table.chunks_exact(ENTRY_LEN as usize) {
        // Every field is there: the entry is ENTRY_LEN bytes.
        let mut e = Reader::new(e);
        let (entry_kind, entry_slot) = (e.u32().unwrap_or_default(), e.u32().unwrap_or_default());
        if entry_kind != kind.code() || entry_slot != slot {
            continue;
        }
        let mut field = || e.u64().unwrap_or_default();
        let (offset, length, sum) = (field(), field(), field());
        if offset.checked_add(length).is_none_or(|end| end > len) {
            return Err(corrupt(
                &p,
                format!("entry at {offset} (+{length} bytes) lies outside the file"),
            ));
        }
        let mut body = vec![0u8; length as usize];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut body))
            .map_err(io_err(&p, "read"))?;
        if xxh3_64(&body) != sum {
            return Err(corrupt(
                &p,
                format!("checksum mismatch in the entry at {offset}"),
            ));
        }
        return Ok(Some(body));
    }
    Ok(None)
}

/// Deletes the build file of `build_id`; true when one existed.
pub(crate) fn remove(bank: &Path, build_id: u64) -> Result<bool> {
    let p = path(bank, build_id);
    match fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(&p, "delete")(e)),
    }
}

/// The build ids that have a file, and the paths of stray entries
/// (temporary files of interrupted writes, anything else).
pub(crate) fn list(bank: &Path) -> Result<(Vec<u64>, Vec<PathBuf>)> {
    let dir = bank.join(BUILDS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(io_err(&dir, "list")(e)),
    };
    let (mut ids, mut stray) = (Vec::new(), Vec::new());
    for entry in entries {
        let entry = entry.map_err(io_err(&dir, "list"))?;
        match entry.file_name().to_str().and_then(parse_name) {
            Some(id) => ids.push(id),
            None => stray.push(entry.path()),
        }
    }
    Ok((ids, stray))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_remove_and_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let bank = tmp.path();
        let entries = vec![
            (EntryKind::Block, 0, vec![1u8, 2, 3]),
            (EntryKind::Block, 1, vec![4u8; 10]),
            (EntryKind::Thumbnails, 0, vec![9u8; 7]),
        ];
        write(bank, 42, &entries).unwrap();
        assert_eq!(
            read(bank, 42, EntryKind::Block, 0).unwrap(),
            Some(vec![1, 2, 3])
        );
        assert_eq!(
            read(bank, 42, EntryKind::Block, 1).unwrap(),
            Some(vec![4; 10])
        );
        assert_eq!(
            read(bank, 42, EntryKind::Thumbnails, 0).unwrap(),
            Some(vec![9; 7])
        );
        assert_eq!(read(bank, 42, EntryKind::Block, 2).unwrap(), None);
        assert_eq!(read(bank, 7, EntryKind::Block, 0).unwrap(), None);
        assert_eq!(list(bank).unwrap(), (vec![42], vec![]));
        assert_eq!(parse_name("000000000000002a.build"), Some(42));
        assert_eq!(parse_name(".000000000000002a.tmp-1"), None);

        // A flipped body byte, a truncated file, a foreign file.
        let p = path(bank, 42);
        let good = fs::read(&p).unwrap();
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        fs::write(&p, &bad).unwrap();
        let err = read(bank, 42, EntryKind::Thumbnails, 0).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        fs::write(&p, &good[..good.len() - 3]).unwrap();
        assert!(read(bank, 42, EntryKind::Thumbnails, 0).is_err());
        fs::write(&p, b"hello").unwrap();
        assert!(read(bank, 42, EntryKind::Block, 0).is_err());
        let mut huge = good.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&p, &huge).unwrap();
        assert!(read(bank, 42, EntryKind::Block, 0).is_err());

        assert!(remove(bank, 42).unwrap());
        assert!(!remove(bank, 42).unwrap());

        let many: Vec<(u64, Entries)> = (1..=20)
            .map(|id| (id, vec![(EntryKind::Block, 0, vec![id as u8; 3])]))
            .collect();
        write_many(bank, &many).unwrap();
        let (mut ids, stray) = list(bank).unwrap();
        ids.sort();
        assert_eq!(ids, (1..=20).collect::<Vec<u64>>());
        assert!(stray.is_empty());
        assert_eq!(
            read(bank, 7, EntryKind::Block, 0).unwrap(),
            Some(vec![7; 3])
        );
    }
}
