//! Deterministic shards: which worker of N owns a class name or an image path.
//!
//! A batch of work (the classes of a classes file, the images of a
//! collection) is split over N workers by a stable hash of each item's key,
//! not by its position: the key's 64-bit XXH3 (seed 0, a specified
//! algorithm whose value is the same on every platform and in every
//! release), reduced modulo N. So adding lines to a classes file, or images
//! to a folder, never moves the other items to another shard, and every
//! worker decides alone, without talking to the others, which items are
//! its own. The shards of one N are disjoint and together hold every item.
//!
//! Keys: a class name as it is written (UTF-8 bytes); an image's path
//! relative to the folder it was found in, with `/` between components on
//! every platform ([`path_key`]).
//!
//! ```
//! use ovdiff_core::shard::Shard;
//! let names = ["cat", "dog", "cow", "owl", "emu"];
//! let mut seen = 0;
//! for i in 0..3 {
//!     let shard: Shard = format!("{i}/3").parse().unwrap();
//!     seen += names.iter().filter(|n| shard.owns(n)).count();
//! }
//! assert_eq!(seen, names.len()); // disjoint, and nothing is left out
//! ```

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::Error;

/// Shard `index` of `count` (`0 <= index < count`): written `I/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// Shard `index` of `count`.
    ///
    /// # Errors
    ///
    /// `count` is 0, or `index` is not below it.
    pub fn new(index: u32, count: u32) -> Result<Shard, Error> {
        if count == 0 {
            return Err(Error::Invalid(format!(
                "shard {index}/0: the shard count must be at least 1 (e.g. `--shard 0/4` for the \
                 first of four workers)"
            )));
        }
        if index >= count {
            return Err(Error::Invalid(format!(
                "shard {index}/{count}: shards are numbered from 0, so the index must be below \
                 {count} (0/{count} … {}/{count}; on Slurm: `--shard \
                 $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT` with `--array=0-{}`)",
                count - 1,
                count - 1
            )));
        }
        Ok(Shard { index, count })
    }

    /// The whole: shard 0 of 1, which owns every key.
    pub fn whole() -> Shard {
        Shard { index: 0, count: 1 }
    }

    /// This shard's index, from 0.
    pub fn index(self) -> u32 {
        self.index
    }

    /// The number of shards.
    pub fn count(self) -> u32 {
        self.count
    }

    /// The shard of `count` that owns `key`.
    pub fn of(key: &str, count: u32) -> u32 {
        // `count` is at least 1 for every `Shard`; 0 would be a bug.
        (stable_hash(key.as_bytes()) % u64::from(count.max(1))) as u32
    }

    /// Whether this shard owns `key` (a class name, or a [`path_key`]).
    pub fn owns(self, key: &str) -> bool {
        Shard::of(key, self.count) == self.index
    }

    /// Whether this shard owns the image at `rel`, a path relative to the
    /// folder it was found in ([`path_key`]).
    pub fn owns_path(self, rel: &Path) -> bool {
        self.owns(&path_key(rel))
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = Error;

    /// `I/N`, e.g. `0/4`, `3/4`.
    fn from_str(s: &str) -> Result<Shard, Error> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "`{s}` is not a shard: {why}; write INDEX/COUNT with INDEX from 0, e.g. `0/4` \
                 … `3/4` for four workers"
            ))
        };
        let (i, n) = s.trim().split_once('/').ok_or_else(|| bad("no `/`"))?;
        let i: u32 = i
            .trim()
            .parse()
            .map_err(|_| bad("the index is not a whole number"))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a whole number"))?;
        Shard::new(i, n)
    }
}

/// The shard key of an image at `rel`, relative to the folder it was found
/// in: its components joined by `/` (`sub/x.png` on every platform), with
/// `.` components dropped.
pub fn path_key(rel: &Path) -> String {
    rel.components()
        .filter_map(|c| match c {
            std::path::Component::CurDir => None,
            c => Some(c.as_os_str().to_string_lossy().into_owned()),
        })
        .collect::<Vec<String>>()
        .join("/")
}

/// XXH3-64 with seed 0: the same value for the same bytes on every platform.
fn stable_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn parses_i_of_n_and_refuses_the_rest_saying_what_to_write() {
        assert_eq!("2/4".parse::<Shard>().unwrap(), Shard::new(2, 4).unwrap());
        assert_eq!(" 0 / 1 ".parse::<Shard>().unwrap(), Shard::whole());
        assert_eq!(Shard::new(3, 4).unwrap().to_string(), "3/4");
        for (bad, says) in [
            ("4/4", "below 4"),
            ("0/0", "at least 1"),
            ("x", "no `/`"),
            ("1/x", "count is not a whole number"),
            ("-1/4", "index is not a whole number"),
            ("", "no `/`"),
        ] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            if bad != "0/0" && bad != "4/4" {
                assert!(e.contains("e.g. `0/4`"), "{bad}: {e}");
            }
        }
    }

    #[test]
    fn the_hash_is_pinned() {
        // XXH3-64 is specified: these values may never change, or every
        // running sharded job would split its work differently.
        assert_eq!(stable_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(Shard::of("cat", 1), 0);
        let pinned: Vec<u32> = ["c1", "c2", "c3", "c4", "c5", "c6"]
            .iter()
            .map(|c| Shard::of(c, 4))
            .collect();
        assert_eq!(pinned, PINNED_C1_TO_C6_OF_4);
    }

    /// The shards of `c1`…`c6` of 4 (see [`the_hash_is_pinned`]).
    const PINNED_C1_TO_C6_OF_4: [u32; 6] = [2, 1, 2, 3, 1, 3];

    #[test]
    fn shards_are_disjoint_cover_everything_and_are_even() {
        let keys: Vec<String> = (0..500).map(|i| format!("class {i}")).collect();
        for n in [1u32, 2, 3, 7] {
            let owners: Vec<u32> = keys.iter().map(|k| Shard::of(k, n)).collect();
            for (k, &o) in keys.iter().zip(&owners) {
                let mine: Vec<u32> = (0..n)
                    .filter(|&i| Shard::new(i, n).unwrap().owns(k))
                    .collect();
                assert_eq!(mine, [o], "exactly one shard owns {k}");
            }
            // roughly even: every shard gets at least half its share
            for i in 0..n {
                let got = owners.iter().filter(|&&o| o == i).count();
                assert!(got * 2 * n as usize >= keys.len(), "{i}/{n}: {got}");
            }
        }
    }

    #[test]
    fn path_keys_use_slashes_and_drop_dot_components() {
        assert_eq!(path_key(&PathBuf::from("sub/x.png")), "sub/x.png");
        assert_eq!(path_key(&PathBuf::from("./sub/./x.png")), "sub/x.png");
        let s = Shard::new(1, 3).unwrap();
        assert_eq!(s.owns_path(Path::new("./a/b.jpg")), s.owns("a/b.jpg"));
    }
}
