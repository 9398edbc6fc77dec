//! Integration tests: the real `ovdiff-bank` binary on real files, one binary, grouped by topic.

mod bank;
mod bank_compat;
mod bankfile;
mod browser;
mod careless;
mod eval;
mod first_day;
mod generator;
mod golden;
mod harness;
mod hostile;
mod import_http;
mod models;
mod prefilter;
mod real_model;
mod reliability;
mod segment;
mod serve;
mod shard;
mod tour;
