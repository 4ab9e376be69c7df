//! The training run: prepare the corpus and tokenizer once, then train from OLMo-2's init with
//! AdamW, writing checkpoints at log-spaced steps as a Hub-style series; resumes from the last
//! complete checkpoint (weights in the series, optimizer state in a side file).
//!
//! Determinism: the init is seeded per tensor name (`source::init`), batch `u` is drawn from
//! ChaCha8 keyed by (seed, u), and libtorch runs with the config's fixed thread count, so on CPU
//! the same config gives bit-identical weights, and a resumed run continues exactly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::model::resident::ResidentModel;
use crate::model::weights::LoadOptions;
use crate::output::atomic::write_atomic;
use crate::output::csv::write_csv;
use crate::printer::Printer;
use crate::progress::Progress;
use crate::report::plot::{write_line_chart, LegendPosition, LineChart, Series};
use crate::source::branch::tokens_suffix;
use crate::source::init::{InitScheme, InitSource};
use crate::train::checkpoint::{CheckpointFiles, SeriesRepo};
use crate::train::config::TrainConfig;
use crate::train::optimizer::AdamW;
use crate::train::schedule::CosineWithWarmup;
use crate::train::{corpus, tokenizer};

/// What to train and where.
pub struct TrainRequest {
    pub config: TrainConfig,
    /// The cache folder holding `models--ckpt-scan--NAME/` and `runs/NAME/`.
    pub series_dir: PathBuf,
    /// `$CKPT_SCAN_DATA`.
    pub data_root: PathBuf,
    pub device: Device,
}

/// One row of loss.csv.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossRow {
    pub step: u64,
    pub tokens: u64,
    /// Mean loss of the batch this update trained on (none at step 0).
    pub train_loss: Option<f64>,
    /// Mean loss over the fixed held-out sequences (at checkpoints and every `eval_interval`).
    pub heldout_loss: Option<f64>,
    /// Learning rate of this update (none at step 0).
    pub lr: Option<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: Option<f64>,
}

pub struct TrainOutcome {
    /// `(step, branch, commit)` of every checkpoint, in step order.
    pub checkpoints: Vec<(u64, String, String)>,
    pub rows: Vec<LossRow>,
    /// The checkpoint the run continued from, when it resumed.
    pub resumed_from: Option<u64>,
    pub run_dir: PathBuf,
}

/// 0, 4, 8, 16, … (powers of two from 4) below `steps`, then `steps`.
pub fn checkpoint_steps(steps: u64) -> Vec<u64> {
    let mut out = vec![0];
    let mut s = 4;
    while s < steps {
        out.push(s);
        s *= 2;
    }
    out.push(steps);
    out
}

/// `stage1-step{N}-tokens{M}{K|M|B}`.
pub fn branch_name(step: u64, tokens_per_step: u64) -> String {
    format!(
        "stage1-step{step}-{}",
        tokens_suffix(step * tokens_per_step)
    )
}

/// The folder of a run's own files (config, corpus manifest, tokens, optimizer states, losses).
pub fn run_dir(series_dir: &Path, name: &str) -> PathBuf {
    series_dir.join("runs").join(name)
}

const CONFIG_FILE: &str = "train-config.toml";
const TRAIN_TOKENS: &str = "tokens-train.u32";
const HELDOUT_TOKENS: &str = "tokens-heldout.u32";
const TOKENIZER_FILE: &str = "tokenizer.json";
const LOSS_FILE: &str = "loss.csv";

fn optimizer_path(run_dir: &Path, step: u64) -> PathBuf {
    run_dir
        .join("optimizer")
        .join(format!("step{step}.safetensors"))
}

