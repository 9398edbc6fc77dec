//! The banks of a home (`<home>/banks`): listed with what each holds, created and removed by name, and a missing name answered with the existing ones and the closest.

use std::path::{Path, PathBuf};

use serde::Serialize;

use ovdiff_core::Home;
use ovdiff_store::bank::{is_bank_root, Bank};

use crate::{Error, Result};

/// One bank under `<home>/banks`, as `ovdiff-bank banks` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BankSummary {
    /// Its name (the folder's).
    pub name: String,
    /// Its folder.
    pub path: PathBuf,
    /// Classes it holds.
    pub classes: usize,
    /// The encoders its classes were built with, by name.
    pub encoders: Vec<String>,
    /// Bytes on disk.
    pub bytes: u64,
    /// Why it could not be read (in use by another process, damaged), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The names of the banks under `<home>/banks`, sorted.
pub fn bank_names(home: &Home) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(home.banks_dir()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter(|e| is_bank_root(&e.path()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// Every bank under `<home>/banks`, sorted by name, each opened read-only.
pub fn list_banks(home: &Home) -> Vec<BankSummary> {
    bank_names(home)
        .into_iter()
        .map(|name| {
            let path = home.banks_dir().join(&name);
            let mut s = BankSummary {
                name,
                path: path.clone(),
                classes: 0,
                encoders: Vec::new(),
                bytes: 0,
                error: None,
            };
            match summarise(&path) {
                Ok((classes, encoders, bytes)) => {
                    (s.classes, s.encoders, s.bytes) = (classes, encoders, bytes);
                }
                Err(e) => s.error = Some(e.report()),
            }
            s
        })
        .collect()
}

fn summarise(path: &Path) -> Result<(usize, Vec<String>, u64)> {
    let bank = Bank::open_read(path)?;
    let classes = bank.classes()?;
    let mut encoders: Vec<String> = bank
        .encoders()?
        .into_iter()
        .filter(|e| {
            classes
                .iter()
                .any(|c| c.encoders.iter().any(|x| x.fingerprint == e.fingerprint))
        })
        .map(|e| e.name)
        .collect();
    encoders.sort();
    encoders.dedup();
    Ok((classes.len(), encoders, bank.disk_size()?))
}

/// A bank name for `banks create|remove`: a plain folder name.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
    {
        return Err(Error::Invalid(format!(
            "bank name {name:?} is not valid: give a plain folder name (no `/`, not starting with `.`)"
        )));
    }
    Ok(())
}

/// Create the empty bank `name` under `<home>/banks`; an error when it exists.
pub fn create_bank(home: &Home, name: &str) -> Result<PathBuf> {
    check_name(name)?;
    let path = home.banks_dir().join(name);
    if path.exists() {
        return Err(Error::Invalid(format!(
            "bank {} already exists; `ovdiff-bank list --bank {name}` shows its classes",
            path.display()
        )));
    }
    drop(Bank::open(&path)?);
    Ok(path)
}

/// Remove the bank `name` under `<home>/banks` and everything in it. It is
/// opened first, so a bank in use by another process is refused.
pub fn remove_bank(home: &Home, name: &str) -> Result<PathBuf> {
    check_name(name)?;
    let path = home.banks_dir().join(name);
    if !is_bank_root(&path) {
        return Err(missing_bank(home, name));
    }
    drop(Bank::open(&path)?);
    std::fs::remove_dir_all(&path).map_err(|e| Error::io("removing the bank", &path, e))?;
    Ok(path)
}

/// The error for a bank that does not exist: the banks that do, and the
/// closest names.
pub fn missing_bank(home: &Home, arg: &str) -> Error {
    let path = home.bank_path(Some(arg));
    let names = bank_names(home);
    let near = ovdiff_core::names::closest_names(arg, names.iter().map(String::as_str));
    let hint = if !near.is_empty() {
        let n: Vec<String> = near.iter().map(|n| format!("`{n}`")).collect();
        format!("; did you mean {}?", n.join(", "))
    } else if names.is_empty() {
        format!(
            "; there are no banks under {} yet: build one with `ovdiff-bank add CLASS --images DIR`",
            home.banks_dir().display()
        )
    } else {
        format!("; the banks are: {}", names.join(", "))
    };
    Error::Invalid(format!("bank {} does not exist{hint}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banks_are_created_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        assert!(list_banks(&home).is_empty());
        create_bank(&home, "team").unwrap();
        assert!(create_bank(&home, "team").is_err());
        assert!(create_bank(&home, "../x").is_err());
        let listed = list_banks(&home);
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].name.as_str(), listed[0].classes), ("team", 0));
        let e = missing_bank(&home, "taem").to_string();
        assert!(e.contains("did you mean `team`"), "{e}");
        remove_bank(&home, "team").unwrap();
        assert!(bank_names(&home).is_empty());
        assert!(remove_bank(&home, "team").is_err());
    }
}
