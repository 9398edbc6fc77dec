//! Why pixels got their labels: per class found, the support images and prototypes that won them, and the explain sheet's rows.

use std::collections::BTreeMap;

use crate::fusion::LabelMap;
use crate::query::{MemberPlan, Restricted};
use crate::render::{ExplainMatch, ExplainRow, PatchMask};
use crate::segmentation::{ClassFound, ProtoMatch, SupportMatch};
use crate::Result;
use ovdiff_core::prototype::{Level, Side};
use ovdiff_store::bank::ClassRecord;
use ovdiff_store::class_store::ClassStore;

/// Support images listed per class found.
const SUPPORT_PER_CLASS: usize = 3;
/// Prototypes listed per support image.
const PROTOTYPES_PER_IMAGE: usize = 5;

/// Pixels a support image won for a class: in all, and per (kind, prototype id).
type ImageWins = (u64, BTreeMap<(String, u32), u64>);

/// A prototype's level and side as the report names them (`part fg`).
pub(crate) fn kind(level: Level, side: Side) -> String {
    let l = match level {
        Level::Class => "class",
        Level::Instance => "instance",
        Level::Part => "part",
    };
    let s = match side {
        Side::Foreground => "fg",
        Side::Background => "bg",
    };
    format!("{l} {s}")
}

/// The classes of `records` (the query, in order) found in `labels`, each
/// with its pixels, mean score and the support images whose prototypes won
/// them. `members` are the whole query's plans; `narrowed`, the plans the
/// pixels were matched with when the pre-filter narrowed the query.
pub(crate) fn found_classes(
    labels: &LabelMap,
    records: &[ClassRecord],
    members: &[&MemberPlan],
    narrowed: Option<&Restricted>,
) -> Vec<ClassFound> {
    let counts = labels.pixel_counts(records.len() + 1);
    let total = (labels.w as u64 * labels.h as u64).max(1);
    // Mean winning score per label.
    let mut score_sum = vec![0f64; records.len() + 1];
    for (l, s) in labels.labels.iter().zip(&labels.score) {
        score_sum[*l as usize] += f64::from(*s);
    }
    // Pixels won per (label, support image) and per prototype.
    let mut per_image: BTreeMap<(u16, u32), ImageWins> = BTreeMap::new();
    for ((label, source, row), pixels) in labels.proto_wins() {
        if label == 0 {
            continue;
        }
        let m = members[source as usize];
        let r = match narrowed {
            Some(narrow) => narrow.proto_ref(source as usize, row),
            None => m.vocabulary.proto_ref(row),
        };
        let Some(r) = r else {
            continue;
        };
        let Some(p) = m.classes[r.class as usize - 1].metas.get(r.id as usize) else {
            continue;
        };
        let e = per_image
            .entry((label, p.image))
            .or_insert_with(|| (0, BTreeMap::new()));
        e.0 += pixels;
        *e.1.entry((kind(p.level, p.side), r.id)).or_insert(0) += pixels;
    }
    let mut classes = Vec::new();
    for (k, rec) in records.iter().enumerate() {
        let label = (k + 1) as u16;
        let pixels = counts[label as usize];
        if pixels == 0 {
            continue;
        }
        let mut support: Vec<SupportMatch> = per_image
            .iter()
            .filter(|((l, _), _)| *l == label)
            .map(|((_, image), (px, protos))| {
                let mut prototypes: Vec<ProtoMatch> = protos
                    .iter()
                    .map(|((kind, id), n)| ProtoMatch {
                        kind: kind.clone(),
                        id: *id,
                        pixels: *n,
                    })
                    .collect();
                prototypes.sort_by_key(|p| std::cmp::Reverse(p.pixels));
                prototypes.truncate(PROTOTYPES_PER_IMAGE);
                SupportMatch {
                    image: *image,
                    name: rec
                        .support
                        .get(*image as usize)
                        .map(|s| s.name.clone())
                        .unwrap_or_default(),
                    pixels: *px,
                    prototypes,
                }
            })
            .collect();
        support.sort_by_key(|s| std::cmp::Reverse(s.pixels));
        support.truncate(SUPPORT_PER_CLASS);
        classes.push(ClassFound {
            label,
            name: rec.name.clone(),
            pixels,
            fraction: pixels as f64 / total as f64,
            mean_score: (score_sum[label as usize] / pixels as f64) as f32,
            support,
            mask: None,
            rle: None,
        });
    }
    classes
}