pub fn train(request: &TrainRequest, printer: &Printer) -> Result<TrainOutcome> {
    let config = &request.config;
    tch::set_num_threads(config.threads);
    let run_dir = run_dir(&request.series_dir, &config.name);
    prepare(request, &run_dir, printer)?;
    let tokenizer_json = std::fs::read(run_dir.join(TOKENIZER_FILE))?;
    let train_tokens = read_tokens(&run_dir.join(TRAIN_TOKENS))?;
    let heldout_tokens = read_tokens(&run_dir.join(HELDOUT_TOKENS))?;
    check_token_counts(&run_dir, config, train_tokens.len(), heldout_tokens.len())?;

    let model_config = config.model_config();
    let spec = format!("init:{}?seed={}&scheme=olmo", config.name, config.seed);
    let init = InitSource::new(model_config.clone(), config.seed, InitScheme::Olmo, &spec);
    let options = LoadOptions {
        device: request.device,
        kind: Kind::Float,
        allow_nan: false,
    };
    let model = ResidentModel::load(&init, &options)?;
    let parameters: Vec<(String, Tensor)> = model
        .parameters()
        .into_iter()
        .map(|(n, t)| (n, t.set_requires_grad(true)))
        .collect();
    let mut optimizer = AdamW::new(parameters, config);
    let schedule = CosineWithWarmup {
        peak: config.learning_rate,
        warmup_steps: config.warmup_steps,
        total_steps: config.steps,
        final_fraction: config.final_lr_fraction,
    };
    let repo = SeriesRepo::new(&request.series_dir, &config.repo_id());
    let tokens_per_step = config.tokens_per_step();
    let saves = checkpoint_steps(config.steps);
    let heldout = heldout_batches(&heldout_tokens, config);

    // Resume from the last checkpoint whose snapshot, ref and optimizer state are all there.
    let mut checkpoints = Vec::new();
    let mut resumed_from = None;
    for &step in &saves {
        let branch = branch_name(step, tokens_per_step);
        match repo.snapshot_of(&branch) {
            Some(dir) if optimizer_path(&run_dir, step).exists() => {
                let commit = dir
                    .file_name()
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default();
                checkpoints.push((step, branch, commit));
                resumed_from = Some(step);
            }
            _ => break,
        }
    }
    let mut rows = Vec::new();
    let start = match resumed_from {
        Some(step) => {
            let dir = repo
                .snapshot_of(&checkpoints[checkpoints.len() - 1].1)
                .expect("checked above");
            load_weights(&model, &dir.join("model.safetensors"))?;
            optimizer.load(&optimizer_path(&run_dir, step))?;
            rows = read_rows(&run_dir.join(LOSS_FILE))?
                .into_iter()
                .filter(|r| r.step <= step)
                .collect();
            printer.note(format!(
                "resuming {} from step {step} ({})",
                config.repo_id(),
                run_dir.display()
            ));
            step
        }
        None => {
            let loss = heldout_loss(&model, &heldout, request.device)?;
            rows.push(LossRow {
                step: 0,
                tokens: 0,
                train_loss: None,
                heldout_loss: Some(loss),
                lr: None,
                grad_norm: None,
            });
            let (branch, commit) = save(
                &repo,
                &model,
                &optimizer,
                &tokenizer_json,
                &run_dir,
                0,
                tokens_per_step,
                &rows,
            )?;
            printer.note(format!("step 0: held-out loss {loss:.4} → {branch}"));
            checkpoints.push((0, branch, commit));
            0
        }
    };

    let clock = Instant::now();
    let mut progress = Progress::new(printer, "train", "step", config.steps);
    progress.set_position(start as f64);
    for update in start + 1..=config.steps {
        let (inputs, targets) = training_batch(&train_tokens, config, update);
        let logits = model.logits_with_grad(&inputs)?;
        let loss = cross_entropy(&logits, &targets.to_device(request.device));
        loss.backward();
        let train_loss = f64::try_from(&loss)?;
        if !train_loss.is_finite() {
            bail!(
                "training diverged at step {update}: loss {train_loss}\nhint: lower learning_rate"
            );
        }
        let grad_norm = optimizer.clip_grad_norm(config.max_grad_norm);
        let lr = schedule.rate(update);
        optimizer.step(lr);
        let is_save = saves.contains(&update);
        let heldout_loss = if is_save || update % config.eval_interval == 0 {
            Some(heldout_loss(&model, &heldout, request.device)?)
        } else {
            None
        };
        rows.push(LossRow {
            step: update,
            tokens: update * tokens_per_step,
            train_loss: Some(train_loss),
            heldout_loss,
            lr: Some(lr),
            grad_norm: Some(grad_norm),
        });
        progress.set_message(format!("loss {train_loss:.3}"));
        progress.set_position(update as f64);
        if let Some(h) = heldout_loss {
            progress.println(format!(
                "step {update}/{}: train {train_loss:.4} held-out {h:.4} lr {lr:.2e} ({:.0} s)",
                config.steps,
                clock.elapsed().as_secs_f64()
            ));
        }
        if is_save {
            let (branch, commit) = save(
                &repo,
                &model,
                &optimizer,
                &tokenizer_json,
                &run_dir,
                update,
                tokens_per_step,
                &rows,
            )?;
            checkpoints.push((update, branch, commit));
        }
    }
    progress.finish();
    let (_, _, final_commit) = checkpoints.last().expect("step 0 at least");
    repo.point("main", final_commit)?;
    write_loss_plot(&run_dir, &rows)?;
    Ok(TrainOutcome {
        checkpoints,
        rows,
        resumed_from,
        run_dir,
    })
}

