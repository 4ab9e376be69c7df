//! `ckpt-scan theory`: verifies the init-time bound of theory/init_bound.md as its §7 specifies —
//! (a) Monte Carlo of the theorems over a grid of (d, d_h, k, spectrum, weight law), (a2) the
//! finite-sample formulas of §6.6 against simulated OLS, (b) models at
//! init per layer against the bound of their measured input spectrum, (c) where trained
//! checkpoints exceed it — and writes verification.md, CSVs, plots and a manifest.

use std::time::Instant;

use anyhow::{bail, Result};

use crate::analysis::finite_sample_check::{default_cases, finite_sample_row, FiniteSampleRow};
use crate::analysis::init_check::{judge, LayerRow, SourceRole};
use crate::analysis::init_grid::{default_grid, draws_at, measured_grid, monte_carlo_rows};
use crate::analysis::layer_check::Verdict;
use crate::analysis::model_check::measure_source;
use crate::analysis::mutation_check::{run_case, Mutation, MutationRow};
use crate::analysis::torch_threads::single_threaded;
use crate::cli::TheoryArgs;
use crate::output::atomic::{check_output_dir, write_atomic};
use crate::output::csv::write_csv;
use crate::printer::Printer;
use crate::report::plot::write_small_multiples;
use crate::report::theory_charts::{grid_chart, layer_chart};
use crate::report::theory_report::{pass_fail_table, verification_markdown, TheoryManifest};
use crate::settings::theory::TheorySettings;
use crate::settings::Settings;

pub fn run(args: &TheoryArgs, settings: &Settings) -> Result<()> {
    let theory = TheorySettings::resolve(args, settings.master_seed())?;
    check_output_dir(&theory.out, "--out")?;
    let printer = Printer {
        quiet: settings.quiet,
    };
    let start = Instant::now();
    let check = &theory.check;
    let seed = check.seed;
    let forward = settings.forward();
    let mut reports = Vec::new();
    for (role, spec) in &theory.sources {
        reports.push(measure_source(
            *role,
            spec,
            check,
            theory.tokenizer.as_deref(),
            &forward,
            &settings.hub,
            printer,
        )?);
    }
    let grid_start = Instant::now();
    let mut grid = default_grid(theory.grid_draws, &theory.grid_dims);
    grid.extend(measured_grid(&reports, draws_at(theory.grid_draws, 1024)));
    let grid_out = monte_carlo_rows(&grid, seed);
    printer.note(format!(
        "theory: Monte Carlo grid, {} cells in {:.1} s",
        grid_out.len(),
        grid_start.elapsed().as_secs_f64()
    ));
    let finite_start = Instant::now();
    let replications = theory.finite_sample_replications;
    let finite_out = single_threaded(|| {
        default_cases()
            .iter()
            .map(|case| finite_sample_row(case, replications, seed))
            .collect::<Result<Vec<FiniteSampleRow>>>()
    })?;
    printer.note(format!(
        "theory: finite-sample check, {} cases × {replications} replications in {:.1} s",
        finite_out.len(),
        finite_start.elapsed().as_secs_f64()
    ));
    let mut layer_out: Vec<LayerRow> = reports.iter().flat_map(|r| r.rows.clone()).collect();
    // One family over every init row of every source: the critical value needs its size.
    judge(&mut layer_out, check.family_alpha);

    let mutation_start = Instant::now();
    let mutation_out: Vec<MutationRow> = if theory.mutations {
        single_threaded(|| {
            Mutation::ALL
                .iter()
                .map(|&m| run_case(m, seed))
                .collect::<Result<Vec<_>>>()
        })?
    } else {
        Vec::new()
    };
    printer.note(format!(
        "theory: power check, {} cases in {:.1} s",
        mutation_out.len(),
        mutation_start.elapsed().as_secs_f64()
    ));

    let out = &theory.out;
    write_csv(&out.join("verification_grid.csv"), &grid_out)?;
    if !mutation_out.is_empty() {
        write_csv(&out.join("verification_mutations.csv"), &mutation_out)?;
    }
    write_csv(&out.join("verification_layers.csv"), &layer_out)?;
    write_csv(&out.join("verification_finite_sample.csv"), &finite_out)?;
    write_small_multiples(&grid_chart(&grid_out), &out.join("verification_grid"))?;
    if !layer_out.is_empty() {
        write_small_multiples(&layer_chart(&layer_out), &out.join("verification_layers"))?;
    }
    let manifest = TheoryManifest::new(
        check,
        theory.grid_draws,
        replications,
        &reports,
        forward.load.describe(),
        start.elapsed().as_secs_f64(),
    );
    write_atomic(
        &out.join("verification_manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    let markdown = verification_markdown(
        &grid_out,
        &finite_out,
        &layer_out,
        &mutation_out,
        &reports,
        check,
        theory.grid_draws,
    );
    write_atomic(&out.join("verification.md"), markdown.as_bytes())?;
    let summary = pass_fail_table(&grid_out, &finite_out, &layer_out, &mutation_out);
    printer.result(&summary);
    printer.note(format!(
        "wrote {} ({:.1} s)",
        out.join("verification.md").display(),
        start.elapsed().as_secs_f64()
    ));
    let failed_grid = grid_out.iter().filter(|r| !r.passed()).count();
    let failed_finite = finite_out.iter().filter(|r| !r.passed()).count();
    let failed_init = layer_out
        .iter()
        .filter(|r| r.role == SourceRole::Init && r.verdict != Verdict::Pass)
        .count();
    let failed_mutations = mutation_out.iter().filter(|r| !r.as_expected).count();
    if failed_grid + failed_finite + failed_init + failed_mutations > 0 {
        bail!(
            "theory: {failed_grid} Monte Carlo rows, {failed_finite} finite-sample rows, {failed_init} init rows and {failed_mutations} power-check cases failed (see {})",
            out.join("verification.md").display()
        );
    }
    Ok(())
}
