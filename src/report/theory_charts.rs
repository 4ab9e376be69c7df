//! The figures of `ckpt-scan theory`: the Monte Carlo grid against the bound, and each source's
//! held-out R² per layer against its layers' bounds.

use crate::analysis::init_check::{GridRow, LayerRow};
use crate::report::plot::{distinct_in_order, LegendPosition, LineChart, Series, SmallMultiples};
use crate::stats::init_bound::WeightLaw;

/// One panel per grid spectrum family (Gaussian law): E R²pool with a 95 % band, ρ̄, B and the
/// floor against k.
pub fn grid_chart(rows: &[GridRow]) -> SmallMultiples {
    let keys = distinct_in_order(
        rows.iter()
            .filter(|r| r.law == WeightLaw::Gaussian)
            .map(|r| (r.spectrum.clone(), r.dimension, r.head_dim)),
    );
    let panels = keys
        .iter()
        .map(|(spectrum, d, head_dim)| {
            let sel: Vec<&GridRow> = rows
                .iter()
                .filter(|r| {
                    r.law == WeightLaw::Gaussian
                        && &r.spectrum == spectrum
                        && r.dimension == *d
                        && r.head_dim == *head_dim
                })
                .collect();
            let line = |f: &dyn Fn(&GridRow) -> f64| {
                sel.iter().map(|r| (r.k as f64, f(r))).collect::<Vec<_>>()
            };
            let mut measured = Series::new("E R²pool (MC, 95% band)", line(&|r| r.r2_pooled));
            measured.band = Some(
                sel.iter()
                    .map(|r| {
                        (
                            r.k as f64,
                            r.r2_pooled - 1.96 * r.r2_pooled_se,
                            r.r2_pooled + 1.96 * r.r2_pooled_se,
                        )
                    })
                    .collect(),
            );
            measured.markers = true;
            let rho = Series::new("rho-bar = E tr(PΣ)/trΣ (MC)", line(&|r| r.rho_bar));
            let mut bound = Series::new("bound B", line(&|r| r.bound));
            bound.dashed = true;
            let mut floor = Series::new("floor m/r", line(&|r| r.floor));
            floor.dashed = true;
            let title = if spectrum.chars().count() > 34 {
                format!("{}… d={d}", spectrum.chars().take(33).collect::<String>())
            } else {
                format!("{spectrum}, d={d}, d_h={head_dim}")
            };
            let mut chart = LineChart::new(title, "k (reference heads)", "R²");
            chart.series = vec![measured, rho, bound, floor];
            chart.legend = LegendPosition::LowerRight;
            chart.x_label_count = Some(sel.len().max(2));
            chart
        })
        .collect();
    SmallMultiples {
        title: "Init-time bound: Monte Carlo (Gaussian weights) vs bound and floor".into(),
        panels,
        columns: 4,
        panel_size: (420, 320),
    }
}

/// One panel per (source, kind): measured held-out pooled R² per layer at k = 1 and the largest
/// k, with the bound (dashed) and a band from the bound to bound + tolerance.
pub fn layer_chart(rows: &[LayerRow]) -> SmallMultiples {
    let keys = distinct_in_order(rows.iter().map(|r| (r.source.clone(), r.kind, r.role)));
    let panels = keys
        .iter()
        .map(|(source, kind, role)| {
            let sel: Vec<&LayerRow> = rows
                .iter()
                .filter(|r| &r.source == source && r.kind == *kind)
                .collect();
            let max_k = sel.iter().map(|r| r.k).max().unwrap_or(1);
            let mut series = Vec::new();
            for (index, k) in [1, max_k].into_iter().enumerate() {
                if index == 1 && k == 1 {
                    break;
                }
                let at: Vec<&&LayerRow> = sel.iter().filter(|r| r.k == k).collect();
                let color = crate::report::plot::palette(index);
                let mut measured = Series::new(
                    format!("held-out R², k={k}"),
                    at.iter()
                        .map(|r| (r.layer as f64, r.r2_pooled_heldout))
                        .collect(),
                );
                measured.markers = true;
                measured.color = Some(color);
                let mut bound = Series::new(
                    format!("bound B (band: + tolerance), k={k}"),
                    at.iter().map(|r| (r.layer as f64, r.bound)).collect(),
                );
                bound.band = Some(
                    at.iter()
                        .map(|r| (r.layer as f64, r.bound, r.bound + r.tolerance))
                        .collect(),
                );
                bound.dashed = true;
                bound.color = Some(color);
                series.push(measured);
                series.push(bound);
            }
            let short = if source.chars().count() > 40 {
                format!(
                    "…{}",
                    source
                        .chars()
                        .rev()
                        .take(39)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<String>()
                )
            } else {
                source.clone()
            };
            let role = role.name();
            let mut chart = LineChart::new(
                format!("{short} ({role}) {}", kind.name().to_uppercase()),
                "layer",
                "R²",
            );
            chart.series = series;
            // R² ≤ 1: the space above holds the legend, clear of the data.
            chart.legend = LegendPosition::UpperRight;
            chart.y_range = Some((0.0, 1.6));
            let layers = sel
                .iter()
                .map(|r| r.layer)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            chart.x_label_count = Some(layers.clamp(2, 16));
            chart
        })
        .collect();
    SmallMultiples {
        title: "Held-out R² per layer vs the bound of the layer's measured input spectrum".into(),
        panels,
        columns: 3,
        panel_size: (540, 400),
    }
}