/// The explain sheet's rows for the classes `found`: each support match's
/// thumbnail from the bank, with the region of its best prototype (of the
/// class's first encoder) outlined.
pub(crate) fn explain_rows(
    bank: &dyn ClassStore,
    records: &[ClassRecord],
    found: &[ClassFound],
) -> Result<Vec<ExplainRow>> {
    let mut rows = Vec::new();
    for c in found {
        let rec = &records[c.label as usize - 1];
        let fp = rec
            .encoders
            .first()
            .map(|e| e.fingerprint.clone())
            .unwrap_or_default();
        let protos = bank.prototypes(rec, &fp)?;
        let mut matches = Vec::new();
        for s in &c.support {
            let Some(thumb) = bank.thumbnail(rec, s.image)? else {
                continue;
            };
            let best = s.prototypes.first();
            let region = best
                .and_then(|b| protos.get(b.id as usize))
                .map(|p| PatchMask {
                    grid_h: p.provenance.grid_h,
                    grid_w: p.provenance.grid_w,
                    cells: p.provenance.region.clone(),
                });
            // One caption: the support image and its share of the class's pixels.
            let caption = format!(
                "{}: {:.0}%",
                s.name,
                100.0 * s.pixels as f64 / c.pixels.max(1) as f64
            );
            matches.push(ExplainMatch {
                image: thumb,
                region,
                caption,
            });
        }
        rows.push(ExplainRow {
            class: c.name.clone(),
            label: c.label,
            matches,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use ovdiff_match::{Candidate, Vocabulary};

    #[test]
    fn prototype_kinds_are_named_as_the_report_has_them() {
        assert_eq!(kind(Level::Part, Side::Foreground), "part fg");
        assert_eq!(kind(Level::Instance, Side::Background), "instance bg");
        assert_eq!(kind(Level::Class, Side::Foreground), "class fg");
    }

    #[test]
    fn classes_found_count_pixels_and_mean_scores() {
        let vocabulary = Vocabulary::new(vec![
            Candidate::new("a", false, array![[1.0, 0.0]], array![[0.0, 1.0]]),
            Candidate::new(
                "b",
                false,
                array![[0.0, 1.0]],
                ndarray::Array2::zeros((0, 2)),
            ),
        ])
        .unwrap();
        let plan = MemberPlan::exact("e", vocabulary, Vec::new());
        let records: Vec<ClassRecord> = ["a", "b"]
            .iter()
            .map(|n| ClassRecord {
                name: n.to_string(),
                stuff: false,
                source: ovdiff_store::bank::ClassSource::Images { dir: "d".into() },
                split_method: "saliency".into(),
                created_unix: 0,
                build_id: 1,
                images_used: 1,
                images_skipped: 0,
                fallback_splits: 0,
                encoders: Vec::new(),
                support: Vec::new(),
                stats: None,
            })
            .collect();
        let labels = LabelMap {
            w: 2,
            h: 2,
            labels: vec![0, 1, 1, 0],
            score: vec![0.0, 0.5, 0.25, 0.0],
            proto: vec![ovdiff_match::vocabulary::NO_PROTO; 4],
            source: vec![0; 4],
        };
        let found = found_classes(&labels, &records, &[&plan], None);
        assert_eq!(found.len(), 1, "b has no pixels");
        let a = &found[0];
        assert_eq!((a.label, a.name.as_str(), a.pixels), (1, "a", 2));
        assert_eq!(a.fraction, 0.5);
        assert_eq!(a.mean_score, 0.375);
        assert!(a.support.is_empty(), "no prototype won a pixel");
    }
}
