//! `ckpt-scan inspect SOURCE`: config summary, tensor table with fingerprints, integrity problems.

use anyhow::{bail, Result};

use crate::analysis::inspection::{inspect_source, InspectReport};
use crate::cli::InspectArgs;
use crate::output::atomic::{check_output_dir, write_atomic};
use crate::printer::Printer;
use crate::settings::Settings;
use crate::source::open_source_with;

pub fn run(args: &InspectArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    if let Some(path) = &args.json {
        let dir = path.parent().unwrap_or(std::path::Path::new(""));
        check_output_dir(dir, "--json")?;
    }
    let source = open_source_with(&args.source, &settings.hub)?;
    let report = inspect_source(source.as_ref(), !args.headers_only)?;
    print_report(&report, &printer);
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        printer.note(format!("wrote {}", path.display()));
    }
    // The report is printed (and written) in full first; the exit status is for scripts.
    if !report.problems.is_empty() {
        bail!(
            "{}: {} integrity problem{} (listed above)",
            report.provenance.spec,
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn print_report(r: &InspectReport, p: &Printer) {
    let c = &r.config;
    p.result(format!(
        "source       {} ({})",
        r.provenance.spec, r.provenance.kind
    ));
    if let Some(sha) = &r.provenance.revision_sha {
        p.result(format!("revision     {sha}"));
    }
    if let Some(init) = &r.provenance.init {
        p.result(format!("init         {init}"));
    }
    p.result(format!(
        "architecture {:?}: {} layers, hidden {}, heads {} (kv {}), head_dim {}, mlp {}, vocab {}",
        c.architecture,
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size
    ));
    p.result(format!(
        "             rms_norm_eps {:e}, rope_theta {}, tied embeddings {}, parameters {}",
        c.rms_norm_eps, c.rope_theta, c.tie_word_embeddings, r.parameters
    ));
    let partial = match c.rotary_dim {
        Some(r) => format!(", rotates {r} of {} dims per head", c.head_dim),
        None => String::new(),
    };
    p.result(format!(
        "rope         {}, max_position_embeddings {}{partial}",
        c.rope_scaling.describe(),
        c.max_position_embeddings
    ));
    if c.parallel_residual {
        p.result("block        parallel residual: x + attn(ln₁ x) + mlp(ln₂ x)");
    }
    if let Some(w) = &c.sliding_window {
        let windowed: Vec<String> = (0..c.num_hidden_layers)
            .filter(|&l| c.attention_window(l).is_some())
            .map(|l| l.to_string())
            .collect();
        p.result(format!(
            "window       {} keys on layers {} (rope_theta {}, {})",
            w.size,
            windowed.join(","),
            w.rope_theta,
            w.rope_scaling.describe()
        ));
    }
    p.result(format!(
        "{:<56} {:>18} {:>6} {:>12} {:>16} {:>8}",
        "tensor", "shape", "dtype", "bytes", "fingerprint", "nan/inf"
    ));
    for t in &r.tensors {
        p.result(format!(
            "{:<56} {:>18} {:>6} {:>12} {:>16} {:>8}",
            t.info.name,
            format!("{:?}", t.info.shape),
            t.info.dtype,
            t.info.bytes,
            t.fingerprint.as_deref().unwrap_or("-"),
            t.non_finite.map_or("-".to_string(), |n| n.to_string())
        ));
    }
    if r.problems.is_empty() {
        p.result("problems     none");
    } else {
        p.result(format!("problems     {}", r.problems.len()));
        for problem in &r.problems {
            p.result(format!("  - {problem}"));
        }
    }
}
