//! Multi-head self-attention with GQA, optional Q/K/V biases (Qwen2) and an optional QK-norm:
//! full-width (OLMo-2) or per head (Qwen3).
//!
//! OLMo-2's q_norm/k_norm normalise the whole projected vector before the split into heads, so a
//! head's normed query depends on every head's raw projection (research/olmo2.md §1.2); Qwen3's
//! normalise each head's vector on its own, with one weight of head_dim shared by all heads.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::capture::{CapturePoint, CaptureSink, LayerCapture};
use crate::config::{ModelConfig, QkNorm};
use crate::model::attention_edit::AttentionEdit;
use crate::model::kv_cache::{CachedHeads, CachedKv, LayerCache, NewEntries};
use crate::model::mask::Visibility;
use crate::model::norm::Norm;
use crate::model::rope::ModelRope;
use crate::model::row_map::RowMap;
use crate::model::weights::LayerWeights;

pub struct Attention {
    pub q_proj: Tensor,
    pub k_proj: Tensor,
    pub v_proj: Tensor,
    pub o_proj: Tensor,
    /// Biases of q_proj, k_proj, v_proj (Qwen2).
    pub q_bias: Option<Tensor>,
    pub k_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    /// Bias of o_proj (GPT-NeoX's `attention.dense`).
    pub o_bias: Option<Tensor>,
    pub qk_norm: QkNorm,
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    /// The factor on `q·k` (`head_dim^−½`, Gemma's `query_pre_attn_scalar^−½`).
    pub score_scale: f64,
    /// Sliding window (keys a query sees, itself included); `None`: full causal attention.
    pub window: Option<i64>,
}

/// Where the forward is in the model, for the capture sink.
pub struct CaptureContext<'a> {
    pub layer: i64,
    pub batch_index: usize,
    pub sink: &'a mut dyn CaptureSink,
}

/// What one attention call needs besides its input: RoPE tables, which keys each query sees, the
/// layer's KV cache, and an edit. [`AttentionStep::plain`] is a whole-sequence causal forward.
pub struct AttentionStep<'a> {
    /// Every layer's tables; the attention reads its own layer's.
    pub rope: &'a ModelRope,
    /// Positions and masks for padded or cached calls; `None`: unpadded, causal, positions from the
    /// cache length on.
    pub visibility: Option<&'a Visibility>,
    pub cache: Option<&'a mut LayerCache>,
    pub edit: Option<&'a dyn AttentionEdit>,
}

impl<'a> AttentionStep<'a> {
    pub fn plain(rope: &'a ModelRope) -> Self {
        AttentionStep {
            rope,
            visibility: None,
            cache: None,
            edit: None,
        }
    }
}

impl Attention {
    pub fn load(w: &mut LayerWeights, config: &ModelConfig, layer: i64) -> Result<Self> {
        let (qn, kvn) = (
            config.num_attention_heads * config.head_dim,
            config.num_key_value_heads * config.head_dim,
        );
        let h = config.hidden_size;
        let qk_norm = config.architecture.qk_norm();
        let mut norm = |name: &str, n: i64| -> Result<Option<Norm>> {
            let size = match qk_norm {
                QkNorm::None => return Ok(None),
                QkNorm::WholeVector => n,
                QkNorm::PerHead => config.head_dim,
            };
            Ok(Some(Norm::new(
                w.norm(name, size)?,
                config.rms_norm_eps,
                config.architecture,
            )))
        };
        let q_norm = norm("self_attn.q_norm.weight", qn)?;
        let k_norm = norm("self_attn.k_norm.weight", kvn)?;
        let with_bias = config.architecture.qkv_bias();
        let mut bias = |name: &str, n: i64| -> Result<Option<Tensor>> {
            Ok(if with_bias {
                Some(w.vector(name, n)?)
            } else {
                None
            })
        };
        let (q_bias, k_bias, v_bias) = (
            bias("self_attn.q_proj.bias", qn)?,
            bias("self_attn.k_proj.bias", kvn)?,
            bias("self_attn.v_proj.bias", kvn)?,
        );
        let o_bias = match config.architecture.output_bias() {
            true => Some(w.vector("self_attn.o_proj.bias", h)?),
            false => None,
        };
        Ok(Attention {
            q_proj: w.linear("self_attn.q_proj.weight", qn, h)?,
            k_proj: w.linear("self_attn.k_proj.weight", kvn, h)?,
            v_proj: w.linear("self_attn.v_proj.weight", kvn, h)?,
            o_proj: w.linear("self_attn.o_proj.weight", h, qn)?,
            q_bias,
            k_bias,
            v_bias,
            o_bias,
            qk_norm,
            q_norm,
            k_norm,
            num_attention_heads: config.num_attention_heads,
            num_key_value_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            score_scale: config.attention_scale(),
            window: config.attention_window(layer),
        })
    }

