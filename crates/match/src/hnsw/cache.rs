//! The checked cache file of an HNSW graph (the layout is in the [module docs](super)): written atomically and streamed, every field through `ovdiff_core::codec`; read back only when every check passes.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::Array2;
use ovdiff_core::atomic::{write_atomic_with, AtomicFile};
use ovdiff_core::codec::{u64_at, Reader, Truncated, WriteLe};
use sha2::{Digest, Sha256};

use super::build::col_of;
use super::graph::{dot_kernel, Graph, UpperLayer, MAX_LAYERS};
use super::{
    Fingerprint, HnswMatcher, HnswParams, HnswStats, CACHE_FORMAT_VERSION, HNSW_RS_VERSION,
};
use crate::vocabulary::NO_PROTO;
use crate::{Error, Result};

const MAGIC: [u8; 8] = *b"OVDHNSW\0";
/// Bytes of payload encoded before they are hashed and written out.
const WRITE_CHUNK: usize = 1 << 20;
/// Words encoded, or read from the file, at a time.
const CHUNK_WORDS: usize = 1 << 16;

impl HnswMatcher {
    /// Write the graph to `path` (see the [module docs](super) for the
    /// layout) atomically (`ovdiff_core::atomic`), streamed: the payload is
    /// never held in memory next to the graph.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic_with(path, |file| self.write_cache(file))
    }

    /// The header with a blank payload length and checksum, the payload,
    /// then the two filled in.
    fn write_cache(&self, file: &mut BufWriter<AtomicFile>) -> io::Result<()> {
        let prefix = header_prefix(&self.fingerprint, &self.params);
        file.write_all(&prefix)?;
        file.write_all(&[0u8; 8 + 32])?;
        let mut w = PayloadWriter {
            out: &mut *file,
            buf: Vec::with_capacity(WRITE_CHUNK + (1 << 18)),
            hasher: Sha256::new(),
            written: 0,
        };
        w.hasher.update(&prefix);
        self.write_payload(&mut w)?;
        let (payload_len, checksum) = w.finish()?;
        let mut tail = Vec::with_capacity(8 + 32);
        tail.put_u64(payload_len);
        tail.extend_from_slice(&checksum);
        file.seek(SeekFrom::Start(prefix.len() as u64))?;
        file.write_all(&tail)
    }

    fn write_payload<W: Write>(&self, w: &mut PayloadWriter<W>) -> io::Result<()> {
        let g = &self.graph;
        w.len(g.dim)?;
        w.len(g.num_rows())?;
        w.len(self.names.len())?;
        for n in &self.names {
            w.len(n.len())?;
            w.bytes(n.as_bytes())?;
        }
        w.len(self.segments.len())?;
        for s in &self.segments {
            w.len(s.start)?;
            w.len(s.end)?;
        }
        w.len(self.orphans.len())?;
        w.u32s(&self.orphans)?;
        w.len(self.stats.build.as_nanos() as usize)?;
        w.len(self.stats.orphan_check.as_nanos() as usize)?;
        w.u32s(&[g.entry])?;
        w.u32s(&g.l0_off)?;
        w.u32s(&g.l0)?;
        w.len(g.upper.len())?;
        for l in &g.upper {
            w.len(l.ids.len())?;
            w.u32s(&l.ids)?;
            w.u32s(&l.off)?;
            w.u32s(&l.nb)?;
        }
        w.f32s(&g.rows)
    }

    /// Read a graph saved by [`save`](Self::save). `Ok(None)` means
    /// "rebuild": the file is missing, foreign, of another format version or
    /// platform tag, indexes something else than `expected` says, or fails
    /// its checksum or consistency checks. I/O errors other than a missing
    /// or short file are errors.
    pub fn load(path: &Path, expected: &Fingerprint) -> Result<Option<HnswMatcher>> {
        Ok(Self::load_with_reason(path, expected)?.ok())
    }

    /// [`load`](Self::load), saying why a file was not used: `Ok(Err(why))`
    /// means "rebuild" (`why` is a short phrase such as `"checksum
    /// mismatch"` or `"no cache file"`, for messages).
    pub fn load_with_reason(
        path: &Path,
        expected: &Fingerprint,
    ) -> Result<std::result::Result<HnswMatcher, String>> {
        match Self::try_load(path, expected) {
            Ok(m) => Ok(Ok(m)),
            Err(LoadFail::Reject(why)) => Ok(Err(why)),
            Err(LoadFail::Io(source)) => Err(Error::Io {
                context: "reading the HNSW cache",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// [`load`](Self::load), with the reason for a rejection.
    pub(super) fn try_load(path: &Path, expected: &Fingerprint) -> Result<HnswMatcher, LoadFail> {
        let t = Instant::now();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(reject("no cache file")),
            Err(e) => return Err(LoadFail::Io(e)),
        };
        let file_len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);

        // The header, field by field against what this build writes.
        let mine = header_prefix(expected, &HnswParams::default());
        let mut got = vec![0u8; 8 + 4 + 2];
        r.read_exact(&mut got)?;
        if got[..8] != MAGIC {
            return Err(reject("not an HNSW cache file"));
        }
        if got[8..12] != mine[8..12] {
            return Err(reject("another cache format version"));
        }
        for _ in 0..2 {
            let mut len = [0u8; 1];
            r.read_exact(&mut len)?;
            got.push(len[0]);
            let at = got.len();
            got.resize(at + len[0] as usize, 0);
            r.read_exact(&mut got[at..])?;
        }
        let tag_len = mine.len() - 32 - 8 * 5;
        if got[..] != mine[..tag_len] {
            return Err(reject("built for another platform or version"));
        }
        let at = got.len();
        got.resize(at + 32 + 8 * 5, 0);
        r.read_exact(&mut got[at..])?;
        if got[at..at + 32] != expected.as_bytes()[..] {
            return Err(reject("indexes other prototypes or build parameters"));
        }
        let mut fields = [0usize; 5];
        let mut fr = Reader::new(&got[at + 32..]);
        for f in fields.iter_mut() {
            let v = fr.u64().expect("invariant: five parameters were read");
            *f = usize::try_from(v).map_err(|_| reject("bad parameters"))?;
        }
        let params = HnswParams {
            m: fields[0],
            ef_construction: fields[1],
            ef_search: fields[2],
            ef_upper: fields[3],
            k: fields[4],
        };
        params.validate().map_err(|_| reject("bad parameters"))?;
        let mut tail = [0u8; 8 + 32];
        r.read_exact(&mut tail)?;
        let payload_len = u64_at(&tail, 0).expect("invariant: the tail was read");
        let checksum = &tail[8..];
        let payload_start = (got.len() + tail.len()) as u64;
        if file_len.checked_sub(payload_start) != Some(payload_len) {
            return Err(reject("wrong file length"));
        }

        // The payload, hashed while it is parsed; counts are checked
        // against the bytes left before anything is allocated.
        let mut h = Sha256::new();
        h.update(&got);
        let mut p = Payload {
            r,
            hasher: h,
            left: payload_len,
        };
        let dim = p.len()?;
        let rows = p.len()?;
        let n_names = p.count(8)?;
        let mut names = Vec::with_capacity(n_names);
        for _ in 0..n_names {
            let len = p.count(1)?;
            let bytes = p.bytes(len)?;
            names.push(String::from_utf8(bytes).map_err(|_| reject("bad class name"))?);
        }
        let cols = p.count(16)?;
        let mut segments = Vec::with_capacity(cols);
        for _ in 0..cols {
            let s = p.len()?;
            let e = p.len()?;
            segments.push(s..e);
        }
        let n_orphans = p.count(4)?;
        let orphans = p.u32s(n_orphans)?;
        let build = Duration::from_nanos(p.u64()?);
        let orphan_check = Duration::from_nanos(p.u64()?);
        let entry = p.u32s(1)?[0];
        if rows == 0 || dim == 0 || rows >= NO_PROTO as usize {
            return Err(reject("bad sizes"));
        }
        let l0_off = p.u32s(rows.checked_add(1).ok_or_else(|| reject("bad sizes"))?)?;
        let links = *l0_off.last().expect("rows + 1 offsets") as usize;
        let l0 = p.u32s(links)?;
        let n_upper = p.count(8)?;
        if n_upper >= MAX_LAYERS {
            return Err(reject("too many layers"));
        }
        let mut upper = Vec::with_capacity(n_upper);
        for _ in 0..n_upper {
            let nodes = p.count(8)?;
            let ids = p.u32s(nodes)?;
            let off = p.u32s(nodes + 1)?;
            let nb = p.u32s(*off.last().expect("nodes + 1 offsets") as usize)?;
            upper.push(UpperLayer { ids, off, nb });
        }
        let values = rows.checked_mul(dim).ok_or_else(|| reject("bad sizes"))?;
        let data = p.f32s(values)?;
        if p.left != 0 {
            return Err(reject("bytes after the rows"));
        }
        let mut len = Vec::with_capacity(8);
        len.put_u64(payload_len);
        p.hasher.update(&len);
        if <[u8; 32]>::from(p.hasher.finalize()) != checksum {
            return Err(reject("checksum mismatch"));
        }

        // Consistency, then the fingerprint of what was read.
        let col_of = col_of(&segments, rows).ok_or_else(|| reject("bad segments"))?;
        let bad_offsets = |off: &[u32], len: usize| {
            off[0] != 0 || off.windows(2).any(|w| w[0] > w[1]) || off.last() != Some(&(len as u32))
        };
        if cols != names.len() + 1
            || orphans.iter().any(|&o| o as usize >= rows)
            || entry as usize >= rows
            || bad_offsets(&l0_off, l0.len())
            || l0.iter().any(|&x| x as usize >= rows)
            || upper.iter().any(|l| {
                bad_offsets(&l.off, l.nb.len())
                    || l.ids.windows(2).any(|w| w[0] >= w[1])
                    || l.ids.iter().chain(&l.nb).any(|&x| x as usize >= rows)
            })
            || upper
                .last()
                .is_some_and(|l| l.ids.binary_search(&entry).is_err())
            || data.iter().any(|v| !v.is_finite())
        {
            return Err(reject("inconsistent graph"));
        }
        if Fingerprint::of_parts(&names, &segments, &data, dim, &params) != *expected {
            return Err(reject("contents do not match the fingerprint"));
        }
        let upper_layers = upper.len();
        let mut m = HnswMatcher {
            names,
            params,
            segments,
            col_of,
            graph: Graph {
                dim,
                rows: data,
                l0_off,
                l0,
                upper,
                entry,
                dot: dot_kernel(),
            },
            stats: HnswStats {
                points: rows,
                orphans: orphans.len(),
                upper_layers,
                build,
                orphan_check,
                loaded: Some(t.elapsed()),
            },
            orphans: Vec::new(),
            orphan_rows: Array2::zeros((0, dim)),
            fingerprint: *expected,
            threads: 0,
        };
        m.set_orphans(orphans);
        Ok(m)
    }
}

/// Why a cache file was not used.
#[derive(Debug)]
pub(super) enum LoadFail {
    /// Rebuild: the file is not a usable cache for these prototypes.
    Reject(String),
    /// Reading failed.
    Io(io::Error),
}

fn reject(why: &str) -> LoadFail {
    LoadFail::Reject(why.to_string())
}

impl From<io::Error> for LoadFail {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            reject("truncated")
        } else {
            LoadFail::Io(e)
        }
    }
}

