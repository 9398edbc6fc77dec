//! The record types of the bank: encoders, classes (as drafted, stored, and
//! as bank format 1 stored them), their support images, build statistics and
//! prototype counts, and the rules for class names and fingerprints.

use std::fmt;

use ovdiff_core::prototype::{Level, Prototype, Side};

/// The only element type prototype vectors are stored in.
pub const DTYPE_F16: &str = "f16";

/// Length of an encoder fingerprint: a lowercase hex SHA-256 digest.
pub const FINGERPRINT_LEN: usize = 64;

/// Longest class name accepted, in bytes.
pub const MAX_CLASS_NAME_BYTES: usize = 128;

/// An encoder (feature extractor) whose prototypes the bank holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderInfo {
    /// 64 lowercase hex digits: the SHA-256 of the encoder's weights.
    pub fingerprint: String,
    /// Human-readable name (e.g. the model name).
    pub name: String,
    /// Feature dimension of the vectors it yields.
    pub dim: u32,
    /// Element type the vectors are stored in; always [`DTYPE_F16`].
    pub dtype: String,
}

/// Where a class's support images came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassSource {
    /// Images supplied by the user from a directory.
    Images {
        /// The directory, as given.
        dir: String,
    },
    /// Images synthesised by a generator model.
    Generator {
        /// SHA-256 fingerprint of the generator's weights.
        fingerprint: String,
        /// Generation parameters (prompt, seed, steps, …) as key/value pairs.
        params: Vec<(String, String)>,
    },
}

/// One support image of a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportImageInfo {
    /// The original file name.
    pub name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// How a class build went: recorded by the builder, shown by `show`, kept by
/// export and import. Banks of format 1 have none (see [`ClassRecordV1`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BuildStats {
    /// Version of the ovdiff-bank that built the class.
    pub tool_version: String,
    /// Wall-clock time of the whole build, sampling included, in milliseconds.
    pub total_ms: u64,
    /// Time spent sampling support images with a generator (0 for `--images`).
    pub sample_ms: u64,
    /// Time spent decoding and thumbnailing support images.
    pub decode_ms: u64,
    /// Time spent in encoder forward passes.
    pub encode_ms: u64,
    /// Time spent pooling prototypes (K-means included).
    pub pool_ms: u64,
    /// Foreground patches over all support images, first encoder.
    pub fg_patches: u64,
    /// Background patches over all support images, first encoder.
    pub bg_patches: u64,
}

/// Number of prototypes per (level, side) for one encoder of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrototypeCounts {
    /// Class-level foreground prototypes.
    pub class_fg: u32,
    /// Class-level background prototypes.
    pub class_bg: u32,
    /// Instance-level foreground prototypes.
    pub instance_fg: u32,
    /// Instance-level background prototypes.
    pub instance_bg: u32,
    /// Part-level foreground prototypes.
    pub part_fg: u32,
    /// Part-level background prototypes.
    pub part_bg: u32,
}

impl PrototypeCounts {
    /// The counter for `level` and `side`.
    pub fn get(&self, level: Level, side: Side) -> u32 {
        *self.slot(level, side)
    }

    /// Sum of all six counters.
    pub fn total(&self) -> u64 {
        self.to_array().iter().map(|&c| u64::from(c)).sum()
    }

    /// Counts the prototypes of `protos`.
    pub fn of(protos: &[Prototype]) -> PrototypeCounts {
        let mut counts = PrototypeCounts::default();
        for p in protos {
            let c = counts.slot_mut(p.level, p.side);
            *c = c.saturating_add(1);
        }
        counts
    }

    fn slot(&self, level: Level, side: Side) -> &u32 {
        match (level, side) {
            (Level::Class, Side::Foreground) => &self.class_fg,
            (Level::Class, Side::Background) => &self.class_bg,
            (Level::Instance, Side::Foreground) => &self.instance_fg,
            (Level::Instance, Side::Background) => &self.instance_bg,
            (Level::Part, Side::Foreground) => &self.part_fg,
            (Level::Part, Side::Background) => &self.part_bg,
        }
    }

