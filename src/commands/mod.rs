//! One file per subcommand: orchestration only.

pub mod forward;
pub mod inspect;
pub mod predict;
pub mod refs;
