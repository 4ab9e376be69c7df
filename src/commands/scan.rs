//! `ckpt-scan scan SERIES`: every checkpoint of a series through predict, align and sink
//! statistics on one token set, each (checkpoint, analysis) a cached unit, then one report.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cli::ScanArgs;
use crate::data::corpora::TextSource;
use crate::data::paths::{manifest_var, unit_cache_root};
use crate::data::token_set::token_set_for;
use crate::output::atomic::{check_output_dir, write_atomic};
use crate::output::csv::write_csv;
use crate::output::folder_lock::lock_report_folder;
use crate::output::manifest::tool_version;
use crate::printer::Printer;
use crate::report::scan_report::{write_report, ScanManifest};
use crate::report::scan_status::status_table;
use crate::series::checkpoint_open::{check_series_shapes, open_planned};
use crate::series::checkpoint_scan::{
    checkpoint_rows, duplicate_checkpoints, units_computed, SeriesScan,
};
use crate::series::claim::ClaimTimeouts;
use crate::series::manifest::SeriesManifest;
use crate::series::plan::{resolve_plan, PlannedCheckpoint};
use crate::series::scan_estimate::{checkpoint_costs, dry_run};
use crate::series::scan_progress::ScanProgress;
use crate::series::shard::{partition, Shard};
use crate::series::slurm::resolve as resolve_slurm;
use crate::series::slurm_submission::SlurmSubmission;
use crate::series::unit_cache::UnitCache;
use crate::series::units::{UnitMode, UnitWork};
use crate::settings::scan::{scan_options, series_tokenizer, worker_flags};
use crate::settings::Settings;

/// Marks a report folder whose scan has not finished.
const IN_PROGRESS: &str = ".scan-in-progress";

