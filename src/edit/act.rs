//! ACT, attention calibration of hidden attention sinks (Yu et al., ICML 2024; research/act.md).
//!
//! Per selected head and forward call: a key is a sink candidate when its mean attention over the
//! real queries that can see it exceeds τ (default 0.1; α/N on request); the first candidate (in
//! practice BOS) is exempt. Sink columns are scaled by β and each row's freed mass goes to the
//! other keys in proportion to their attention — the closed form of research/act.md §2.2:
//! sinks `β·P`, others `P·(1 − β·m)/(1 − m)` with `m` the row's sink mass. Rows with `m ≈ 1` are
//! left unchanged (the reference computes 0/0 there). Decode steps use the same rule on the new
//! query's row, so rows still sum to 1 (the reference code's `[0, 0] = 1` write in decode is a bug
//! and is not copied).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::model::attention_edit::AttentionEdit;
use crate::model::mask::Visibility;

/// β of the released scripts.
pub const DEFAULT_BETA: f64 = 0.4;
/// τ of the released scripts.
pub const DEFAULT_THRESHOLD: f64 = 0.1;
/// A row whose sink mass is within this of 1 is left unchanged.
pub const FULL_SINK_EPSILON: f64 = 1e-6;
/// The first layer ACT may touch (the reference never calibrates layers 0 and 1).
pub const FIRST_LAYER: i64 = 2;

/// How the sink threshold is set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkThreshold {
    /// A column mean above τ (the released code).
    Absolute(f64),
    /// A column mean above α/N, N the keys the sequence has (third-party descriptions of the paper).
    PerKey(f64),
}

/// ACT on a fixed set of query heads per layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Act {
    pub beta: f64,
    pub threshold: SinkThreshold,
    /// Layer → query heads to calibrate.
    pub heads: BTreeMap<i64, Vec<i64>>,
    /// Layer → sorted, deduplicated heads (layers with none left out).
    head_index: BTreeMap<i64, Vec<i64>>,
}

/// The head-list file: `{"heads": {"LAYER": [HEAD, …]}, "beta": 0.4, "tau": 0.1}` (β, τ optional;
/// `"alpha"` instead of `"tau"` selects the α/N threshold). Other fields (model, calibration
/// accuracies) are kept for provenance and ignored here.
#[derive(Deserialize)]
struct HeadsFile {
    heads: BTreeMap<String, Vec<i64>>,
    beta: Option<f64>,
    tau: Option<f64>,
    alpha: Option<f64>,
}

impl Act {
    /// Checks every layer is in 2..=L−2 and every head exists.
    pub fn new(
        heads: BTreeMap<i64, Vec<i64>>,
        beta: f64,
        threshold: SinkThreshold,
        config: &ModelConfig,
    ) -> Result<Self> {
        let last = config.num_hidden_layers - 2;
        if !(0.0..=1.0).contains(&beta) {
            bail!("ACT β must be in [0, 1], got {beta}");
        }
        let mut head_index = BTreeMap::new();
        for (&layer, list) in &heads {
            if !(FIRST_LAYER..=last).contains(&layer) {
                bail!("ACT layer {layer} is outside layers {FIRST_LAYER}..={last} of this {}-layer model", config.num_hidden_layers);
            }
            if let Some(head) = list
                .iter()
                .find(|&&h| h < 0 || h >= config.num_attention_heads)
            {
                bail!(
                    "ACT layer {layer}: head {head} does not exist (the model has {} query heads)",
                    config.num_attention_heads
                );
            }
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if !sorted.is_empty() {
                head_index.insert(layer, sorted);
            }
        }
        Ok(Act {
            beta,
            threshold,
            heads,
            head_index,
        })
    }

    pub fn from_file(path: &Path, config: &ModelConfig) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the ACT head list", path.display()))?;
        let file: HeadsFile = serde_json::from_str(&text).with_context(|| {
            format!("{}: not an ACT head list\nhint: expected {{\"heads\": {{\"2\": [0, 3], …}}, \"beta\": 0.4, \"tau\": 0.1}}", path.display())
        })?;
        let mut heads = BTreeMap::new();
        for (layer, list) in file.heads {
            let layer: i64 = layer.parse().with_context(|| {
                format!("{}: layer key {layer:?} is not a number", path.display())
            })?;
            heads.insert(layer, list);
        }
        let threshold = match (file.tau, file.alpha) {
            (Some(_), Some(_)) => bail!("{}: give either tau or alpha, not both", path.display()),
            (_, Some(alpha)) => SinkThreshold::PerKey(alpha),
            (tau, None) => SinkThreshold::Absolute(tau.unwrap_or(DEFAULT_THRESHOLD)),
        };
        Act::new(heads, file.beta.unwrap_or(DEFAULT_BETA), threshold, config)
            .with_context(|| path.display().to_string())
    }
}

