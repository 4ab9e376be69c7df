//! The model-free Monte Carlo grid of theory/init_bound.md §7 check 1: which (spectrum, law, d,
//! d_h) cells are drawn, how many draws each gets, and the grid's rows.

use crate::analysis::init_check::{grid_rows, GridRow, LayerSpectrum};
use crate::analysis::model_check::SourceReport;
use crate::analysis::torch_threads::single_threaded;
use crate::stats::init_bound::{Spectrum, WeightLaw};

/// Largest reference count in the Monte Carlo grid.
pub const GRID_MAX_K: usize = 5;

/// One cell family of the Monte Carlo grid: a spectrum and law, all k at once.
#[derive(Clone, Debug)]
pub struct GridSpec {
    pub spectrum: Spectrum,
    pub law: WeightLaw,
    pub head_dim: usize,
    pub draws: usize,
}

/// Draws at dimension `d` for `base` draws at d = 64: `base·(64/d)^1.5`, at least 16. A draw
/// costs ∝ d·m² while the spread of R² shrinks like 1/√(d·d_h), so the standard error stays small.
pub fn draws_at(base: usize, dimension: usize) -> usize {
    let scale = (64.0 / dimension.max(1) as f64).powf(1.5).min(1.0);
    ((base as f64 * scale).round() as usize).max(16)
}

/// The model-free grid of §7 check 1: d ∈ {64, 256, 2048} with d_h = d/8, d/8, d/16; isotropic,
/// power-law and rank-deficient spectra; Gaussian and (at d = 64, coordinate-aligned)
/// truncated-normal weights.
pub fn default_grid(base_draws: usize, dims: &[usize]) -> Vec<GridSpec> {
    let mut grid = Vec::new();
    let d = 64;
    let small = [
        Spectrum::Isotropic {
            dimension: d,
            rank: d,
        },
        Spectrum::Isotropic {
            dimension: d,
            rank: 48,
        },
        Spectrum::PowerLaw {
            dimension: d,
            alpha: 0.5,
            rank: d,
        },
        Spectrum::PowerLaw {
            dimension: d,
            alpha: 1.0,
            rank: d,
        },
        Spectrum::PowerLaw {
            dimension: d,
            alpha: 2.0,
            rank: d,
        },
        Spectrum::PowerLaw {
            dimension: d,
            alpha: 1.0,
            rank: 48,
        },
    ];
    let small_laws: &[WeightLaw] = if dims.contains(&d) {
        &[WeightLaw::Gaussian, WeightLaw::TruncatedNormal]
    } else {
        &[]
    };
    for &law in small_laws {
        for spectrum in &small {
            grid.push(GridSpec {
                spectrum: spectrum.clone(),
                law,
                head_dim: 8,
                draws: draws_at(base_draws, d),
            });
        }
    }
    for (d, head_dim) in [(256, 32), (2048, 128)]
        .into_iter()
        .filter(|(d, _)| dims.contains(d))
    {
        for spectrum in Spectrum::isotropic_and_power_law(d) {
            grid.push(GridSpec {
                spectrum,
                law: WeightLaw::Gaussian,
                head_dim,
                draws: draws_at(base_draws, d),
            });
        }
    }
    grid
}

/// Grid cells of measured spectra: the first and last checked layer of every source.
pub fn measured_grid(reports: &[SourceReport], draws: usize) -> Vec<GridSpec> {
    let mut grid = Vec::new();
    for report in reports {
        let mut picked: Vec<&LayerSpectrum> = report.spectra.iter().take(1).collect();
        if let Some(last) = report.spectra.last().filter(|_| report.spectra.len() > 1) {
            picked.push(last);
        }
        for spectrum in picked {
            grid.push(GridSpec {
                spectrum: Spectrum::Measured {
                    name: format!("{} layer {}", report.label, spectrum.layer),
                    eigenvalues: spectrum.eigenvalues.clone(),
                },
                law: WeightLaw::Gaussian,
                head_dim: report.config.head_dim as usize,
                draws,
            });
        }
    }
    grid
}

/// Every row of `grid`, each cell for k = 1..[`GRID_MAX_K`], drawn on one libtorch thread.
pub fn monte_carlo_rows(grid: &[GridSpec], seed: u64) -> Vec<GridRow> {
    single_threaded(|| {
        grid.iter()
            .flat_map(|spec| {
                grid_rows(
                    &spec.spectrum,
                    spec.law,
                    spec.head_dim,
                    GRID_MAX_K,
                    spec.draws,
                    seed,
                )
            })
            .collect()
    })
}
