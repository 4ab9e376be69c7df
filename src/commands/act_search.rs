//! `ckpt-scan act-search SOURCE`: the ACT head list of a model for a task family. Baseline and
//! single-head-calibrated accuracy on train-split calibration items; a head is kept when its `acc`
//! beats the baseline's (research/act.md §3.2) → a JSON head list `validate --act` reads, with every
//! candidate's scores and the calibration set's provenance.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::cli::ActSearchArgs;
use crate::data::calibration::calibration_set;
use crate::data::tokenizer::tokenizer_for;
use crate::edit::act::{SinkThreshold, FIRST_LAYER};
use crate::infer::act_head_list::{Calibration, Candidate, HeadList, SourceFile};
use crate::infer::act_search::{calibration_score, search_heads, SearchOptions};
use crate::model::resident::ResidentModel;
use crate::output::atomic::{check_output_dir, write_atomic};
use crate::output::default_out_dir;
use crate::output::digest::sha256_file;
use crate::output::manifest::tool_version;
use crate::printer::Printer;
use crate::settings::{describe, Settings};
use crate::source::open_source_with;

pub fn run(args: &ActSearchArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let started = std::time::Instant::now();
    let out = args.out.clone().unwrap_or_else(|| {
        default_out_dir("act", &args.source).join(format!("{}.json", args.family.name()))
    });
    check_output_dir(out.parent().unwrap_or(std::path::Path::new("")), "--out")?;
    if !(0.0..=1.0).contains(&args.beta) {
        bail!("--beta must be in [0, 1], got {}", args.beta);
    }
    if args.tau.is_nan() || args.tau < 0.0 {
        bail!("--tau must be a non-negative number, got {}", args.tau);
    }
    let source = open_source_with(&args.source, &settings.hub)?;
    let config = source.config();
    let layers = match &args.layers {
        Some(list) => list.0.clone(),
        None => (FIRST_LAYER..=config.num_hidden_layers - 2).collect(),
    };
    let last = config.num_hidden_layers - 2;
    if layers.is_empty() {
        bail!(
            "--layers: no layer to search (ACT calibrates layers {FIRST_LAYER}..={last}; this model has {})",
            config.num_hidden_layers
        );
    }
    if let Some(layer) = layers.iter().find(|&&l| !(FIRST_LAYER..=last).contains(&l)) {
        bail!(
            "--layers: layer {layer} is outside {FIRST_LAYER}..={last}, the layers ACT calibrates in this {}-layer model",
            config.num_hidden_layers
        );
    }
    let (tokenizer, tokenizer_name) = tokenizer_for(source.as_ref(), args.tokenizer.as_deref())?;
    let calibration = calibration_set(args.family, args.calibration_items, settings.master_seed())?;
    printer.note(format!(
        "act-search {}: {} calibration items ({}), layers {}..={} × {} heads, β {}, τ {}, {}",
        args.source,
        calibration.items.len(),
        calibration
            .tasks
            .iter()
            .map(|t| format!("{} {}", t.task, t.items_used))
            .collect::<Vec<_>>()
            .join(", "),
        layers[0],
        layers[layers.len() - 1],
        config.num_attention_heads,
        args.beta,
        args.tau,
        describe(&settings.load)
    ));
    let model = ResidentModel::load(source.as_ref(), &settings.load)?;
    let options = SearchOptions {
        beta: args.beta,
        threshold: SinkThreshold::Absolute(args.tau),
        layers: layers.clone(),
        batch_tokens: args.batch_tokens,
    };
    let search = search_heads(
        &model,
        &tokenizer,
        &calibration.items,
        &options,
        &mut |line| printer.note(line),
    )?;

    let baseline = calibration_score(&search.baseline);
    let mut heads: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut candidates = Vec::new();
    for tried in &search.heads {
        let score = calibration_score(&tried.scores);
        let accepted = score.acc_correct > baseline.acc_correct;
        if accepted {
            heads
                .entry(tried.layer.to_string())
                .or_default()
                .push(tried.head);
        }
        candidates.push(Candidate {
            layer: tried.layer,
            head: tried.head,
            accepted,
            requests_changed: tried.requests_changed,
            delta_acc: score.acc - baseline.acc,
            delta_mean_gold_loglik: score.mean_gold_loglik - baseline.mean_gold_loglik,
            delta_mean_gold_choice_logprob: score.mean_gold_choice_logprob
                - baseline.mean_gold_choice_logprob,
            score,
        });
    }
    let source_files = source
        .provenance()
        .files
        .iter()
        .map(|path| {
            Ok(SourceFile {
                path: path.clone(),
                sha256: sha256_file(path)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let accepted = candidates.iter().filter(|c| c.accepted).count();
    let list = HeadList {
        heads,
        beta: args.beta,
        tau: args.tau,
        criterion: "acc (highest summed log-likelihood) on the calibration items strictly above the baseline's, with only that head calibrated",
        task_family: args.family.name(),
        source: source.provenance(),
        source_files,
        config,
        tokenizer: tokenizer_name,
        layers_searched: layers,
        calibration: Calibration {
            tasks: &calibration.tasks,
            items: calibration.items.len(),
            requests: search.requests,
            tokens: search.tokens,
            item_ids_sha256: &calibration.item_ids_sha256,
            seed: settings.master_seed(),
            shots: 0,
        },
        baseline,
        candidates,
        tool: tool_version(),
        device: describe(&settings.load),
        batch_tokens: args.batch_tokens,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_atomic(&out, serde_json::to_string_pretty(&list)?.as_bytes())?;
    printer.result(format!(
        "baseline acc {:.4} ({}/{}); {accepted} of {} heads accepted; {:.0} s",
        baseline.acc,
        baseline.acc_correct,
        baseline.items,
        list.candidates.len(),
        list.seconds
    ));
    printer.note(format!("wrote {}", out.display()));
    Ok(())
}