pub fn run(args: &ScanArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let start = Instant::now();
    let (manifest, manifest_path) = SeriesManifest::load(&args.series)?;
    let manifest_dir = manifest_path
        .parent()
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let plan = resolve_plan(&manifest, &manifest_dir, &settings.hub, &manifest_var)?;
    for missing in &plan.missing_revisions {
        let name = &manifest.name;
        printer.warn(format!(
            "series {name}: revision {missing} is not in the repo; skipped"
        ));
    }
    if plan.checkpoints.is_empty() {
        bail!(
            "series {}: no checkpoints to scan (no branch matched, and no sources or inits)",
            manifest.name
        );
    }
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("reports").join(&manifest.name));
    let cache = UnitCache::new(&args.cache_dir.clone().unwrap_or_else(unit_cache_root));
    if !args.dry_run {
        // Both are written only after the computation: find a file or read-only folder now.
        check_output_dir(&out_dir, "--out")?;
        check_output_dir(cache.dir(), "--cache-dir")?;
    }
    // The series' config fixes shapes and the token set: take it from the first real checkpoint.
    let first = plan
        .checkpoints
        .iter()
        .find(|c| !c.is_init())
        .or(plan.checkpoints.first());
    let first = first.expect("non-empty plan");
    let series_config = open_planned(first, &plan, None)?.source().config().clone();
    let options = scan_options(args, &manifest, &series_config)?;
    if args.dry_run && !args.slurm {
        printer.result(dry_run(&plan, &options, &series_config, &cache)?);
        return Ok(());
    }
    if args.slurm {
        let shards = args.shards.unwrap_or(plan.checkpoints.len());
        if shards == 0 {
            bail!("--shards 0: at least one shard is needed");
        }
        return SlurmSubmission {
            series_name: manifest.name.clone(),
            manifest_path: manifest_path.clone(),
            out_dir: out_dir.clone(),
            cache_dir: cache.dir().to_path_buf(),
            shards: shards.min(plan.checkpoints.len()),
            options: resolve_slurm(&args.slurm_options.settings(), &manifest.slurm)?,
            worker_flags: worker_flags(args),
            dry_run: args.dry_run,
        }
        .submit(&printer);
    }
    let shard = args.shard.as_deref();
    let shard = shard
        .map(|t| Shard::parse(t, &|name| std::env::var(name).ok()))
        .transpose()?;
    let mode = match (args.report, args.status) {
        (true, _) => UnitMode::Assemble,
        (_, true) => UnitMode::Status,
        _ => UnitMode::Compute,
    };
    // A plain scan stops on a mismatched checkpoint before any work; shards, the report and the
    // status look-up meet it per checkpoint instead, so a failing shard is listed, not fatal.
    let plain_scan = shard.is_none() && mode == UnitMode::Compute;
    if plain_scan {
        check_series_shapes(&plan, &series_config)?;
    }
    // A shard or a status look-up writes no report; only a full run guards its folder.
    let writes_report = shard.is_none() && mode != UnitMode::Status;
    let marker = out_dir.join(IN_PROGRESS);
    // Held until the scan ends: a second scan into the same folder stops here, before any work.
    let _out_lock = writes_report
        .then(|| lock_report_folder(&out_dir))
        .transpose()?;
    if writes_report {
        if marker.exists() && !args.resume && !args.force && mode == UnitMode::Compute {
            bail!(
                "{}: a previous scan into this folder did not finish\nhint: --resume continues it (finished units are reused), --force recomputes everything",
                out_dir.display()
            );
        }
        write_atomic(&marker, b"scan running\n")?;
    }

    let tokenizer_source = open_planned(first, &plan, Some(&series_config))?;
    let (token_set, tokenizer_name) = token_set_for(
        tokenizer_source.source(),
        &TextSource::parse(&options.text),
        &options.token_set_options(&series_config),
        series_tokenizer(&manifest, &manifest_dir)?.as_deref(),
    )?;
    drop(tokenizer_source);
    let selected: Vec<&PlannedCheckpoint> = match shard {
        Some(shard) => {
            let costs = checkpoint_costs(&plan, &options, &series_config);
            let mine = &partition(&costs, shard.count)[shard.index];
            mine.iter().map(|&i| &plan.checkpoints[i]).collect()
        }
        None => plan.checkpoints.iter().collect(),
    };
    printer.note(format!(
        "scan {}{}: {} checkpoints, {} tokens ({} sequences of {}), token set {}",
        manifest.name,
        shard.map_or(String::new(), |s| format!(" shard {}/{}", s.index, s.count)),
        selected.len(),
        token_set.sequences.len() * token_set.seq_len,
        token_set.sequences.len(),
        token_set.seq_len,
        &token_set.hash[..12]
    ));
    let work = UnitWork {
        cache: &cache,
        force: args.force,
        mode,
        timeouts: ClaimTimeouts::new(Duration::from_secs(args.claim_timeout.max(1))),
        printer,
    };
    let progress = ScanProgress::new(&printer, selected.len());
    let scan = SeriesScan {
        plan: &plan,
        series_config: &series_config,
        token_set: &token_set,
        options: &options,
        work: &work,
        keep_downloads: args.keep_downloads,
        forward: settings.forward(),
        progress: &progress,
    };
    // A plain scan stops at the first error, as it always has.
    let mut outcome = scan.run(&selected, &manifest.name, plain_scan)?;
    let (records, incomplete) = (&outcome.records, &outcome.incomplete);
    if mode == UnitMode::Status {
        printer.result(status_table(records, incomplete));
        return Ok(());
    }
    if let Some(shard) = shard {
        printer.note(format!(
            "shard {}/{}: {} checkpoints done ({} units computed), {} failed ({:.1} s)",
            shard.index,
            shard.count,
            records.len(),
            units_computed(records),
            incomplete.len(),
            start.elapsed().as_secs_f64()
        ));
        if !incomplete.is_empty() {
            let failed: Vec<&str> = incomplete.iter().map(|r| r.checkpoint.as_str()).collect();
            bail!(
                "shard {}/{}: {} of {} checkpoints failed: {}",
                shard.index,
                shard.count,
                incomplete.len(),
                selected.len(),
                failed.join(", ")
            );
        }
        return Ok(());
    }

    let duplicates = duplicate_checkpoints(records);
    for (a, b) in &duplicates {
        printer.warn(format!(
            "checkpoints {a} and {b} have identical weights (duplicate branches?)"
        ));
    }
    outcome.tables.checkpoints = checkpoint_rows(&outcome.records, &plan, &duplicates);
    let (records, incomplete) = (&outcome.records, &outcome.incomplete);
    write_report(
        &out_dir,
        &manifest,
        &options,
        &series_config,
        &outcome.tables,
    )?;
    let manifest_json = ScanManifest {
        tool: tool_version(),
        series: &manifest,
        manifest_path: manifest_path.display().to_string(),
        options: &options,
        token_set: &token_set,
        tokenizer: tokenizer_name,
        device: crate::settings::describe(&settings.load),
        missing_revisions: &plan.missing_revisions,
        duplicates: &duplicates,
        checkpoints: records,
        incomplete,
        seconds: start.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&manifest_json)?;
    write_atomic(&out_dir.join("manifest.json"), json.as_bytes())?;
    write_csv(&out_dir.join("incomplete.csv"), incomplete)?;
    std::fs::remove_file(&marker)
        .with_context(|| format!("{}: cannot remove", marker.display()))?;
    let computed = units_computed(records);
    printer.note(format!(
        "wrote {} ({} units computed, {} cached, {:.1} s)",
        out_dir.display(),
        computed,
        records.iter().map(|r| r.units.len()).sum::<usize>() - computed,
        start.elapsed().as_secs_f64()
    ));
    if !incomplete.is_empty() {
        for row in incomplete {
            printer.warn(format!(
                "{}: {} — {}",
                row.checkpoint,
                row.state.name(),
                row.error
            ));
        }
        bail!(
            "report {}: {} of {} checkpoints are missing or failed (listed in incomplete.csv)",
            out_dir.display(),
            incomplete.len(),
            plan.checkpoints.len()
        );
    }
    Ok(())
}
