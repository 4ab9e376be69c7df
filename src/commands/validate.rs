//! `ckpt-scan validate SOURCE --tasks …`: every task (multiple choice with 95% intervals, GSM8K,
//! bits per byte) under every mode (baseline, ACT when given, compressed KV caches), then
//! prefill/decode speed with the KV cache, KV bytes per token and peak memory →
//! reports/validate-<source>/{report.md, accuracy.csv, choices.csv, speed.csv, manifest.json, …}.

use crate::cli::ValidateArgs;
use crate::data::tokenizer::tokenizer_for;
use crate::infer::compressed_kv::{calibrate_kv, CompressedKv};
use std::collections::BTreeMap;

use crate::infer::bpb_task::BpbRow;
use crate::infer::eval_task::describe_tasks;
use crate::infer::eval_task::TaskSummary;
use crate::infer::kv_pareto::{pareto_rows, ParetoInputs};
use crate::infer::kv_variant::{KvLayout, KvVariant};
use crate::infer::mode::modes;
use crate::infer::mode_speed::{measure_decode, SpeedRow};
use crate::model::resident::ResidentModel;
use crate::output::atomic::write_atomic;
use crate::output::csv::write_csv;
use crate::output::manifest::tool_version;
use crate::output::peak_memory::peak_rss_bytes;
use crate::printer::Printer;
use crate::progress::Progress;
use crate::report::kv_pareto_report::{pareto_section, write_pareto_charts};
use crate::report::validate_report::{
    kv_section, manifest_line, report_markdown, task_manifests, task_sections, KvManifest,
    ValidateManifest,
};
use crate::settings::validate::{EvalTasks, ValidateSettings};
use crate::settings::{describe, Settings};
use crate::source::open_source_with;
use anyhow::Result;

