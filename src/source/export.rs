//! Writing any source out as a Hugging Face model folder (config.json + safetensors shards + index),
//! one shard group at a time, so a model larger than memory can be exported.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use tch::{Kind, Tensor};

use super::safetensors::INDEX_FILE;
use super::WeightSource;
use crate::output::atomic::write_atomic;

/// Writes `source` to `dir` as f32 safetensors, starting a new shard whenever the current one would
/// pass `max_shard_bytes` (a tensor larger than that gets a shard of its own).
pub fn export_safetensors(
    source: &dyn WeightSource,
    dir: &Path,
    max_shard_bytes: u64,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let config_json = serde_json::to_string_pretty(&source.config().to_hf_json())?;
    write_atomic(&dir.join("config.json"), config_json.as_bytes())?;

    let infos = source.tensor_infos();
    let mut groups: Vec<Vec<String>> = vec![Vec::new()];
    let mut group_bytes = 0u64;
    for info in &infos {
        let bytes = 4 * info.shape.iter().product::<i64>() as u64;
        if group_bytes > 0 && group_bytes + bytes > max_shard_bytes {
            groups.push(Vec::new());
            group_bytes = 0;
        }
        groups
            .last_mut()
            .expect("non-empty")
            .push(info.name.clone());
        group_bytes += bytes;
    }
    let total = groups.len();
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0u64;
    for (i, names) in groups.iter().enumerate() {
        let file = if total == 1 {
            super::safetensors::SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, total)
        };
        let tensors: Vec<(String, Tensor)> = names
            .iter()
            .map(|n| Ok((n.clone(), source.read(n)?.to_kind(Kind::Float).contiguous())))
            .collect::<Result<_>>()?;
        let serialized = serialize_f32(&tensors, None)?;
        total_size += tensors
            .iter()
            .map(|(_, t)| 4 * t.numel() as u64)
            .sum::<u64>();
        write_atomic(&dir.join(&file), &serialized)?;
        for name in names {
            weight_map.insert(name.clone(), file.clone());
        }
    }
    if total > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
        write_atomic(
            &dir.join(INDEX_FILE),
            serde_json::to_string_pretty(&index)?.as_bytes(),
        )?;
    }
    Ok(())
}

/// Safetensors bytes of contiguous f32 CPU tensors (safetensors sorts them by name).
pub fn serialize_f32(
    tensors: &[(String, Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, t)| tensor_bytes(t)).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            Ok((name.clone(), TensorView::new(Dtype::F32, shape, b)?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let values = Vec::<f32>::try_from(&t.view(-1)).unwrap_or_default();
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