/// The payload writer: encodes fields into a buffer, then hashes, counts
/// and writes it out a chunk at a time.
struct PayloadWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> PayloadWriter<W> {
    /// A length or count, as a `u64`.
    fn len(&mut self, v: usize) -> io::Result<()> {
        self.buf.put_u64(v as u64);
        self.spill()
    }

    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(b);
        self.spill()
    }

    fn u32s(&mut self, v: &[u32]) -> io::Result<()> {
        for c in v.chunks(CHUNK_WORDS) {
            self.buf.put_u32s(c);
            self.spill()?;
        }
        Ok(())
    }

    fn f32s(&mut self, v: &[f32]) -> io::Result<()> {
        for c in v.chunks(CHUNK_WORDS) {
            self.buf.put_f32s(c);
            self.spill()?;
        }
        Ok(())
    }

    /// Write the buffer out once it holds a chunk.
    fn spill(&mut self) -> io::Result<()> {
        if self.buf.len() >= WRITE_CHUNK {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.hasher.update(&self.buf);
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// The payload's length and the checksum (the hash so far, then the
    /// length).
    fn finish(mut self) -> io::Result<(u64, [u8; 32])> {
        self.drain()?;
        let mut len = Vec::with_capacity(8);
        len.put_u64(self.written);
        self.hasher.update(&len);
        Ok((self.written, self.hasher.finalize().into()))
    }
}

/// The payload reader: hashes what it reads and refuses counts larger than
/// the bytes left.
struct Payload<R: Read> {
    r: R,
    hasher: Sha256,
    left: u64,
}

impl<R: Read> Payload<R> {
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, LoadFail> {
        if n as u64 > self.left {
            return Err(reject("a length runs past the end"));
        }
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b)?;
        self.hasher.update(&b);
        self.left -= n as u64;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, LoadFail> {
        let b = self.bytes(8)?;
        Ok(Reader::new(&b).u64().expect("invariant: 8 bytes were read"))
    }

    /// A `u64` that fits `usize`.
    fn len(&mut self) -> Result<usize, LoadFail> {
        usize::try_from(self.u64()?).map_err(|_| reject("a length does not fit"))
    }

    /// A count of items of at least `each` bytes that fit in what is left.
    fn count(&mut self, each: usize) -> Result<usize, LoadFail> {
        let n = self.len()?;
        match n.checked_mul(each) {
            Some(b) if b as u64 <= self.left => Ok(n),
            _ => Err(reject("a count runs past the end")),
        }
    }

    fn u32s(&mut self, n: usize) -> Result<Vec<u32>, LoadFail> {
        self.words(n, |r, m| r.u32s(m))
    }

    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, LoadFail> {
        self.words(n, |r, m| r.f32s(m))
    }

    /// `n` four-byte words, read [`CHUNK_WORDS`] at a time and decoded by
    /// `decode`.
    fn words<T>(
        &mut self,
        n: usize,
        decode: impl Fn(&mut Reader<'_>, usize) -> std::result::Result<Vec<T>, Truncated>,
    ) -> Result<Vec<T>, LoadFail> {
        match n.checked_mul(4) {
            Some(b) if b as u64 <= self.left => {}
            _ => return Err(reject("a count runs past the end")),
        }
        let mut out = Vec::with_capacity(n);
        let mut buf = vec![0u8; n.min(CHUNK_WORDS) * 4];
        let mut left = n;
        while left > 0 {
            let m = left.min(CHUNK_WORDS);
            let b = &mut buf[..m * 4];
            self.r.read_exact(b)?;
            self.hasher.update(&*b);
            out.extend(decode(&mut Reader::new(b), m).expect("invariant: m words were read"));
            left -= m;
        }
        self.left -= n as u64 * 4;
        Ok(out)
    }
}

/// The header bytes up to (not including) the payload length: magic,
/// format version, platform tag, fingerprint, parameters.
pub(super) fn header_prefix(fp: &Fingerprint, params: &HnswParams) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC);
    h.put_u32(CACHE_FORMAT_VERSION);
    h.push(if cfg!(target_endian = "little") { 1 } else { 2 });
    h.push(std::mem::size_of::<usize>() as u8);
    for s in [HNSW_RS_VERSION, env!("CARGO_PKG_VERSION")] {
        let s = &s.as_bytes()[..s.len().min(255)];
        h.push(s.len() as u8);
        h.extend_from_slice(s);
    }
    h.extend_from_slice(fp.as_bytes());
    for v in params.fields() {
        h.put_u64(v as u64);
    }
    h
}
