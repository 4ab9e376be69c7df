//! Every default a command resolves to when neither a flag nor a series manifest sets it, named
//! once. `cli.rs` shows them in `--help`; the resolve steps in `settings/` fill them in; reports
//! render them from the resolved value, never restate them.

/// Fraction of a token set's sequences in the fit split; the rest are held out.
pub const DEFAULT_FIT_FRACTION: f64 = 0.75;

/// Tokens `predict` runs through a model (whole sequences).
pub const DEFAULT_PREDICT_TOKENS: usize = 32768;

/// Longest sequence `predict` uses by default, below the model's own maximum.
pub const PREDICT_SEQ_LEN_CAP: usize = 2048;

/// Longest sequence `scan` uses by default (256 keeps a series' many forwards cheap).
pub const SCAN_SEQ_LEN_CAP: usize = 256;

/// The default sequence length for a model: `cap`, or the model's maximum when that is shorter.
pub fn seq_len_within(max_position_embeddings: i64, cap: usize) -> usize {
    (max_position_embeddings.max(0) as usize).min(cap)
}

/// Reference heads per target, k = 1..this.
pub const DEFAULT_MAX_REFS: usize = 5;

/// The master seed when none is given.
pub const DEFAULT_SEED: u64 = 0;

/// The text a token set is drawn from when none is named (`data::corpora::TextSource`).
pub const DEFAULT_TEXT: &str = "mix";

/// Tokens `scan` runs through each checkpoint.
pub const SCAN_TOKENS: usize = 16384;

/// Sequences of the token set `scan`'s sink statistics read.
pub const SCAN_SINK_SEQUENCES: usize = 32;

/// Random subspace pairs behind `scan`'s alignment null.
pub const SCAN_NULL_SAMPLES: usize = 32;

/// The init sources `theory` checks unless `--no-default-sources`: both init schemes of OLMo-2-1B.
pub const DEFAULT_INIT_SOURCES: [&str; 2] = [
    "init:olmo2-1b?seed=0&scheme=olmo",
    "init:olmo2-1b?seed=0&scheme=hf",
];

/// Tokens per `validate --tasks bpb` window by default, capped by the model's positions.
pub const DEFAULT_BPB_WINDOW: usize = 1024;