    fn slot_mut(&mut self, level: Level, side: Side) -> &mut u32 {
        match (level, side) {
            (Level::Class, Side::Foreground) => &mut self.class_fg,
            (Level::Class, Side::Background) => &mut self.class_bg,
            (Level::Instance, Side::Foreground) => &mut self.instance_fg,
            (Level::Instance, Side::Background) => &mut self.instance_bg,
            (Level::Part, Side::Foreground) => &mut self.part_fg,
            (Level::Part, Side::Background) => &mut self.part_bg,
        }
    }

    pub(super) fn to_array(self) -> [u32; 6] {
        [
            self.class_fg,
            self.class_bg,
            self.instance_fg,
            self.instance_bg,
            self.part_fg,
            self.part_bg,
        ]
    }

    pub(super) fn from_array(a: [u32; 6]) -> PrototypeCounts {
        PrototypeCounts {
            class_fg: a[0],
            class_bg: a[1],
            instance_fg: a[2],
            instance_bg: a[3],
            part_fg: a[4],
            part_bg: a[5],
        }
    }
}

/// What a class holds for one encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassEncoderEntry {
    /// The encoder's fingerprint (see [`EncoderInfo::fingerprint`]).
    pub fingerprint: String,
    /// Prototypes per (level, side).
    pub counts: PrototypeCounts,
    /// Total number of prototypes stored for this encoder.
    pub prototype_count: u32,
}

/// Everything the caller knows about a class before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRecordDraft {
    /// Class name (validated, see [`validate_class_name`]).
    pub name: String,
    /// True for *stuff* classes (sky, grass, …), which keep only foreground prototypes.
    pub stuff: bool,
    /// Where the support images came from.
    pub source: ClassSource,
    /// Name of the foreground/background split method used.
    pub split_method: String,
    /// Support images that produced prototypes.
    pub images_used: u32,
    /// Support images skipped (unreadable, empty mask, …).
    pub images_skipped: u32,
    /// Images whose split fell back to a simpler method.
    pub fallback_splits: u32,
    /// The support images, in the order prototypes refer to them.
    pub support: Vec<SupportImageInfo>,
    /// When the class was first built, seconds since the Unix epoch; `None`
    /// stamps the time it is stored (an import keeps the file's time).
    pub created_unix: Option<u64>,
    /// How the build went, when known.
    pub stats: Option<BuildStats>,
}

/// A stored class: the draft plus what the bank assigned when storing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRecord {
    /// Class name.
    pub name: String,
    /// True for *stuff* classes.
    pub stuff: bool,
    /// Where the support images came from.
    pub source: ClassSource,
    /// Name of the foreground/background split method used.
    pub split_method: String,
    /// When this build was stored, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Identifier of the build whose prototypes and support data this record points to.
    pub build_id: u64,
    /// Support images that produced prototypes.
    pub images_used: u32,
    /// Support images skipped.
    pub images_skipped: u32,
    /// Images whose split fell back to a simpler method.
    pub fallback_splits: u32,
    /// Per encoder; the index in this list is the encoder *slot* used in keys.
    pub encoders: Vec<ClassEncoderEntry>,
    /// The support images.
    pub support: Vec<SupportImageInfo>,
    /// How the build went; `None` for classes built before bank format 2.
    pub stats: Option<BuildStats>,
}

/// A class record as bank format 1 stored it, frozen: never change it. It
/// converts to the current [`ClassRecord`] with [`From`] (no statistics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRecordV1 {
    /// Class name.
    pub name: String,
    /// True for *stuff* classes.
    pub stuff: bool,
    /// Where the support images came from.
    pub source: ClassSource,
    /// Name of the foreground/background split method used.
    pub split_method: String,
    /// When this build was stored, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Identifier of the build the record points to.
    pub build_id: u64,
    /// Support images that produced prototypes.
    pub images_used: u32,
    /// Support images skipped.
    pub images_skipped: u32,
    /// Images whose split fell back to a simpler method.
    pub fallback_splits: u32,
    /// Per encoder.
    pub encoders: Vec<ClassEncoderEntry>,
    /// The support images.
    pub support: Vec<SupportImageInfo>,
}

