//! A KV-cache variant resolved against a model: per layer, how keys and values are stored
//! ([`KvLayout`]), built from a `--kv` spec and, for the fitted codes (reference heads, low rank),
//! the calibration moments. Also the closed form of the bytes each layout holds, which the tests
//! check the caches against and the Pareto report plots.

use std::rc::Rc;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::capture::HeadKind;
use crate::config::ModelConfig;
use crate::infer::kv_calibration::{plan, Calibration};
use crate::infer::kv_spec::{KvMethod, KvSpec, QuantCodes};
use crate::infer::reference_heads::{
    CompressionOptions, CompressionPlan, KindPlan, KvMode, TargetRow,
};
use crate::model::head_map::KeySpace;
use crate::model::kv_cache::{Eviction, KindLayout, KvCache, LayerLayout};
use crate::model::kv_quant::{GroupAxis, QuantFormat};
use crate::model::low_rank::LowRankMap;
use crate::model::row_map::RowMap;

/// Bytes of one stored RoPE position (int64), held per token when keys are rebuilt before RoPE.
const POSITION_BYTES: i64 = 8;

/// Every layer's storage, and what the variant claims.
pub struct KvLayout {
    pub layers: Vec<LayerLayout>,
    /// 1 / (1 − dropped head fraction), the reference-head paper's accounting; NaN for the others.
    pub claimed_compression: f64,
}

impl KvLayout {
    pub fn plain(num_layers: i64) -> Self {
        KvLayout {
            layers: (0..num_layers).map(|_| LayerLayout::plain()).collect(),
            claimed_compression: 1.0,
        }
    }

    /// An empty cache of this layout.
    pub fn cache(&self) -> KvCache {
        KvCache::with_layout(&self.layers)
    }

    /// Bytes the cache holds for one sequence of `tokens` positions, full-precision entries at
    /// `element_bytes` each (closed form: what [`KvCache::bytes`] measures at batch 1).
    pub fn bytes(&self, tokens: i64, config: &ModelConfig, element_bytes: i64) -> i64 {
        let heads_width = config.num_key_value_heads * config.head_dim;
        self.layers
            .iter()
            .map(|layer| {
                let held = layer
                    .eviction
                    .map_or(tokens, |e| tokens.min(e.sinks + e.window));
                let kind = |k: &KindLayout| {
                    let width = k.map.as_ref().map_or(heads_width, |m| m.width());
                    match k.quant {
                        Some(format) => format.bytes(held, width, element_bytes),
                        None => held * width * element_bytes,
                    }
                };
                let positions = match (&layer.keys.map, layer.key_space) {
                    (Some(_), KeySpace::PreRope) => held * POSITION_BYTES,
                    _ => 0,
                };
                kind(&layer.keys) + kind(&layer.values) + positions
            })
            .sum()
    }

    /// Bytes of every map's parameters (shared by all sequences).
    pub fn map_bytes(&self) -> i64 {
        self.layers
            .iter()
            .flat_map(|l| [&l.keys.map, &l.values.map])
            .filter_map(|m| m.as_ref().map(|m| m.bytes()))
            .sum()
    }
}

/// One layer's low-rank code of one kind, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct LowRankRow {
    pub mode: String,
    pub kind: String,
    pub layer: usize,
    pub rank: i64,
    /// Pooled R² of the code on the held-out calibration sequences.
    pub r2_pooled_heldout: f64,
}

/// A variant's provenance for manifest.json: its spec and what it resolved to.
#[derive(Clone, Debug, Serialize)]
pub struct KvVariantManifest {
    pub spec: String,
    pub scope: KvMode,
    pub key_codes: Option<QuantFormat>,
    pub value_codes: Option<QuantFormat>,
    pub rank: Option<i64>,
    pub fraction_rebuilt: Option<f64>,
    pub eviction: Option<Eviction>,
    pub key_space: KeySpace,
    pub map_bytes: i64,
}

/// A `--kv` entry resolved: its layout, and the fitted codes' per-head or per-layer rows.
pub struct KvVariant {
    pub spec: KvSpec,
    pub layout: KvLayout,
    /// Reference heads: the plan (kv_targets.csv rows).
    pub plan: Option<CompressionPlan>,
    pub low_rank: Vec<LowRankRow>,
}

