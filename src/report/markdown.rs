//! Markdown pieces every report shares: the pipe table and the one placeholder for a value that
//! was not measured.

/// What a cell shows when there is no value: not measured, not applicable, or not recorded.
pub const NOT_MEASURED: &str = "—";

/// A pipe table: the header row, its `|---|` rule, then one line per row (cells as given).
pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut md = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for row in rows {
        md.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    md
}

/// `value` formatted by `format`, or [`NOT_MEASURED`] for `None`.
pub fn or_not_measured<T>(value: Option<T>, format: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| NOT_MEASURED.to_string(), format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_has_a_rule_of_one_cell_per_column() {
        let md = table(&["a", "b"], [vec!["1".into(), "2".into()]]);
        assert_eq!(md, "| a | b |\n|---|---|\n| 1 | 2 |\n");
        assert_eq!(or_not_measured(None::<f64>, |v| format!("{v}")), "—");
        assert_eq!(or_not_measured(Some(0.5), |v| format!("{v:.2}")), "0.50");
    }
}
