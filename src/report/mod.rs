//! Writing results: atomic files, tidy CSV, run manifests.

pub mod atomic;
pub mod csv;
pub mod manifest;
