//! A query narrowed to some of its candidates (the CLIP pre-filter's choice for one image).

use std::path::Path;

use super::member::MemberPlan;
use super::{EnginePolicy, Matching};
use crate::{Error, Result};
use ovdiff_match::ProtoRef;

/// A query narrowed to some of its candidates: per encoder, a plan over
/// only those classes, so that their background prototypes alone stand
/// for background.
#[derive(Debug, Clone)]
pub struct Restricted {
    /// The kept candidates (indices into the query), in query order.
    pub kept: Vec<usize>,
    /// Per member of the whole query, the plan of the kept candidates.
    pub members: Vec<MemberPlan>,
}

impl Restricted {
    /// Per member, the matcher its narrowed rows picked.
    pub fn matching(&self) -> Vec<Matching> {
        self.members.iter().map(|m| m.matching).collect()
    }

    /// What row `row` of member `member`'s restricted vocabulary is, with
    /// `class` given as the label in the whole query (1-based).
    pub fn proto_ref(&self, member: usize, row: u32) -> Option<ProtoRef> {
        let mut r = self.members.get(member)?.proto_ref(row)?;
        r.class = u16::try_from(*self.kept.get(usize::from(r.class).checked_sub(1)?)? + 1).ok()?;
        Some(r)
    }

    /// The label in the whole query (`1..K` in query order; 0 stays
    /// background) of each label of the narrowed one.
    pub fn to_query_labels(&self) -> Vec<u16> {
        std::iter::once(0)
            .chain(self.kept.iter().map(|&i| (i + 1) as u16))
            .collect()
    }
}

/// Narrow `members` (the plans of a whole query) to the candidates `keep`
/// (indices into the query; at least one). Each member's narrowed rows pick
/// their matcher by `engine`, as a whole query's do; graphs and lists are
/// cached in `cache_dir`.
pub fn restrict(
    members: &[&MemberPlan],
    keep: &[usize],
    engine: EnginePolicy,
    cache_dir: &Path,
    threads: usize,
) -> Result<Restricted> {
    let mut kept = keep.to_vec();
    kept.sort_unstable();
    kept.dedup();
    let Some(first) = members.first() else {
        return Err(Error::Invalid("no encoder to segment with".into()));
    };
    if kept.is_empty() || kept.iter().any(|&i| i >= first.vocabulary.num_classes()) {
        return Err(Error::Invalid(format!(
            "cannot narrow a query of {} classes to {keep:?}",
            first.vocabulary.num_classes()
        )));
    }
    let members = members
        .iter()
        .map(|m| m.narrowed(&kept, engine, cache_dir, threads))
        .collect::<Result<Vec<_>>>()?;
    Ok(Restricted { kept, members })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovdiff_match::{Candidate, Vocabulary};

    #[test]
    fn a_narrowed_query_reports_labels_of_the_whole_query() {
        use ndarray::array;
        let cand = |name: &str, v: [f32; 2]| {
            Candidate::new(name, false, array![[v[0], v[1]]], array![[v[1], v[0]]])
        };
        // the query was [a, b, c]; the pre-filter kept a and c
        let vocabulary =
            Vocabulary::new(vec![cand("a", [1.0, 0.0]), cand("c", [0.0, 1.0])]).unwrap();
        let c_row = vocabulary.segment(2).start as u32;
        let bg_row = vocabulary.segment(0).start as u32;
        let narrow = Restricted {
            kept: vec![0, 2],
            members: vec![MemberPlan::exact("e", vocabulary, Vec::new())],
        };
        assert_eq!(narrow.matching(), vec![Matching::Exact]);
        let r = narrow.proto_ref(0, c_row).unwrap();
        assert_eq!(
            (r.class, r.side, r.id),
            (3, ovdiff_core::prototype::Side::Foreground, 0)
        );
        // a background prototype names the class whose images it came from
        let r = narrow.proto_ref(0, bg_row).unwrap();
        assert_eq!(
            (r.class, r.side),
            (1, ovdiff_core::prototype::Side::Background)
        );
        assert!(narrow.proto_ref(1, c_row).is_none(), "no such member");
        assert_eq!(narrow.to_query_labels(), vec![0, 1, 3]);
    }
}