impl From<ClassRecordV1> for ClassRecord {
    fn from(v1: ClassRecordV1) -> ClassRecord {
        ClassRecord {
            name: v1.name,
            stuff: v1.stuff,
            source: v1.source,
            split_method: v1.split_method,
            created_unix: v1.created_unix,
            build_id: v1.build_id,
            images_used: v1.images_used,
            images_skipped: v1.images_skipped,
            fallback_splits: v1.fallback_splits,
            encoders: v1.encoders,
            support: v1.support,
            stats: None,
        }
    }
}

impl ClassRecord {
    /// Slot (index into [`ClassRecord::encoders`]) of the encoder with `fingerprint`.
    pub fn encoder_slot(&self, fingerprint: &str) -> Option<u16> {
        self.encoders
            .iter()
            .position(|e| e.fingerprint == fingerprint)
            .and_then(|i| u16::try_from(i).ok())
    }
}

/// Why a class name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassNameProblem {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_CLASS_NAME_BYTES`] bytes.
    TooLong,
    /// The name contains a control character.
    ControlCharacter,
    /// The name starts or ends with whitespace.
    SurroundingWhitespace,
}

impl fmt::Display for ClassNameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClassNameProblem::Empty => "it is empty",
            ClassNameProblem::TooLong => "it is longer than 128 bytes",
            ClassNameProblem::ControlCharacter => "it contains a control character",
            ClassNameProblem::SurroundingWhitespace => "it starts or ends with whitespace",
        })
    }
}

/// Checks a class name: non-empty, at most 128 bytes of UTF-8, no control
/// characters, no leading or trailing whitespace.
pub fn validate_class_name(name: &str) -> std::result::Result<(), ClassNameProblem> {
    if name.is_empty() {
        return Err(ClassNameProblem::Empty);
    }
    if name.len() > MAX_CLASS_NAME_BYTES {
        return Err(ClassNameProblem::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(ClassNameProblem::ControlCharacter);
    }
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return Err(ClassNameProblem::SurroundingWhitespace);
    }
    Ok(())
}

/// True when `fp` is 64 lowercase hex digits.
pub fn is_valid_fingerprint(fp: &str) -> bool {
    fp.len() == FINGERPRINT_LEN && fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    #[test]
    fn class_names_are_validated() {
        assert!(validate_class_name("traffic light").is_ok());
        assert!(validate_class_name("chat noir é").is_ok());
        assert_eq!(validate_class_name(""), Err(ClassNameProblem::Empty));
        assert_eq!(
            validate_class_name(&"x".repeat(129)),
            Err(ClassNameProblem::TooLong)
        );
        assert!(validate_class_name(&"x".repeat(128)).is_ok());
        assert_eq!(
            validate_class_name("a\nb"),
            Err(ClassNameProblem::ControlCharacter)
        );
        assert_eq!(
            validate_class_name(" cat"),
            Err(ClassNameProblem::SurroundingWhitespace)
        );
        assert_eq!(
            validate_class_name("cat\u{a0}"),
            Err(ClassNameProblem::SurroundingWhitespace)
        );
    }

    #[test]
    fn counts_index_by_level_and_side() {
        let c = PrototypeCounts::from_array([1, 2, 3, 4, 5, 6]);
        assert_eq!(c.get(Level::Instance, Side::Background), 4);
        assert_eq!(c.get(Level::Part, Side::Foreground), 5);
        assert_eq!(c.total(), 21);
    }

    #[test]
    fn fingerprints_are_lowercase_hex() {
        assert!(is_valid_fingerprint(&fp('0')));
        assert!(!is_valid_fingerprint(&fp('A')));
        assert!(!is_valid_fingerprint("abc"));
    }
}
