//! The encoder records of an untrusted file, checked against what the
//! receiver trusts (issue #20, case 4): the installed bundles, which the
//! caller lists as plain [`EncoderInfo`] records (this crate knows nothing of
//! models), and the records of the bank a file is imported into.
//!
//! A fingerprint is SHA-256 over a bundle's manifest and file hashes, so it
//! names one bundle, with one name and one dimension. A file whose record
//! carries an installed bundle's fingerprint with another name or dimension
//! would, once imported, make the bank refuse the real encoder; it is
//! refused instead. A record whose fingerprint is not installed is kept:
//! teams share banks built with encoders the receiver may install later.

use std::collections::BTreeSet;

use super::{OvBankError, OvBankFile, Result};
use crate::bank::EncoderInfo;

/// Checks one encoder record against `installed`: when a bundle with the
/// same fingerprint is installed, its name and dimension must be the
/// record's ([`OvBankError::EncoderRecord`] otherwise, naming the record,
/// the bundle and the mismatch). A record of an encoder not installed passes.
pub fn check_encoder_record(record: &EncoderInfo, installed: &[EncoderInfo]) -> Result<()> {
    let Some(bundle) = installed
        .iter()
        .find(|b| b.fingerprint == record.fingerprint)
    else {
        return Ok(());
    };
    check_against(
        record,
        bundle,
        &format!("the installed bundle {:?}", bundle.name),
    )
}

/// Checks `record` against `known` (same fingerprint), described as `what`.
pub(super) fn check_against(record: &EncoderInfo, known: &EncoderInfo, what: &str) -> Result<()> {
    let problem = if known.dim != record.dim {
        format!(
            "has the fingerprint of {what}, whose dimension is {}, not {}",
            known.dim, record.dim
        )
    } else if known.name != record.name {
        format!(
            "has the fingerprint of {what}, whose name is {:?}, not {:?}",
            known.name, record.name
        )
    } else {
        return Ok(());
    };
    Err(OvBankError::EncoderRecord {
        name: record.name.clone(),
        fingerprint: record.fingerprint.clone(),
        dim: record.dim,
        problem,
    })
}

impl OvBankFile {
    /// The fingerprints of the encoders that at least one class uses (a
    /// record no class uses is never imported or merged).
    pub fn used_encoders(&self) -> BTreeSet<&str> {
        self.classes()
            .iter()
            .flat_map(|c| c.encoders.iter().map(|e| e.fingerprint.as_str()))
            .collect()
    }

    /// [`check_encoder_record`] for every encoder record that a class uses.
    pub fn check_encoders(&self, installed: &[EncoderInfo]) -> Result<()> {
        let used = self.used_encoders();
        for e in self.encoders() {
            if used.contains(e.fingerprint.as_str()) {
                check_encoder_record(e, installed)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::encoder;

    #[test]
    fn records_must_match_an_installed_bundle_of_their_fingerprint() {
        let real = encoder('d', 384);
        let installed = [real.clone()];
        assert!(check_encoder_record(&real, &installed).is_ok());
        let spoof = EncoderInfo {
            dim: 16,
            ..real.clone()
        };
        let msg = check_encoder_record(&spoof, &installed)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("dimension is 384, not 16"), "{msg}");
        assert!(msg.contains("installed bundle \"enc-d\""), "{msg}");
        let renamed = EncoderInfo {
            name: "dinov2-s14".into(),
            ..real.clone()
        };
        let msg = check_encoder_record(&renamed, &installed)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("whose name is \"enc-d\""), "{msg}");
        // Not installed: kept.
        assert!(check_encoder_record(&encoder('e', 16), &installed).is_ok());
    }
}
