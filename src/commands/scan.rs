//! `ckpt-scan scan SERIES`: every checkpoint of a series through predict, align and sink
//! statistics on one token set, each (checkpoint, analysis) a cached unit, then one report.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cli::ScanArgs;
use crate::data::corpora::TextSource;
use crate::data::token_set::token_set_for;
use crate::output::folder_lock::ReportFolder;
use crate::output::manifest::tool_version;
use crate::printer::Printer;
use crate::report::scan_report::{write_report, ScanManifest};
use crate::report::scan_status::status_table;
use crate::series::checkpoint_open::{check_series_shapes, open_planned};
use crate::series::checkpoint_scan::{
    checkpoint_rows, duplicate_checkpoints, units_computed, SeriesScan,
};
use crate::series::claim::ClaimTimeouts;
use crate::series::scan_estimate::{checkpoints_of, dry_run};
use crate::series::scan_progress::ScanProgress;
use crate::series::units::{UnitMode, UnitWork};
use crate::settings::scan::{series_tokenizer, slurm_submission, ScanSettings};
use crate::settings::Settings;

pub fn run(args: &ScanArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let start = Instant::now();
    let ScanSettings {
        manifest,
        manifest_path,
        manifest_dir,
        plan,
        out_dir,
        cache,
        series_config,
        options,
        shard,
        mode,
    } = ScanSettings::resolve(args, settings, &printer)?;
    let first = plan.series_checkpoint();
    if args.dry_run && !args.slurm {
        printer.result(dry_run(&plan, &options, &series_config, &cache)?);
        return Ok(());
    }
    if args.slurm {
        let checkpoints = plan.checkpoints.len();
        let submission = slurm_submission(
            args,
            &manifest,
            &manifest_path,
            checkpoints,
            &out_dir,
            cache.dir(),
            settings.seed,
        )?;
        return submission.submit(&printer);
    }
    // A plain scan stops on a mismatched checkpoint before any work; shards, the report and the
    // status look-up meet it per checkpoint instead, so a failing shard is listed, not fatal.
    let plain_scan = shard.is_none() && mode == UnitMode::Compute;
    if plain_scan {
        check_series_shapes(&plan, &series_config)?;
    }
    // A shard or a status look-up writes no report; only a full run guards its folder, held until
    // the scan ends: a second scan into the same folder stops here, before any work.
    let continue_unfinished = args.resume || args.force || mode != UnitMode::Compute;
    let writes_report = shard.is_none() && mode != UnitMode::Status;
    let folder = writes_report
        .then(|| ReportFolder::claim(&out_dir, continue_unfinished))
        .transpose()?;

    let tokenizer_source = open_planned(first, &plan, Some(&series_config))?;
    let (token_set, tokenizer_name) = token_set_for(
        tokenizer_source.source(),
        &TextSource::parse(&options.text),
        &options.token_set_options(&series_config),
        series_tokenizer(&manifest, &manifest_dir)?.as_deref(),
    )?;
    drop(tokenizer_source);
    let selected = checkpoints_of(&plan, &options, &series_config, shard);
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
        return outcome.finish_shard(shard, selected.len(), start.elapsed(), &printer);
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
    manifest_json.write(&out_dir)?;
    if let Some(folder) = folder {
        folder.finish()?;
    }
    let computed = units_computed(records);
    printer.note(format!(
        "wrote {} ({} units computed, {} cached, {:.1} s)",
        out_dir.display(),
        computed,
        records.iter().map(|r| r.units.len()).sum::<usize>() - computed,
        start.elapsed().as_secs_f64()
    ));
    outcome.check_complete(&out_dir, plan.checkpoints.len(), &printer)
}
