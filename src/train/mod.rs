//! `ckpt-scan train`: a tiny OLMo-2 trained from scratch whose checkpoints form a Hub-style series.

pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod optimizer;
pub mod schedule;
pub mod tokenizer;
pub mod trainer;
