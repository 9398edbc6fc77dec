//! Integration tests: the real `ovdiff-bank` binary on real files, one binary, grouped by topic.

mod harness;
mod models;