impl KvVariant {
    /// Resolves `spec` for `config`; `calibration` must be given when the spec needs it.
    pub fn build(
        spec: &KvSpec,
        config: &ModelConfig,
        calibration: Option<&Calibration>,
        options: &CompressionOptions,
    ) -> Result<Self> {
        let layers = config.num_hidden_layers as usize;
        let (heads, head_dim) = (
            config.num_key_value_heads as usize,
            config.head_dim as usize,
        );
        let calibration =
            || calibration.ok_or_else(|| anyhow::anyhow!("--kv {}: needs calibration", spec.text));
        let in_scope = |kind: HeadKind| spec.scope.kinds().contains(&kind);
        let mut variant = KvVariant {
            spec: spec.clone(),
            layout: KvLayout::plain(layers as i64),
            plan: None,
            low_rank: Vec::new(),
        };
        match spec.method {
            // Only reference heads have a claim (the paper's accounting); the others show a dash.
            KvMethod::Quant => variant.layout.claimed_compression = f64::NAN,
            KvMethod::Evict(eviction) => {
                for layer in &mut variant.layout.layers {
                    layer.eviction = Some(eviction);
                }
                variant.layout.claimed_compression = f64::NAN;
            }
            KvMethod::LowRank { rank } => {
                let calibration = calibration()?;
                let width = (heads * head_dim) as i64;
                if rank > width {
                    bail!(
                        "--kv {}: rank {rank} exceeds the {width} values of a layer's KV heads",
                        spec.text
                    );
                }
                for kind in [HeadKind::K, HeadKind::V] {
                    if !in_scope(kind) {
                        continue;
                    }
                    let moments = match kind {
                        HeadKind::K => &calibration.keys,
                        _ => &calibration.values,
                    };
                    for (layer, [fit, heldout]) in moments.iter().enumerate() {
                        let map = LowRankMap::fit(fit, heads, head_dim, rank);
                        variant.low_rank.push(LowRankRow {
                            mode: spec.text.clone(),
                            kind: kind.name().into(),
                            layer,
                            rank,
                            r2_pooled_heldout: map.r2_pooled(heldout),
                        });
                        let slot = kind_slot(&mut variant.layout.layers[layer], kind);
                        slot.map = Some(Rc::new(map));
                    }
                }
                for layer in &mut variant.layout.layers {
                    layer.key_space = calibration.key_space;
                }
                variant.layout.claimed_compression = f64::NAN;
            }
            KvMethod::ReferenceHeads { fraction } => {
                let options = CompressionOptions {
                    fraction,
                    ..options.clone()
                };
                options.check()?;
                let plan = plan(calibration()?, spec.scope, config, &options)?;
                variant.layout = plan.layout();
                variant.plan = Some(plan);
            }
        }
        if let Some(codes) = spec.codes {
            quantize(&mut variant.layout, codes, spec, heads * head_dim)?;
        }
        Ok(variant)
    }

    pub fn name(&self) -> &str {
        &self.spec.text
    }

    pub fn manifest(&self) -> KvVariantManifest {
        let first = self.layout.layers.first();
        KvVariantManifest {
            spec: self.spec.text.clone(),
            scope: self.spec.scope,
            key_codes: first.and_then(|l| l.keys.quant),
            value_codes: first.and_then(|l| l.values.quant),
            rank: match self.spec.method {
                KvMethod::LowRank { rank } => Some(rank),
                _ => None,
            },
            fraction_rebuilt: match self.spec.method {
                KvMethod::ReferenceHeads { fraction } => Some(fraction),
                _ => None,
            },
            eviction: first.and_then(|l| l.eviction),
            key_space: first.map_or(KeySpace::PostRope, |l| l.key_space),
            map_bytes: self.layout.map_bytes(),
        }
    }

    /// kv_targets.csv rows of a reference-head variant, under the spec's name.
    pub fn target_rows(&self) -> Vec<TargetRow> {
        self.plan.as_ref().map_or(Vec::new(), |plan| {
            plan.rows()
                .into_iter()
                .map(|row| TargetRow {
                    mode: self.name().into(),
                    ..row
                })
                .collect()
        })
    }
}

fn kind_slot(layer: &mut LayerLayout, kind: HeadKind) -> &mut KindLayout {
    match kind {
        HeadKind::K => &mut layer.keys,
        _ => &mut layer.values,
    }
}

/// Sets KIVI codes on the kinds in the spec's scope: keys grouped per channel over tokens,
/// values per token over channels.
fn quantize(
    layout: &mut KvLayout,
    codes: QuantCodes,
    spec: &KvSpec,
    heads_width: usize,
) -> Result<()> {
    for layer in &mut layout.layers {
        for (kind, axis) in [
            (HeadKind::K, GroupAxis::PerChannel),
            (HeadKind::V, GroupAxis::PerToken),
        ] {
            if !spec.scope.kinds().contains(&kind) {
                continue;
            }
            let slot = kind_slot(layer, kind);
            let format = QuantFormat {
                bits: codes.bits,
                group: codes.group,
                axis,
            };
            let width = slot.map.as_ref().map_or(heads_width as i64, |m| m.width());
            if let Some(why) = format.unfit_for(width) {
                bail!("--kv {}: {} {why}", spec.text, kind.name());
            }
            slot.quant = Some(format);
        }
    }
    Ok(())
}

impl CompressionPlan {
    /// The layout that stores only the reference heads of the kinds this plan compresses.
    pub fn layout(&self) -> KvLayout {
        let map = |plan: &Option<KindPlan>, layer: usize| KindLayout {
            map: plan
                .as_ref()
                .and_then(|p| p.maps[layer].clone())
                .map(|m| m as Rc<dyn RowMap>),
            quant: None,
        };
        KvLayout {
            layers: (0..self.num_layers as usize)
                .map(|l| LayerLayout {
                    keys: map(&self.keys, l),
                    values: map(&self.values, l),
                    key_space: self.options.key_space,
                    eviction: None,
                })
                .collect(),
            claimed_compression: 1.0 / (1.0 - self.dropped_fraction()),
        }
    }
}
