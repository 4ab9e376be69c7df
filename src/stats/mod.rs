//! Pure math on tensors: streaming Gram accumulators and regression from them.

pub mod finite_sample;
pub mod gram;
pub mod init_bound;
pub mod interval;
pub mod multiplicity;
pub mod principal_angles;
pub mod random;
pub mod regression;
pub mod selection;
pub mod sequence_bootstrap;
