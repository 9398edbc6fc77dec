//! Stable label ids: one number per class name, recorded in the bank, so that a class keeps its value in label PNGs across runs (`segment --label-ids bank`).
//!
//! The ids live in the `meta` tree: `label/NAME` holds a class's id (u32
//! LE, from 1; 0 is background) and `next_label_id` the next one to hand
//! out (u32 LE). They are no part of the class records, so recording them
//! needs no format change, and a bank written before them stays readable:
//! a class without a recorded id gets one, in creation order (creation
//! time, then build id, then name), after the highest recorded id. Reading
//! assigns them that way without writing; every write of classes records
//! them, so they never change after.
//!
//! * `add` of a new name: the next id; `add --replace`: the class keeps
//!   its id;
//! * `remove`: the id is kept for the name (re-adding it gets it back) and
//!   never handed to another class;
//! * `rename`: the new name takes the old name's id.

use std::collections::BTreeMap;

use super::record::{self, meta_key, ClassRecord};
use super::store::TreeId;
use super::{Bank, Result};

/// Every class name's stable label id, recorded or assigned.
pub type LabelIds = BTreeMap<String, u32>;

/// The ids of `classes`: those in `recorded` as they are, the others
/// numbered in creation order from `next` (and after every recorded id).
/// Returns the ids of the current classes and the next free id.
pub fn assign_label_ids(
    classes: &[ClassRecord],
    recorded: &LabelIds,
    next: u32,
) -> (LabelIds, u32) {
    let mut next = next
        .max(recorded.values().max().map_or(1, |m| m.saturating_add(1)))
        .max(1);
    let mut fresh: Vec<&ClassRecord> = classes
        .iter()
        .filter(|c| !recorded.contains_key(&c.name))
        .collect();
    fresh.sort_by(|a, b| {
        (a.created_unix, a.build_id, &a.name).cmp(&(b.created_unix, b.build_id, &b.name))
    });
    let mut out: LabelIds = classes
        .iter()
        .filter_map(|c| recorded.get(&c.name).map(|&id| (c.name.clone(), id)))
        .collect();
    for c in fresh {
        out.insert(c.name.clone(), next);
        next = next.saturating_add(1);
    }
    (out, next)
}

fn label_key(name: &str) -> Vec<u8> {
    let mut k = meta_key::LABEL_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

impl Bank {
    /// The recorded ids (also of removed classes) and the next free id.
    fn recorded_label_ids(&self) -> Result<(LabelIds, u32)> {
        let mut ids = LabelIds::new();
        for (k, v) in self
            .store
            .scan_prefix(TreeId::Meta, meta_key::LABEL_PREFIX)?
        {
            let name = String::from_utf8_lossy(&k[meta_key::LABEL_PREFIX.len()..]).into_owned();
            if let Ok(id) = record::decode_u32(&v) {
                ids.insert(name, id);
            }
        }
        let next = match self.store.get(TreeId::Meta, meta_key::NEXT_LABEL_ID)? {
            Some(v) => record::decode_u32(&v).unwrap_or(1),
            None => 1,
        };
        Ok((ids, next))
    }

    /// The stable label id of every class, by name (see the [module
    /// docs](self)); nothing is written.
    pub fn label_ids(&self) -> Result<LabelIds> {
        let (recorded, next) = self.recorded_label_ids()?;
        Ok(assign_label_ids(&self.classes()?, &recorded, next).0)
    }

    /// Record the ids of classes that have none yet (after a write of
    /// classes).
    pub(super) fn record_label_ids(&self) -> Result<()> {
        let (recorded, next) = self.recorded_label_ids()?;
        let (ids, new_next) = assign_label_ids(&self.classes()?, &recorded, next);
        let mut wrote = false;
        for (name, id) in &ids {
            if !recorded.contains_key(name) {
                self.store
                    .insert(TreeId::Meta, &label_key(name), &record::encode_u32(*id))?;
                wrote = true;
            }
        }
        if new_next != next || wrote {
            self.store.insert(
                TreeId::Meta,
                meta_key::NEXT_LABEL_ID,
                &record::encode_u32(new_next),
            )?;
            self.store.flush()?;
        }
        Ok(())
    }

    /// Records the wanted ids of names that have none yet, where no other
    /// name holds the id (before [`record_label_ids`](Bank::record_label_ids)
    /// numbers the rest).
    pub(super) fn adopt_label_ids(&self, wanted: &[(String, u32)]) -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        let (recorded, next) = self.recorded_label_ids()?;
        let mut used: std::collections::HashSet<u32> = recorded.values().copied().collect();
        let mut high = next;
        for (name, id) in wanted {
            if *id == 0 || recorded.contains_key(name) || !used.insert(*id) {
                continue;
            }
            self.store
                .insert(TreeId::Meta, &label_key(name), &record::encode_u32(*id))?;
            high = high.max(id.saturating_add(1));
        }
        if high != next {
            self.store.insert(
                TreeId::Meta,
                meta_key::NEXT_LABEL_ID,
                &record::encode_u32(high),
            )?;
        }
        Ok(())
    }

    /// After `old` was renamed to `new`: `new` takes `id`.
    pub(super) fn move_label_id(&self, old: &str, new: &str, id: u32) -> Result<()> {
        self.store.remove(TreeId::Meta, &label_key(old))?;
        self.store
            .insert(TreeId::Meta, &label_key(new), &record::encode_u32(id))?;
        self.record_label_ids()?;
        self.store.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::ClassSource;

    fn rec(name: &str, created: u64, build: u64) -> ClassRecord {
        ClassRecord {
            name: name.into(),
            stuff: false,
            source: ClassSource::Images { dir: "x".into() },
            split_method: "saliency".into(),
            created_unix: created,
            build_id: build,
            images_used: 1,
            images_skipped: 0,
            fallback_splits: 0,
            encoders: Vec::new(),
            support: Vec::new(),
            stats: None,
        }
    }

    #[test]
    fn ids_follow_creation_order_and_keep_recorded_ones() {
        let classes = [rec("b", 5, 2), rec("a", 9, 3), rec("c", 5, 1)];
        let (ids, next) = assign_label_ids(&classes, &LabelIds::new(), 1);
        assert_eq!(ids["c"], 1);
        assert_eq!(ids["b"], 2);
        assert_eq!(ids["a"], 3);
        assert_eq!(next, 4);
        // A removed class's id (7) is never handed out again.
        let recorded = LabelIds::from([("a".into(), 3), ("gone".into(), 7)]);
        let (ids, next) = assign_label_ids(&classes, &recorded, 4);
        assert_eq!((ids["a"], ids["c"], ids["b"]), (3, 8, 9));
        assert_eq!(next, 10);
        assert!(!ids.contains_key("gone"));
    }
}