impl AttentionEdit for Act {
    fn edits_layer(&self, layer: i64) -> bool {
        self.head_index.contains_key(&layer)
    }

    fn edit_probabilities(
        &self,
        layer: i64,
        probabilities: &Tensor,
        visibility: &Visibility,
    ) -> Tensor {
        let Some(index) = self.head_index.get(&layer) else {
            return probabilities.shallow_clone();
        };
        let index = Tensor::from_slice(index).to_device(probabilities.device());
        let selected = probabilities.index_select(1, &index).to_kind(Kind::Float);
        let calibrated = calibrate(&selected, visibility, self.beta, self.threshold);
        probabilities.index_copy(1, &index, &calibrated.to_kind(probabilities.kind()))
    }
}

/// The ACT transform of post-softmax probabilities `p`: f32 `[batch, heads, queries, keys]`, with
/// `visibility` saying which keys each query sees and which queries are real. Returns the same shape.
pub fn calibrate(
    p: &Tensor,
    visibility: &Visibility,
    beta: f64,
    threshold: SinkThreshold,
) -> Tensor {
    let sink = sink_columns(p, visibility, threshold).to_kind(Kind::Float); // [batch, heads, 1, keys]
    let mass = (p * &sink).sum_dim_intlist(-1, true, Kind::Float); // [batch, heads, queries, 1]
    let free = mass.neg() + 1.0;
    let full = free.lt(FULL_SINK_EPSILON);
    let other_scale = ((&mass * -beta) + 1.0) / free.clamp_min(FULL_SINK_EPSILON);
    let other_scale = other_scale.masked_fill(&full, 1.0);
    let sink_scale = Tensor::full_like(&mass, beta).masked_fill(&full, 1.0);
    p * (&sink * sink_scale + (sink.neg() + 1.0) * other_scale)
}