/// Writes checkpoint `step`: the optimizer side file and losses first, the series ref last.
#[allow(clippy::too_many_arguments)]
fn save(
    repo: &SeriesRepo,
    model: &ResidentModel,
    optimizer: &AdamW,
    tokenizer_json: &[u8],
    run_dir: &Path,
    step: u64,
    tokens_per_step: u64,
    rows: &[LossRow],
) -> Result<(String, String)> {
    let branch = branch_name(step, tokens_per_step);
    optimizer.save(&optimizer_path(run_dir, step))?;
    write_csv(&run_dir.join(LOSS_FILE), rows)?;
    let files = CheckpointFiles::new(&model.config, &model.parameters(), tokenizer_json)?;
    let commit = repo.write(&branch, &files, step)?;
    Ok((branch, commit))
}

/// `loss.png` and `loss.svg` beside loss.csv: batch and held-out loss against tokens seen.
fn write_loss_plot(run_dir: &Path, rows: &[LossRow]) -> Result<()> {
    let points = |loss: fn(&LossRow) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| Some((r.tokens as f64, loss(r)?)))
            .collect()
    };
    let mut chart = LineChart::new(
        "Training the built-in series",
        "tokens seen",
        "cross-entropy (nats per token)",
    );
    chart.legend = LegendPosition::UpperRight;
    chart
        .series
        .push(Series::new("train (batch)", points(|r| r.train_loss)));
    chart.series.push(Series {
        markers: true,
        ..Series::new("held-out", points(|r| r.heldout_loss))
    });
    write_line_chart(&chart, &run_dir.join("loss"))?;
    Ok(())
}

