//! `ckpt-scan forward SOURCE --text T`: prompt loss, next-token predictions, greedy continuation.

use anyhow::Result;
use tch::{Kind, Tensor};

use crate::capture::NoCapture;
use crate::cli::ForwardArgs;
use crate::data::tokenizer::{decode, encode_prompt, tokenizer_for};
use crate::model::forward::{forward_streamed, OutputHead};
use crate::model::resident::ResidentModel;
use crate::printer::Printer;
use crate::settings::{describe, Settings};
use crate::source::open_source_with;

/// Mean next-token cross-entropy (nats) of `ids` under `logits` (`[1, seq, vocab]`).
pub fn prompt_loss(logits: &Tensor, ids: &[i64]) -> f64 {
    let seq = ids.len() as i64;
    if seq < 2 {
        return f64::NAN;
    }
    let predicted = logits.get(0).narrow(0, 0, seq - 1);
    let targets = Tensor::from_slice(&ids[1..]);
    let loss = predicted.log_softmax(-1, Kind::Float).nll_loss(&targets);
    f64::try_from(loss).unwrap_or(f64::NAN)
}

pub fn run(args: &ForwardArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let source = open_source_with(&args.source, &settings.hub)?;
    let (tokenizer, tokenizer_name) = tokenizer_for(source.as_ref(), args.tokenizer.as_deref())?;
    let ids = encode_prompt(&tokenizer, &args.text)?;
    if ids.is_empty() {
        anyhow::bail!("--text {:?} encodes to no tokens", args.text);
    }
    // RoPE would run past the positions the model was trained on and answer without a word.
    let max_positions = source.config().max_position_embeddings;
    if (ids.len() + args.generate) as i64 > max_positions {
        anyhow::bail!(
            "--text: {} prompt tokens plus --generate {} exceed the model's max_position_embeddings ({max_positions})\nhint: shorten the text or lower --generate",
            ids.len(),
            args.generate
        );
    }
    printer.note(format!(
        "{}: {} tokens ({tokenizer_name}), {}",
        args.source,
        ids.len(),
        describe(&settings.load)
    ));
    let start = std::time::Instant::now();
    let batch = Tensor::from_slice(&ids).unsqueeze(0);
    let logits = forward_streamed(
        source.as_ref(),
        &[batch],
        &mut NoCapture,
        &settings.load,
        OutputHead::Logits,
        &settings.hidden_budget,
        None,
    )?
    .remove(0);
    printer.result(format!(
        "prompt loss  {:.4} nats/token (uniform over the vocabulary would be {:.4})",
        prompt_loss(&logits, &ids),
        (source.config().vocab_size as f64).ln()
    ));
    let last = logits
        .get(0)
        .get(ids.len() as i64 - 1)
        .softmax(-1, Kind::Float);
    let (probs, top) = last.topk(5, -1, true, true);
    let mut line = String::from("next token  ");
    for i in 0..5 {
        let id = i64::try_from(top.get(i))?;
        let p = f64::try_from(probs.get(i))?;
        line.push_str(&format!(" {:?} {:.3}", decode(&tokenizer, &[id])?, p));
    }
    printer.result(line);
    printer.note(format!(
        "layer-streamed forward: {:.2} s",
        start.elapsed().as_secs_f64()
    ));
    if args.generate > 0 {
        let model = ResidentModel::load(source.as_ref(), &settings.load)?;
        let continuation = model.greedy(&ids, args.generate, source.config().eos_token_id)?;
        printer.result(format!(
            "greedy       {:?} → {:?}",
            args.text,
            decode(&tokenizer, &continuation)?
        ));
    }
    Ok(())
}
