//! # ovdiff-store
//!
//! Where prototypes live. It knows classes, prototypes and bytes, nothing
//! of models:
//!
//! * [`bank`]: the durable bank, an embedded store in one folder (sled
//!   0.34, whose on-disk format is kept behind [`Bank`](bank::Bank));
//! * [`ovbank`]: the shareable `.ovbank` file: versioned, checksummed,
//!   tied to the encoders that made it, queried in place;
//! * [`class_store`]: the [`ClassStore`](class_store::ClassStore) a query
//!   reads, over either;
//! * [`synthetic`]: deterministic banks for tests and benchmarks.

#![warn(missing_docs)]

pub mod bank;
pub mod class_store;
pub mod ovbank;
pub mod synthetic;

use ovdiff_core::{Error, Result};

impl From<bank::BankError> for Error {
    fn from(e: bank::BankError) -> Error {
        Error::Store(Box::new(e))
    }
}

impl From<ovbank::OvBankError> for Error {
    fn from(e: ovbank::OvBankError) -> Error {
        Error::Store(Box::new(e))
    }
}
