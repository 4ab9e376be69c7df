//! `ckpt-scan inspect SOURCE`: config summary, tensor table with fingerprints, integrity problems.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::cli::InspectArgs;
use crate::model::config::ModelConfig;
use crate::model::weights::count_non_finite;
use crate::printer::Printer;
use crate::report::atomic::{check_output_dir, write_atomic};
use crate::settings::Settings;
use crate::source::{expected_tensors, open_source_with, Provenance, TensorInfo, WeightSource};

#[derive(Serialize)]
pub struct TensorRow {
    #[serde(flatten)]
    pub info: TensorInfo,
    /// First 16 hex digits of the sha256 of the tensor's f32 values (little-endian).
    pub fingerprint: Option<String>,
    pub non_finite: Option<i64>,
}

#[derive(Serialize)]
pub struct InspectReport {
    pub provenance: Provenance,
    pub config: ModelConfig,
    pub parameters: i64,
    pub tensors: Vec<TensorRow>,
    pub problems: Vec<String>,
}

/// Builds the report; `read_data` reads every tensor for fingerprints and the NaN/Inf scan.
pub fn inspect_source(source: &dyn WeightSource, read_data: bool) -> Result<InspectReport> {
    let config = source.config().clone();
    let infos = source.tensor_infos();
    let mut problems = Vec::new();
    let expected: BTreeMap<String, Vec<i64>> = expected_tensors(&config).into_iter().collect();
    let present: BTreeMap<&str, &TensorInfo> = infos.iter().map(|i| (i.name.as_str(), i)).collect();
    for (name, shape) in &expected {
        match present.get(name.as_str()) {
            None => problems.push(format!("missing tensor {name} (expected shape {shape:?})")),
            Some(info) if &info.shape != shape => problems.push(format!(
                "tensor {name}: shape {:?} disagrees with the config, which implies {shape:?}",
                info.shape
            )),
            Some(_) => {}
        }
    }
    for info in &infos {
        if !expected.contains_key(&info.name) && !info.name.ends_with("rotary_emb.inv_freq") {
            problems.push(format!(
                "unexpected tensor {} (ignored by the forward pass)",
                info.name
            ));
        }
    }
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        let (fingerprint, non_finite) = if read_data {
            let t = source.read(&info.name)?;
            let bad = count_non_finite(&t);
            if bad > 0 {
                problems.push(format!("tensor {}: {bad} NaN/Inf values", info.name));
            }
            (Some(fingerprint(&t)), Some(bad))
        } else {
            (None, None)
        };
        tensors.push(TensorRow {
            info,
            fingerprint,
            non_finite,
        });
    }
    let parameters = tensors
        .iter()
        .map(|t| t.info.shape.iter().product::<i64>())
        .sum();
    Ok(InspectReport {
        provenance: source.provenance().clone(),
        config,
        parameters,
        tensors,
        problems,
    })
}

/// Content hash of a tensor's values as f32, independent of storage dtype and layout.
pub fn fingerprint(tensor: &Tensor) -> String {
    let flat = tensor.to_kind(Kind::Float).contiguous().view(-1);
    let values: Vec<f32> = Vec::<f32>::try_from(&flat).unwrap_or_default();
    let mut hasher = Sha256::new();
    for v in values {
        hasher.update(v.to_le_bytes());
    }
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

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
