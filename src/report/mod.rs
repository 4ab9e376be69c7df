//! Writing results: atomic files now; CSV, markdown, plots and manifests as analyses arrive.

pub mod atomic;
