//! The integration tests, as one binary: each linking of libtorch costs seconds, and twenty
//! binaries spent most of `make test` in the linker. (tests/fuzz_parsers.rs stays its own binary:
//! its counting global allocator must not see the other tests' allocations.)

mod common;
mod hub_server;

mod act_search;
mod align;
mod bad_input;
mod bits_per_byte;
mod families;
mod gemma3_gguf;
mod generate;
mod gguf;
mod golden;
mod gsm8k;
mod harness;
mod hub;
mod init;
mod kv_compress;
mod kv_variants;
mod module_graph;
mod peer;
mod predict;
mod predict_earlier;
mod report_snapshots;
mod scan;
mod slurm;
mod theory;
mod tokenizer;
mod train;
mod validate_snapshots;