    /// `raw` `[batch, seq, heads·head_dim]` after this attention's QK-norm (same shape).
    fn qk_normed(&self, norm: Option<&Norm>, raw: &Tensor, heads: i64) -> Tensor {
        match (norm, self.qk_norm) {
            (None, _) | (_, QkNorm::None) => raw.shallow_clone(),
            (Some(n), QkNorm::WholeVector) => n.forward(raw),
            (Some(n), QkNorm::PerHead) => {
                let (b, s) = (raw.size()[0], raw.size()[1]);
                n.forward(&raw.view([b, s, heads, self.head_dim])).view([
                    b,
                    s,
                    heads * self.head_dim,
                ])
            }
        }
    }

    /// `x`: `[batch, seq, hidden]` new tokens (after any cached ones) → `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        step: &mut AttentionStep,
        ctx: &mut CaptureContext,
    ) -> Result<Tensor> {
        let (b, s) = (x.size()[0], x.size()[1]);
        let q_raw = x.linear(&self.q_proj, self.q_bias.as_ref());
        let k_raw = x.linear(&self.k_proj, self.k_bias.as_ref());
        let v_raw = x.linear(&self.v_proj, self.v_bias.as_ref());
        let heads = |t: &Tensor, n: i64| t.view([b, s, n, self.head_dim]).transpose(1, 2);
        let (nq, nkv) = (self.num_attention_heads, self.num_key_value_heads);
        let v = heads(&v_raw, nkv);
        let q_normed = self.qk_normed(self.q_norm.as_ref(), &q_raw, nq);
        let k_normed = self.qk_normed(self.k_norm.as_ref(), &k_raw, nkv);
        let past = step.cache.as_ref().map_or(0, |c| c.len());
        let edit = step.edit.filter(|e| e.edits_layer(ctx.layer));
        let rope = step.rope.layer(ctx.layer);
        // A window shorter than the keys cuts some off (position gaps never exceed index gaps).
        let window = self.window.filter(|&w| past + s > w);
        let evicts = step.cache.as_ref().is_some_and(|c| c.evicts());
        // Cached, edited, windowed and evicting calls need explicit visibility; a plain prefill
        // keeps the fused causal path.
        let owned_visibility = match step.visibility {
            None if past > 0 || edit.is_some() || window.is_some() || evicts => {
                Some(Visibility::unpadded(b, past + s, s, x.device()))
            }
            _ => None,
        };
        let visibility = step.visibility.or(owned_visibility.as_ref());
        let rope_at = |t: &Tensor| match visibility {
            Some(v) => rope.apply_at(t, &v.positions),
            None => rope.apply(t, 0),
        };
        let q = rope_at(&heads(&q_normed, nq));
        let k_unrotated = heads(&k_normed, nkv);
        let k = rope_at(&k_unrotated);
        let CachedKv {
            keys,
            values,
            held_columns,
        } = match step.cache.as_deref_mut() {
            Some(cache) => {
                let positions = match visibility {
                    Some(v) => v.positions.shallow_clone(),
                    None => Tensor::arange_start(past, past + s, (Kind::Int64, x.device()))
                        .unsqueeze(0)
                        .expand([b, s], false),
                };
                let new = NewEntries {
                    keys_unrotated: &k_unrotated,
                    keys: &k,
                    values: &v,
                    positions: &positions,
                    valid: visibility.map(|v| &v.query_valid),
                };
                cache.append(&new, rope)
            }
            None => CachedKv {
                keys: CachedHeads::Whole(k.shallow_clone()),
                values: CachedHeads::Whole(v.shallow_clone()),
                held_columns: None,
            },
        };

        let wants_attention = ctx.sink.wants_attention(ctx.layer);
        let points = ctx.sink.points(ctx.layer);
        let group = nq / nkv;
        let windowed = window.zip(visibility).map(|(w, v)| v.within_window(w));
        let visible = windowed.as_ref().or(visibility.map(|v| &v.visible));
        // An evicting cache holds some columns only: select theirs, then apply the eviction.
        let held_visible = held_columns
            .zip(visibility)
            .map(|((columns, eviction), v)| {
                let key_positions = v.key_positions.index_select(1, &columns);
                visible
                    .expect("visibility is explicit under eviction")
                    .index_select(3, &columns)
                    .logical_and(&eviction.readable(&v.positions, &key_positions))
            });
        let visible = held_visible.as_ref().or(visible);
        let (out, probabilities) = if wants_attention || edit.is_some() {
            let mut p = probabilities_of(&scores_of(&q, &keys, group, self.score_scale), visible);
            if let (Some(edit), Some(visibility)) = (edit, visibility) {
                p = edit.edit_probabilities(ctx.layer, &p, visibility);
            }
            (mix_values(&p, &values, group), Some(p))
        } else {
            let scale = self.score_scale;
            (
                fused_attention(&q, &keys, &values, group, scale, visible),
                None,
            )
        };
        for point in points {
            let (queries, keys) = match point {
                CapturePoint::Proj => (heads(&q_raw, nq), heads(&k_raw, nkv)),
                CapturePoint::Normed => (heads(&q_normed, nq), heads(&k_normed, nkv)),
                CapturePoint::Rope => (q.shallow_clone(), k.shallow_clone()),
            };
            ctx.sink.capture(&LayerCapture {
                layer: ctx.layer,
                batch_index: ctx.batch_index,
                point,
                queries: &queries,
                keys: &keys,
                values: &v,
                attention: probabilities.as_ref(),
            })?;
        }
        let merged = out.transpose(1, 2).reshape([b, s, nq * self.head_dim]);
        Ok(merged.linear(&self.o_proj, self.o_bias.as_ref()))
    }
}

