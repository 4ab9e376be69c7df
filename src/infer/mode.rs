//! The modes `validate` runs every task under: the baseline, ACT, a compressed KV cache, or both —
//! one value per mode, carrying the attention edit and the cache layout it runs with.

use crate::infer::reference_heads::{CompressionPlan, KvMode};
use crate::model::attention_edit::AttentionEdit;

/// Which mode: what it changes against the plain model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeKind {
    Baseline,
    Act,
    CompressedKv(KvMode),
    ActCompressedKv(KvMode),
}

impl ModeKind {
    /// The mode's name in reports and CSV: `baseline`, `act`, `kv-k`, `act+kv-kv`, …
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
        }
    }
}

/// One evaluation mode: its kind, the attention edit it runs with, and its KV cache layout.
#[derive(Clone, Copy)]
pub struct Mode<'a> {
    pub kind: ModeKind,
    pub edit: Option<&'a dyn AttentionEdit>,
    /// `None`: the plain cache holding every head.
    pub kv: Option<&'a CompressionPlan>,
}

impl Mode<'_> {
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The baseline runs first; later modes are paired against its results.
    pub fn is_baseline(&self) -> bool {
        self.kind == ModeKind::Baseline
    }
}

/// Every mode to run, baseline first: ACT when given, then each compressed layout (and it with ACT).
pub fn modes<'a>(
    act: Option<&'a dyn AttentionEdit>,
    plans: &'a [(KvMode, CompressionPlan)],
) -> Vec<Mode<'a>> {
    let mode = |kind, edit, kv| Mode { kind, edit, kv };
    let mut modes = vec![mode(ModeKind::Baseline, None, None)];
    if act.is_some() {
        modes.push(mode(ModeKind::Act, act, None));
    }
    for (kv_mode, plan) in plans {
        modes.push(mode(ModeKind::CompressedKv(*kv_mode), None, Some(plan)));
        if act.is_some() {
            modes.push(mode(ModeKind::ActCompressedKv(*kv_mode), act, Some(plan)));
        }
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
        let names: Vec<&str> = modes(None, &[]).iter().map(Mode::name).collect();
        assert_eq!(names, ["baseline"]);
    }
}
