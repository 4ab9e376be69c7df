//! What `inspect` reports of a weight source: its config, every tensor with a content
//! fingerprint and NaN/Inf count, and integrity problems against the tensors the config implies.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::model::weights::count_non_finite;
use crate::output::digest::hex;
use crate::source::{expected_tensors, Provenance, TensorInfo, WeightSource};

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
            (Some(fingerprint(&t)?), Some(bad))
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
/// A tensor whose values cannot be read is an error, never an empty hash (two failed reads would
/// look like duplicate checkpoints).
pub fn fingerprint(tensor: &Tensor) -> Result<String> {
    let flat = tensor.to_kind(Kind::Float).contiguous().view(-1);
    let values: Vec<f32> = Vec::<f32>::try_from(&flat)
        .map_err(|e| anyhow::anyhow!("cannot read a tensor's values for its fingerprint: {e}"))?;
    let mut hasher = Sha256::new();
    for v in values {
        hasher.update(v.to_le_bytes());
    }
    Ok(hex(&hasher.finalize()[..8]))
}