/// Repeats each KV head `group` times so query head h reads KV head h / group (HF `repeat_kv`).
pub fn repeat_kv(x: &Tensor, group: i64) -> Tensor {
    if group == 1 {
        x.shallow_clone()
    } else {
        x.repeat_interleave_self_int(group, 1, None)
    }
}

/// Attention through libtorch's fused kernel (no probabilities). `visible`: bool
/// `[batch, 1, queries, keys]`, or `None` for plain causal attention over the same tokens. Mapped
/// heads are read from the stored rows as in [`scores_of`] and [`mix_values`]: the kernel's keys and
/// values are the rows themselves (shared by every query head, wider than a head) and its queries
/// are mapped into their space. `scale` multiplies `q·k`.
fn fused_attention(
    q: &Tensor,
    keys: &CachedHeads,
    values: &CachedHeads,
    group: i64,
    scale: f64,
    visible: Option<&Tensor>,
) -> Tensor {
    let (b, nq, _, _) = q.size4().expect("per-head tensors are 4-D");
    let shared = |rows: &Tensor| {
        let size = rows.size();
        rows.expand([b, nq, size[2], size[3]], false)
    };
    // Always explicit: the kernel's default is 1/√(its query width), and mapped queries are wider
    // than a head.
    let (query, key) = match keys {
        CachedHeads::Whole(k) => (q.shallow_clone(), repeat_kv(k, group)),
        CachedHeads::Stored { rows, map } => {
            (q.matmul(&query_read(map.as_ref(), group, q)), shared(rows))
        }
    };
    let value = match values {
        CachedHeads::Whole(v) => repeat_kv(v, group),
        CachedHeads::Stored { rows, .. } => shared(rows),
    };
    let out = Tensor::scaled_dot_product_attention(
        &query,
        &key,
        &value,
        visible,
        0.0,
        visible.is_none(),
        Some(scale),
        false,
    );
    match values {
        CachedHeads::Whole(_) => out,
        CachedHeads::Stored { map, .. } => {
            let (read, intercept) = value_read(map.as_ref(), group, q);
            out.matmul(&read) + intercept
        }
    }
}

/// `[1, num_attention_heads, head_dim, rows]` on `like`'s device and kind: maps a query head into
/// the stored rows' space of its KV head's keys (the transposed read).
fn query_read(map: &dyn RowMap, group: i64, like: &Tensor) -> Tensor {
    let (read, _) = map.read_maps(like.device(), like.kind());
    repeat_kv(&read.unsqueeze(0), group).transpose(-2, -1)
}