/// Builds the corpus, tokenizer and token streams once per run folder; a later run checks that
/// its config matches the one recorded.
fn prepare(request: &TrainRequest, run_dir: &Path, printer: &Printer) -> Result<()> {
    let config = &request.config;
    let recorded_path = run_dir.join(CONFIG_FILE);
    let wanted = toml::to_string(config)?;
    if let Ok(recorded) = std::fs::read_to_string(&recorded_path) {
        if recorded != wanted {
            bail!(
                "{}: this series was trained with a different config\nhint: pass another --out, or delete {} to start over",
                recorded_path.display(),
                run_dir.display()
            );
        }
        return Ok(());
    }
    let clock = Instant::now();
    let corpus = corpus::build(
        &request.data_root,
        config.corpus_bytes_per_source,
        config.heldout_percent,
    )?;
    let tok = tokenizer::train_bpe(&corpus.train, config.vocab_size as usize)?;
    if tok.get_vocab_size(true) as i64 > config.vocab_size {
        bail!(
            "the tokenizer has {} tokens, more than vocab_size {}",
            tok.get_vocab_size(true),
            config.vocab_size
        );
    }
    tokenizer::save(&tok, &run_dir.join(TOKENIZER_FILE))?;
    let train = tokenizer::encode_stream(&tok, &corpus.train)?;
    let heldout = tokenizer::encode_stream(&tok, &corpus.heldout)?;
    // Before anything marks the preparation done: a refused config must leave the folder open
    // to the corrected one.
    check_token_counts(run_dir, config, train.len(), heldout.len())?;
    write_tokens(&run_dir.join(TRAIN_TOKENS), &train)?;
    write_tokens(&run_dir.join(HELDOUT_TOKENS), &heldout)?;
    let manifest = serde_json::json!({
        "corpus": corpus.manifest,
        "tokenizer": {
            "kind": "byte-level BPE (tokenizers crate)",
            "vocab_size": tok.get_vocab_size(true),
            "sha256": format!("{:x}", Sha256::digest(std::fs::read(run_dir.join(TOKENIZER_FILE))?)),
        },
        "tokens": {
            "train": train.len(),
            "heldout": heldout.len(),
            "train_sha256": format!("{:x}", Sha256::digest(std::fs::read(run_dir.join(TRAIN_TOKENS))?)),
            "heldout_sha256": format!("{:x}", Sha256::digest(std::fs::read(run_dir.join(HELDOUT_TOKENS))?)),
        },
        "tool_version": env!("CARGO_PKG_VERSION"),
    });
    write_atomic(
        &run_dir.join("corpus.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    // Written last: its presence marks the preparation complete.
    write_atomic(&recorded_path, wanted.as_bytes())?;
    printer.note(format!(
        "corpus: {} training and {} held-out tokens, tokenizer of {} ({:.1} s)",
        train.len(),
        heldout.len(),
        tok.get_vocab_size(true),
        clock.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Training needs a sequence plus its shifted target, held-out loss one sequence.
fn check_token_counts(
    run_dir: &Path,
    config: &TrainConfig,
    train: usize,
    heldout: usize,
) -> Result<()> {
    let seq = config.seq_len as usize;
    if train < seq + 2 || heldout < seq + 1 {
        bail!(
            "{}: {train} training and {heldout} held-out tokens are too few for seq_len {seq}\nhint: raise corpus_bytes_per_source",
            run_dir.display(),
        );
    }
    Ok(())
}

fn write_tokens(path: &Path, tokens: &[u32]) -> Result<()> {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    write_atomic(path, &bytes)
}

fn read_tokens(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.len() % 4 != 0 {
        bail!(
            "{}: truncated token file ({} bytes)",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn read_rows(path: &Path) -> Result<Vec<LossRow>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("{}: cannot read", path.display()))?;
    reader
        .deserialize()
        .map(|r| r.with_context(|| format!("{}: bad row", path.display())))
        .collect()
}

/// Batch of update `update`: `batch_size` windows at offsets drawn from ChaCha8 keyed by
/// sha256(seed, update). Returns `(inputs, targets)`, both `[batch, seq_len]` int64 on the CPU.
pub fn training_batch(tokens: &[u32], config: &TrainConfig, update: u64) -> (Tensor, Tensor) {
    let mut hasher = Sha256::new();
    hasher.update(config.seed.to_le_bytes());
    hasher.update(b"batch");
    hasher.update(update.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(hasher.finalize().into());
    let seq = config.seq_len as usize;
    let positions = (tokens.len() - seq - 1) as u64;
    let mut inputs = Vec::with_capacity(config.batch_size as usize * seq);
    let mut targets = Vec::with_capacity(inputs.capacity());
    for _ in 0..config.batch_size {
        let start = (rng.next_u64() % positions) as usize;
        inputs.extend(tokens[start..start + seq].iter().map(|&t| i64::from(t)));
        targets.extend(
            tokens[start + 1..start + seq + 1]
                .iter()
                .map(|&t| i64::from(t)),
        );
    }
    let shape = [config.batch_size, config.seq_len];
    (
        Tensor::from_slice(&inputs).view(shape),
        Tensor::from_slice(&targets).view(shape),
    )
}

/// The fixed held-out sequences: windows spread evenly over the whole held-out stream, so every
/// source is represented (the stream is in source order).
fn heldout_batches(tokens: &[u32], config: &TrainConfig) -> Vec<(Tensor, Tensor)> {
    let seq = config.seq_len as usize;
    let windows = (config.heldout_tokens as usize / seq)
        .min((tokens.len() - 1) / seq)
        .max(1);
    let stride = (tokens.len() - 1 - seq) / windows.max(2).saturating_sub(1).max(1);
    let starts: Vec<usize> = (0..windows)
        .map(|w| (w * stride).min(tokens.len() - 1 - seq))
        .collect();
    starts
        .chunks(config.batch_size as usize)
        .map(|chunk| {
            let take = |offset: usize| -> Tensor {
                let ids: Vec<i64> = chunk
                    .iter()
                    .flat_map(|&s| {
                        tokens[s + offset..s + offset + seq]
                            .iter()
                            .map(|&t| i64::from(t))
                    })
                    .collect();
                Tensor::from_slice(&ids).view([chunk.len() as i64, seq as i64])
            };
            (take(0), take(1))
        })
        .collect()
}

/// Mean next-token cross-entropy (nats) over the held-out sequences.
fn heldout_loss(
    model: &ResidentModel,
    batches: &[(Tensor, Tensor)],
    device: Device,
) -> Result<f64> {
    let (mut total, mut count) = (0.0, 0usize);
    for (inputs, targets) in batches {
        let logits = model.logits(inputs)?;
        let loss = f64::try_from(cross_entropy(&logits, &targets.to_device(device)))?;
        let n = targets.numel();
        total += loss * n as f64;
        count += n;
    }
    Ok(total / count as f64)
}

/// Mean cross-entropy of `[batch, seq, vocab]` logits against `[batch, seq]` targets.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let vocab = logits.size()[2];
    logits
        .view([-1, vocab])
        .cross_entropy_for_logits(&targets.view([-1]))
}

/// Copies a checkpoint's tensors into the model's parameters (in place, so the optimizer's
/// handles see them).
fn load_weights(model: &ResidentModel, path: &Path) -> Result<()> {
    let saved = Tensor::read_safetensors(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let _no_grad = tch::no_grad_guard();
    for (name, parameter) in model.parameters() {
        let tensor = saved
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| anyhow!("{}: lacks {name}", path.display()))?;
        let mut target = parameter.shallow_clone();
        target.copy_(tensor);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_log_spaced_from_zero_to_the_end() {
        assert_eq!(checkpoint_steps(20), [0, 4, 8, 16, 20]);
        assert_eq!(checkpoint_steps(16), [0, 4, 8, 16]);
        assert_eq!(checkpoint_steps(3), [0, 3]);
        assert_eq!(branch_name(16, 128), "stage1-step16-tokens3K");
    }

    #[test]
    fn batches_depend_only_on_seed_and_step() {
        let tokens: Vec<u32> = (0..1000).collect();
        let config = TrainConfig::test();
        let (a, ta) = training_batch(&tokens, &config, 5);
        let (b, _) = training_batch(&tokens, &config, 5);
        let (c, _) = training_batch(&tokens, &config, 6);
        assert!(a.equal(&b));
        assert!(!a.equal(&c));
        // Targets are the inputs shifted by one token.
        assert!(ta.narrow(1, 0, 31).equal(&a.narrow(1, 1, 31)));
    }
}