/// The keys ACT calibrates: bool `[batch, heads, 1, keys]`, true for a sink (a candidate with
/// another candidate before it). `p` and `visibility` as in [`calibrate`]. A sequence and head with
/// no sink are left exactly unchanged by the calibration.
pub fn sink_columns(p: &Tensor, visibility: &Visibility, threshold: SinkThreshold) -> Tensor {
    let (batch, queries) = (
        visibility.query_valid.size()[0],
        visibility.query_valid.size()[1],
    );
    // Which (real query, key) pairs count towards a key's column mean.
    let counted = visibility
        .visible
        .logical_and(&visibility.query_valid.view([batch, 1, queries, 1]))
        .to_kind(Kind::Float);
    let seen_by = counted.sum_dim_intlist(2, false, Kind::Float); // [batch, 1, keys]
    let column_mean =
        (p * &counted).sum_dim_intlist(2, false, Kind::Float) / seen_by.clamp_min(1.0);
    let tau = match threshold {
        SinkThreshold::Absolute(tau) => Tensor::from(tau as f32).to_device(p.device()),
        SinkThreshold::PerKey(alpha) => {
            // N: keys some real query sees, per sequence.
            let keys = seen_by
                .gt(0.0)
                .to_kind(Kind::Float)
                .sum_dim_intlist(-1, true, Kind::Float);
            keys.clamp_min(1.0).reciprocal() * alpha
        }
    };
    let candidate = column_mean.gt_tensor(&tau).logical_and(&seen_by.gt(0.0)); // [batch, heads, keys]
                                                                               // The first candidate is exempt: a sink is a candidate with another candidate before it.
    candidate
        .logical_and(&candidate.to_kind(Kind::Int64).cumsum(-1, Kind::Int64).gt(1))
        .unsqueeze(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// research/act.md §2.4: causal N = 6, β = 0.4, τ = 0.1.
    fn test_vector_input() -> Tensor {
        let rows: [&[f32]; 6] = [
            &[1.0],
            &[0.9, 0.1],
            &[0.7, 0.05, 0.25],
            &[0.5, 0.05, 0.4, 0.05],
            &[0.5, 0.05, 0.35, 0.05, 0.05],
            &[0.45, 0.05, 0.35, 0.05, 0.05, 0.05],
        ];
        let mut flat = vec![0f32; 36];
        for (i, row) in rows.iter().enumerate() {
            flat[i * 6..i * 6 + row.len()].copy_from_slice(row);
        }
        Tensor::from_slice(&flat).view([1, 1, 6, 6])
    }

    fn row_sums_error(p: &Tensor) -> f64 {
        f64::try_from(
            (p.sum_dim_intlist(-1, false, Kind::Float) - 1.0)
                .abs()
                .max(),
        )
        .unwrap()
    }

    #[test]
    fn reproduces_the_closed_form_test_vector() {
        let p = test_vector_input();
        let visibility = Visibility::unpadded(1, 6, 6, Device::Cpu);
        let out = calibrate(&p, &visibility, 0.4, SinkThreshold::Absolute(0.1));
        // The table in research/act.md §2.4, at the precision it is printed with.
        let expected: [&[(f64, f64)]; 6] = [
            &[(1.0, 1e-7)],
            &[(0.9, 1e-7), (0.1, 1e-7)],
            &[(0.84, 5e-3), (0.06, 5e-3), (0.10, 5e-3)],
            &[(0.70, 5e-3), (0.07, 5e-3), (0.16, 5e-3), (0.07, 5e-3)],
            &[
                (0.6615, 5e-5),
                (0.0662, 5e-5),
                (0.14, 5e-3),
                (0.0662, 5e-5),
                (0.0662, 5e-5),
            ],
            &[
                (0.5954, 5e-5),
                (0.0662, 5e-5),
                (0.14, 5e-3),
                (0.0662, 5e-5),
                (0.0662, 5e-5),
                (0.0662, 5e-5),
            ],
        ];
        for (i, row) in expected.iter().enumerate() {
            for (j, &(value, tolerance)) in row.iter().enumerate() {
                let got = f64::try_from(out.get(0).get(0).get(i as i64).get(j as i64)).unwrap();
                assert!(
                    (got - value).abs() <= tolerance,
                    "row {i} col {j}: {got} vs {value}"
                );
            }
        }
        // The exact closed form: row 4 has sink mass 0.35, others scale by (1 − 0.14)/0.65.
        let scale = (1.0 - 0.4 * 0.35) / 0.65;
        let got = f64::try_from(out.get(0).get(0).get(4).get(0)).unwrap();
        assert!((got - 0.5 * scale).abs() < 1e-6);
        let got = f64::try_from(out.get(0).get(0).get(4).get(2)).unwrap();
        assert!((got - 0.4 * 0.35).abs() < 1e-6);
        assert!(row_sums_error(&out) < 1e-6);
    }

    /// The reference's steps: scale sinks, zero them in a copy (rows ≥ 1), renormalise, add back.
    fn literal_reference(p: &Tensor, sinks: &[i64], beta: f64) -> Tensor {
        let n = p.size()[2];
        let mut sink_mask = vec![0f32; n as usize];
        for &s in sinks {
            sink_mask[s as usize] = 1.0;
        }
        let sink = Tensor::from_slice(&sink_mask).view([1, 1, 1, n]);
        let removed = (p * &sink).sum_dim_intlist(-1, true, Kind::Float) * (1.0 - beta);
        let scaled = p * (&sink * beta + (sink.neg() + 1.0));
        let zeroed = p * (sink.neg() + 1.0);
        let weights = &zeroed / zeroed.sum_dim_intlist(-1, true, Kind::Float);
        scaled + removed * weights
    }

    #[test]
    fn agrees_with_a_literal_port_of_the_reference_and_keeps_rows_summing_to_one() {
        tch::manual_seed(4);
        let n = 12;
        let scores = Tensor::randn([1, 3, n, n], (Kind::Float, Device::Cpu));
        // Make column 0 and column 3 attract attention.
        let bias = Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let _ = bias.get(0).fill_(3.0);
        let _ = bias.get(3).fill_(2.0);
        let causal = Tensor::full([n, n], f64::NEG_INFINITY, (Kind::Float, Device::Cpu)).triu(1);
        let p = (scores + bias + causal).softmax(-1, Kind::Float);
        let visibility = Visibility::unpadded(1, n, n, Device::Cpu);
        let out = calibrate(&p, &visibility, 0.4, SinkThreshold::Absolute(0.1));
        assert!(row_sums_error(&out) < 1e-6);
        // Which keys are sinks per head, from the same rule written plainly.
        for head in 0..3 {
            let ph = p.get(0).get(head);
            let mut candidates = Vec::new();
            for j in 0..n {
                let column: f64 = f64::try_from(ph.narrow(1, j, 1).sum(Kind::Float)).unwrap();
                if column / (n - j) as f64 > 0.1 {
                    candidates.push(j);
                }
            }
            let reference = literal_reference(
                &p.narrow(1, head, 1),
                &candidates[1.min(candidates.len())..],
                0.4,
            );
            let diff = f64::try_from((out.narrow(1, head, 1) - &reference).abs().max()).unwrap();
            assert!(diff < 1e-6, "head {head}: {diff}");
        }
        // β = 1 changes nothing.
        let same = calibrate(&p, &visibility, 1.0, SinkThreshold::Absolute(0.1));
        assert!(f64::try_from((same - &p).abs().max()).unwrap() < 1e-6);
    }

    #[test]
    fn decode_rows_sum_to_one_and_bos_is_never_scaled_down() {
        // One new query over 6 keys of which the first is padding (left-padded batch row).
        let p = Tensor::from_slice(&[0.0f32, 0.5, 0.05, 0.3, 0.1, 0.05]).view([1, 1, 1, 6]);
        let key_valid = Tensor::from_slice(&[0i64, 1, 1, 1, 1, 1])
            .view([1, 6])
            .to_kind(Kind::Bool);
        let visibility = Visibility::causal(&key_valid, 1);
        let out = calibrate(&p, &visibility, 0.4, SinkThreshold::Absolute(0.1));
        assert!(row_sums_error(&out) < 1e-6);
        let row = Vec::<f64>::try_from(out.view([6]).to_kind(Kind::Double)).unwrap();
        // Candidates: keys 1 (first, exempt), 3 and 4 (0.1 is not > 0.1, so 4 is not one).
        assert_eq!(row[0], 0.0);
        assert!((row[3] - 0.12).abs() < 1e-6, "{row:?}");
        let scale = (1.0 - 0.4 * 0.3) / 0.7;
        assert!((row[1] - 0.5 * scale).abs() < 1e-6, "{row:?}");
        assert!(row[1] > 0.5);
    }

    #[test]
    fn a_row_entirely_on_sinks_is_left_unchanged() {
        // Row 2 puts all its mass on key 1, a sink (key 0 is the exempt first candidate).
        let p = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
            .view([1, 1, 3, 3]);
        let visibility = Visibility::unpadded(1, 3, 3, Device::Cpu);
        let out = calibrate(&p, &visibility, 0.4, SinkThreshold::Absolute(0.1));
        assert!(out.isfinite().all().int64_value(&[]) == 1);
        assert!(out.equal(&p));
    }

    #[test]
    fn a_head_list_file_reads_and_a_bad_one_names_the_file_with_a_hint() {
        let config = ModelConfig {
            num_hidden_layers: 6,
            num_attention_heads: 4,
            ..crate::config::olmo2_preset("olmo2-1b").unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("heads.json");
        std::fs::write(
            &good,
            r#"{"model": "x", "heads": {"2": [0, 3], "4": []}, "alpha": 5.0}"#,
        )
        .unwrap();
        let act = Act::from_file(&good, &config).unwrap();
        assert_eq!(act.threshold, SinkThreshold::PerKey(5.0));
        assert_eq!(act.beta, DEFAULT_BETA);
        assert!(act.edits_layer(2) && !act.edits_layer(4));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"layers": [[0]]}"#).unwrap();
        let error = format!("{:#}", Act::from_file(&bad, &config).unwrap_err());
        assert!(error.contains("bad.json: not an ACT head list"), "{error}");
        assert!(error.contains("hint:"), "{error}");
    }

    #[test]
    fn only_listed_heads_change_and_layers_outside_2_to_l_minus_2_are_refused() {
        let config = ModelConfig {
            num_hidden_layers: 6,
            num_attention_heads: 4,
            ..crate::config::olmo2_preset("olmo2-1b").unwrap()
        };
        let act = Act::new(
            BTreeMap::from([(2, vec![1])]),
            0.4,
            SinkThreshold::Absolute(0.1),
            &config,
        )
        .unwrap();
        tch::manual_seed(5);
        let causal = Tensor::full([5, 5], f64::NEG_INFINITY, (Kind::Float, Device::Cpu)).triu(1);
        let p = (Tensor::randn([2, 4, 5, 5], (Kind::Float, Device::Cpu)) * 3.0 + causal)
            .softmax(-1, Kind::Float);
        let out = act.edit_probabilities(2, &p, &Visibility::unpadded(2, 5, 5, Device::Cpu));
        for head in [0, 2, 3] {
            assert!(out.narrow(1, head, 1).equal(&p.narrow(1, head, 1)));
        }
        assert!(!out.narrow(1, 1, 1).equal(&p.narrow(1, 1, 1)));
        for layer in [1, 5] {
            let error = Act::new(
                BTreeMap::from([(layer, vec![0])]),
                0.4,
                SinkThreshold::Absolute(0.1),
                &config,
            )
            .unwrap_err()
            .to_string();
            assert!(error.contains("outside layers 2..=4"), "{error}");
        }
        let error = Act::new(
            BTreeMap::from([(3, vec![4])]),
            0.4,
            SinkThreshold::Absolute(0.1),
            &config,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("head 4 does not exist"), "{error}");
    }
}