/// `[1, num_attention_heads, rows, head_dim]` and `[1, num_attention_heads, 1, head_dim]` on `like`'s
/// device and kind: reads a query head's KV head from mixed stored rows.
fn value_read(map: &dyn RowMap, group: i64, like: &Tensor) -> (Tensor, Tensor) {
    let (read, intercept) = map.read_maps(like.device(), like.kind());
    (
        repeat_kv(&read.unsqueeze(0), group),
        repeat_kv(&intercept.unsqueeze(0).unsqueeze(2), group),
    )
}

/// Causal attention written out at `head_dim^−½`, returning `(output, probabilities)`; softmax in
/// f32 as HF's eager path.
pub fn eager_attention(q: &Tensor, k: &Tensor, v: &Tensor, group: i64) -> (Tensor, Tensor) {
    let probabilities = attention_probabilities(q, k, group, None);
    (probabilities.matmul(&repeat_kv(v, group)), probabilities)
}

/// `softmax(q·kᵀ/√d + mask)`: `[batch, num_attention_heads, queries, keys]` in `q`'s kind (softmax in
/// f32). `visible` as in [`fused_attention`].
pub fn attention_probabilities(
    q: &Tensor,
    k: &Tensor,
    group: i64,
    visible: Option<&Tensor>,
) -> Tensor {
    let scale = (q.size()[3] as f64).powf(-0.5);
    probabilities_of(
        &scores_of(q, &CachedHeads::Whole(k.shallow_clone()), group, scale),
        visible,
    )
}

/// Scores `scale · q·kᵀ` `[batch, num_attention_heads, queries, keys]`. From stored rows, each
/// query is first mapped into the rows' space (`q · readᵀ`), so a target key is never built:
/// `q·(rows·R + b) = (q·Rᵀ)·rows + q·b`, and the `q·b` term is the same for every key of a query,
/// which softmax ignores.
fn scores_of(q: &Tensor, keys: &CachedHeads, group: i64, scale: f64) -> Tensor {
    let raw = match keys {
        CachedHeads::Whole(k) => q.matmul(&repeat_kv(k, group).transpose(-2, -1)),
        CachedHeads::Stored { rows, map } => q
            .matmul(&query_read(map.as_ref(), group, q))
            .matmul(&rows.transpose(-2, -1)),
    };
    raw * scale
}

/// Softmax over keys (in f32) of masked scores, in the scores' kind.
fn probabilities_of(scores: &Tensor, visible: Option<&Tensor>) -> Tensor {
    let scores = match visible {
        Some(visible) => scores.masked_fill(&visible.logical_not(), f64::NEG_INFINITY),
        None => scores + causal_mask(scores.size()[2], scores.device()),
    };
    scores.softmax(-1, Kind::Float).to_kind(scores.kind())
}

/// Attention output `p · v` `[batch, num_attention_heads, queries, head_dim]`. From stored rows the
/// map is applied after the mix: `p·(rows·R + b) = (p·rows)·R + b`, since each row of `p` sums to 1.
fn mix_values(p: &Tensor, values: &CachedHeads, group: i64) -> Tensor {
    match values {
        CachedHeads::Whole(v) => p.matmul(&repeat_kv(v, group)),
        CachedHeads::Stored { rows, map } => {
            let (read, intercept) = value_read(map.as_ref(), group, p);
            p.matmul(rows).matmul(&read) + intercept
        }
    }
}