pub fn run(args: &ValidateArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let v = ValidateSettings::resolve(args, settings.master_seed())?;
    let started = std::time::Instant::now();
    let source = open_source_with(&v.source, &settings.hub)?;
    let (tokenizer, tokenizer_name) = tokenizer_for(source.as_ref(), v.tokenizer.as_deref())?;
    let EvalTasks {
        mut tasks,
        decode_prompts,
    } = v.load_tasks(&tokenizer, source.config())?;
    let act = match &v.act {
        Some(path) => Some(crate::edit::act::Act::from_file(path, source.config())?),
        None => None,
    };
    let model = ResidentModel::load(source.as_ref(), &settings.load)?;
    let calibration = match v.needs_calibration() {
        true => {
            let c = &v.calibration;
            printer.note(format!(
                "calibrating the fitted KV codes on {} tokens of {}",
                c.tokens, c.text
            ));
            let text = c.text(v.seed, model.config.eos_token_id);
            let forward = settings.forward();
            Some(calibrate_kv(
                source.as_ref(),
                &tokenizer,
                &text,
                c.key_space,
                &forward,
            )?)
        }
        false => None,
    };
    let compressed = match (&v.compression, &calibration) {
        (Some(c), Some(calibration)) => Some(CompressedKv::plan(
            calibration,
            c.options.clone(),
            &c.modes,
            &model.config,
        )?),
        _ => None,
    };
    let variants = v
        .kv_variants
        .iter()
        .map(|spec| {
            KvVariant::build(
                spec,
                &model.config,
                calibration.as_ref(),
                &v.reference_options,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let modes = modes(act.as_ref().map(|a| a as _), compressed.as_ref(), &variants);
    let mode_names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
    let (source_spec, device) = (&v.source, describe(&settings.load));
    printer.note(format!(
        "validate {source_spec}: {}, modes {}, {device}",
        describe_tasks(&tasks),
        mode_names.join(", "),
    ));
    let (mut accuracy_rows, mut choice_rows, mut speed_rows) = (Vec::new(), Vec::new(), Vec::new());
    let mut sequence_lengths = BTreeMap::new();
    let total = (modes.len() * tasks.len()) as u64;
    let mut progress = Progress::new(&printer, "validate", "task", total);
    let mut done = 0;
    for mode in &modes {
        let (mut scoring_tokens, mut scoring_seconds) = (0, 0.0);
        for task in tasks.iter_mut() {
            progress.set_message(format!("{} · {}", task.name(), mode.name()));
            progress.set_position(done as f64);
            let run = task.run(&model, &tokenizer, mode)?;
            run.notes.iter().for_each(|note| progress.println(note));
            accuracy_rows.extend(run.accuracy);
            choice_rows.extend(run.choices);
            let key = (task.name().to_string(), mode.name().to_string());
            sequence_lengths.insert(key, run.sequence_lengths);
            scoring_tokens += run.scoring_tokens;
            scoring_seconds += run.scoring_seconds;
            done += 1;
        }
        let mut speed = SpeedRow::scoring(mode, scoring_tokens, scoring_seconds);
        if let Some(prompts) = &decode_prompts {
            measure_decode(&model, prompts, v.decode_tokens, v.seed, mode, &mut speed)?;
            speed.compare_with(speed_rows.first());
        }
        speed_rows.push(speed);
        progress.set_position(done as f64);
    }
    progress.finish();

    let out_dir = &v.out_dir;
    write_csv(&out_dir.join("accuracy.csv"), &accuracy_rows)?;
    write_csv(&out_dir.join("choices.csv"), &choice_rows)?;
    write_csv(&out_dir.join("speed.csv"), &speed_rows)?;
    let mut target_rows = compressed
        .as_ref()
        .map_or(Vec::new(), |kv| kv.target_rows());
    target_rows.extend(variants.iter().flat_map(KvVariant::target_rows));
    let low_rank_rows: Vec<_> = variants.iter().flat_map(|v| v.low_rank.clone()).collect();
    if !target_rows.is_empty() {
        write_csv(&out_dir.join("kv_targets.csv"), &target_rows)?;
    }
    if !low_rank_rows.is_empty() {
        write_csv(&out_dir.join("kv_lowrank.csv"), &low_rank_rows)?;
    }
    for task in &tasks {
        task.write_rows(out_dir)?;
    }
    let bpb_rows: Vec<BpbRow> = tasks
        .iter()
        .filter_map(|t| match t.summary() {
            TaskSummary::Bpb(rows) => Some(rows.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    let layouts: Vec<(&str, Option<&KvLayout>)> = modes.iter().map(|m| (m.name(), m.kv)).collect();
    let pareto = (modes.iter().any(|m| m.kv.is_some())).then(|| {
        pareto_rows(&ParetoInputs {
            accuracy: &accuracy_rows,
            bpb: &bpb_rows,
            speed: &speed_rows,
            layouts: &layouts,
            sequence_lengths: &sequence_lengths,
            config: &model.config,
        })
    });
    let pareto_figures = match &pareto {
        Some(rows) => {
            write_csv(&out_dir.join("pareto.csv"), rows)?;
            write_pareto_charts(rows, out_dir)?
        }
        None => Vec::new(),
    };
    let (task_list, extra) = task_manifests(&tasks);
    let manifest = ValidateManifest {
        tool: tool_version(),
        source: source.provenance(),
        config: source.config(),
        tokenizer: tokenizer_name,
        tasks: task_list,
        limit: v.limit,
        seed: v.seed,
        batch_tokens: v.batch_tokens,
        decode_tokens: v.decode_tokens,
        act: v.act.clone(),
        kv_compression: compressed
            .as_ref()
            .map(|kv| KvManifest::of(kv, &model.config)),
        kv_variants: variants.iter().map(KvVariant::manifest).collect(),
        kv_calibration: calibration.as_ref().map(|c| c.record.clone()),
        device,
        peak_rss_bytes: peak_rss_bytes(),
        seconds: started.elapsed().as_secs_f64(),
        extra,
    };
    let json = serde_json::to_string_pretty(&manifest)?;
    write_atomic(&out_dir.join("manifest.json"), json.as_bytes())?;
    let provenance = manifest_line(&manifest);
    let mut report = report_markdown(
        &accuracy_rows,
        &speed_rows,
        &provenance,
        manifest.peak_rss_bytes,
    );
    report.push_str(&compressed.as_ref().map(kv_section).unwrap_or_default());
    if let Some(rows) = &pareto {
        report.push_str(&pareto_section(rows, &pareto_figures));
    }
    report.push_str(&task_sections(&tasks));
    write_atomic(&out_dir.join("report.md"), report.as_bytes())?;
    printer.result(report);
    printer.note(format!("wrote {}", out_dir.display()));
    Ok(())
}
