//! The modes `validate` runs every task under: the baseline, ACT, a compressed KV cache, or both,
//! and the `--kv` variants — one value per mode, carrying the attention edit and the cache layout
//! it runs with.

use crate::infer::compressed_kv::CompressedKv;
use crate::infer::kv_variant::{KvLayout, KvVariant};
use crate::infer::reference_heads::KvMode;
use crate::model::attention_edit::AttentionEdit;

/// Which mode: what it changes against the plain model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeKind {
    Baseline,
    Act,
    CompressedKv(KvMode),
    ActCompressedKv(KvMode),
    /// A `--kv` variant, named by its spec.
    KvVariant,
}

impl ModeKind {
    /// The mode's name in reports and CSV: `baseline`, `act`, `kv-k`, `act+kv-kv`, … (a `--kv`
    /// variant is named by its spec, [`Mode::name`]).
    pub fn name(&self) -> &'static str {
        match self {
            ModeKind::Baseline => "baseline",
            ModeKind::Act => "act",
            ModeKind::CompressedKv(KvMode::K) => "kv-k",
            ModeKind::CompressedKv(KvMode::V) => "kv-v",
            ModeKind::CompressedKv(KvMode::Kv) => "kv-kv",
            ModeKind::ActCompressedKv(KvMode::K) => "act+kv-k",
            ModeKind::ActCompressedKv(KvMode::V) => "act+kv-v",
            ModeKind::ActCompressedKv(KvMode::Kv) => "act+kv-kv",
            ModeKind::KvVariant => "kv-variant",
        }
    }
}

/// One evaluation mode: its kind, the attention edit it runs with, and its KV cache layout.
#[derive(Clone, Copy)]
pub struct Mode<'a> {
    pub kind: ModeKind,
    pub edit: Option<&'a dyn AttentionEdit>,
    /// `None`: the plain cache holding every head.
    pub kv: Option<&'a KvLayout>,
    /// The `--kv` spec, for a variant.
    pub spec: Option<&'a str>,
}

impl<'a> Mode<'a> {
    pub fn name(&self) -> &'a str {
        self.spec.unwrap_or(self.kind.name())
    }

    /// The baseline runs first; later modes are paired against its results.
    pub fn is_baseline(&self) -> bool {
        self.kind == ModeKind::Baseline
    }
}

/// Every mode to run, baseline first: ACT when given, then each compressed layout (and it with
/// ACT), then each `--kv` variant (without ACT: eviction reads fewer keys than ACT's masks hold).
pub fn modes<'a>(
    act: Option<&'a dyn AttentionEdit>,
    compressed: Option<&'a CompressedKv>,
    variants: &'a [KvVariant],
) -> Vec<Mode<'a>> {
    let mode = |kind, edit, kv| Mode {
        kind,
        edit,
        kv,
        spec: None,
    };
    let mut modes = vec![mode(ModeKind::Baseline, None, None)];
    if act.is_some() {
        modes.push(mode(ModeKind::Act, act, None));
    }
    let plans = compressed.map_or(&[][..], |c| &c.plans);
    let layouts = compressed.map_or(&[][..], |c| &c.layouts);
    for ((kv_mode, _), layout) in plans.iter().zip(layouts) {
        modes.push(mode(ModeKind::CompressedKv(*kv_mode), None, Some(layout)));
        if act.is_some() {
            modes.push(mode(ModeKind::ActCompressedKv(*kv_mode), act, Some(layout)));
        }
    }
    for variant in variants {
        modes.push(Mode {
            spec: Some(variant.name()),
            ..mode(ModeKind::KvVariant, None, Some(&variant.layout))
        });
    }
    modes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mode_is_named_as_before_the_enum() {
        for kv in [KvMode::K, KvMode::V, KvMode::Kv] {
            assert_eq!(
                ModeKind::CompressedKv(kv).name(),
                format!("kv-{}", kv.name())
            );
            assert_eq!(
                ModeKind::ActCompressedKv(kv).name(),
                format!("act+kv-{}", kv.name())
            );
        }
        let names: Vec<&str> = modes(None, None, &[]).iter().map(Mode::name).collect();
        assert_eq!(names, ["baseline"]);
    }
}
