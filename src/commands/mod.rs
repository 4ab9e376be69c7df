//! One file per subcommand: orchestration only.

pub mod act_search;
pub mod align;
pub mod forward;
pub mod inspect;
pub mod predict;
pub mod refs;
pub mod scan;
pub mod theory;
pub mod train;
pub mod validate;
