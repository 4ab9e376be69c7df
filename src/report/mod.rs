//! Reports a reader opens: markdown, figures and the tables behind them, rendered from plain rows.

pub mod align_report;
pub mod kv_pareto_report;
pub mod markdown;
pub mod plot;
pub mod predict_report;
pub mod refs_report;
pub mod scan_figures;
pub mod scan_report;
pub mod scan_status;
pub mod theory_charts;
pub mod theory_report;
pub mod theory_section;
pub mod validate_report;
