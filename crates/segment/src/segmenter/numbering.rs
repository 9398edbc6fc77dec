//! A query's label values ([`LabelIds`]): the bank's stable ids looked up once per plan, and the labels of a segmentation renumbered from query order to them.

use ovdiff_store::bank::ClassRecord;
use ovdiff_store::class_store::ClassStore;

use crate::label_map::{ClassLabels, LabelIds};
use crate::render::ExplainRow;
use crate::segmentation::ClassFound;
use crate::{Error, Result};

/// The bank's stable id of each of `records`, in their order; `None` when
/// one does not fit a label map (above 65,535) or has none.
pub(super) fn bank_values(
    store: &dyn ClassStore,
    records: &[ClassRecord],
) -> Result<Option<Vec<u16>>> {
    let ids = store.label_ids()?;
    Ok(records
        .iter()
        .map(|r| ids.get(&r.name).and_then(|&id| u16::try_from(id).ok()))
        .collect())
}

/// The label value of each query class, in query order.
pub(super) fn values(ids: LabelIds, names: &[String], bank: Option<&[u16]>) -> Result<Vec<u16>> {
    match ids {
        LabelIds::Query => Ok((1..=names.len()).map(|v| v as u16).collect()),
        LabelIds::Bank => bank.map(<[u16]>::to_vec).ok_or_else(|| {
            Error::Invalid(
                "a class of this query has no stable label id that fits a label map \
                 (1 to 65,535); use label ids in query order"
                    .into(),
            )
        }),
    }
}

/// The map of `names` with `values`.
pub(super) fn class_labels(names: &[String], values: &[u16]) -> Result<ClassLabels> {
    ClassLabels::new(names.iter().cloned().zip(values.iter().copied()))
}

/// Renumber labels, classes found and explain rows from query order (1..K)
/// to `values`.
pub(super) fn renumber(
    values: &[u16],
    labels: &mut [u16],
    classes: &mut [ClassFound],
    rows: Option<&mut Vec<ExplainRow>>,
) {
    let is_identity = values
        .iter()
        .enumerate()
        .all(|(k, &v)| usize::from(v) == k + 1);
    if is_identity {
        return;
    }
    let map = |l: u16| {
        if l == 0 {
            0
        } else {
            values[usize::from(l) - 1]
        }
    };
    for l in labels.iter_mut() {
        *l = map(*l);
    }
    for c in classes.iter_mut() {
        c.label = map(c.label);
    }
    for r in rows.into_iter().flatten() {
        r.label = map(r.label);
    }
}