/// `[seq, seq]` f32 mask: 0 on and below the diagonal, −∞ above.
pub fn causal_mask(seq: i64, device: Device) -> Tensor {
    Tensor::full([seq, seq], f64::NEG_INFINITY, (Kind::Float, device)).triu(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::head_map::HeadMap;
    use std::rc::Rc;

    /// Reading keys and values through a map from the stored rows equals building every head
    /// first and attending as usual (GQA: 6 query heads on 3 KV heads, one of them rebuilt).
    #[test]
    fn attention_through_a_map_equals_attention_on_rebuilt_heads() {
        tch::manual_seed(2);
        let opts = (Kind::Float, Device::Cpu);
        let (b, d, len) = (2, 4, 7);
        let map = || -> Rc<dyn RowMap> {
            Rc::new(HeadMap::new(
                3,
                d as usize,
                vec![0, 2],
                vec![1],
                Tensor::randn([2 * d, d], opts),
                Tensor::randn([d], opts),
            ))
        };
        let stored = |map: &Rc<dyn RowMap>| CachedHeads::Stored {
            rows: Tensor::randn([b, 1, len, 2 * d], opts),
            map: Rc::clone(map),
        };
        let (key_map, value_map) = (map(), map());
        let (keys, values) = (stored(&key_map), stored(&value_map));
        let whole = |heads: &CachedHeads| CachedHeads::Whole(heads.all_heads());
        let q = Tensor::randn([b, 6, 3, d], opts);
        // The last 3 of 7 positions are the queries; the first query cannot see position 5.
        let visible = Tensor::ones([b, 1, 3, len], (Kind::Bool, Device::Cpu))
            .tril(len - 3)
            .logical_and(
                &Tensor::from_slice(&[true, false])
                    .view([b, 1, 1, 1])
                    .logical_or(
                        &Tensor::arange(len, (Kind::Int64, Device::Cpu))
                            .ne(0)
                            .view([1, 1, 1, len]),
                    ),
            );
        // Not 1/√d (Gemma's scale differs): the mapped path must use the scale it is given.
        let scale = 0.3;
        let p_mapped = probabilities_of(&scores_of(&q, &keys, 2, scale), Some(&visible));
        let p_whole = probabilities_of(&scores_of(&q, &whole(&keys), 2, scale), Some(&visible));
        let err = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
        assert!(err(&p_mapped, &p_whole) < 1e-5, "probabilities");
        let out_mapped = mix_values(&p_whole, &values, 2);
        let out_whole = mix_values(&p_whole, &whole(&values), 2);
        assert!(err(&out_mapped, &out_whole) < 1e-5, "outputs");
        // The fused kernel on the stored rows, for either kind mapped or whole.
        for (k, v) in [
            (&keys, &values),
            (&keys, &whole(&values)),
            (&whole(&keys), &values),
        ] {
            let fused = fused_attention(&q, k, v, 2, scale, Some(&visible));
            assert!(err(&fused, &out_whole) < 1e-5, "fused");
        }
        // In bf16 (CUDA's default kind) the maps are read in the cache's kind: same result, rounded.
        let bf16 = |heads: &CachedHeads| match heads {
            CachedHeads::Stored { rows, map } => CachedHeads::Stored {
                rows: rows.to_kind(Kind::BFloat16),
                map: Rc::clone(map),
            },
            CachedHeads::Whole(t) => CachedHeads::Whole(t.to_kind(Kind::BFloat16)),
        };
        let half = fused_attention(
            &q.to_kind(Kind::BFloat16),
            &bf16(&keys),
            &bf16(&values),
            2,
            scale,
            Some(&visible),
        );
        assert_eq!(half.kind(), Kind::BFloat16);
        let size = f64::try_from(out_whole.abs().max()).unwrap();
        assert!(
            err(&half.to_kind(Kind::Float), &out_whole) < 0.05 * size,
            "bf16"
        );
        // The map is really used: the rebuilt head differs from both stored ones.
        let all = values.all_heads();
        assert!(err(&all.narrow(1, 1, 1), &all.narrow(1, 0, 1)) > 0.1);
    }

    #[test]
    fn eager_and_fused_attention_agree_and_rows_sum_to_one() {
        tch::manual_seed(1);
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([2, 6, 5, 8], opts);
        let k = Tensor::randn([2, 3, 5, 8], opts);
        let v = Tensor::randn([2, 3, 5, 8], opts);
        let (out, p) = eager_attention(&q, &k, &v, 2);
        let fused = fused_attention(
            &q,
            &CachedHeads::Whole(k.shallow_clone()),
            &CachedHeads::Whole(v.shallow_clone()),
            2,
            8f64.powf(-0.5),
            None,
        );
        let diff = f64::try_from((&out - fused).abs().max()).unwrap();
        assert!(diff < 1e-5, "eager vs fused {diff}");
        let row_err = f64::try_from(
            (p.sum_dim_intlist(-1, false, Kind::Float) - 1.0)
                .abs()
                .max(),
        )
        .unwrap();
        assert!(row_err < 1e-6);
        // Causality: the first query sees only the first key.
        let first = f64::try_from(p.get(0).get(0).get(0).get(0)).unwrap();
        assert!((first - 1.0).abs() < 1e-6);
    }
}
