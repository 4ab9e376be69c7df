//! Checkpoint branch names on the Hub, parsed into stage, ingredient, step and tokens.
//!
//! OLMo-2 publishes intermediate checkpoints as branches (research/olmo2.md §3.1):
//! `stage1-step{N}-tokens{M}B`, `stage2-ingredient{K}-step{N}-tokens{M}B`, and `main` for the
//! final model. Model cards write `step{N}-tokens{M}B` without the stage, and some names drop the
//! `B`. The token count is rounded inconsistently between stages, so names are only ever parsed,
//! never built from a step. ckpt-scan's own small training runs (`ckpt-scan train`) count tokens
//! in thousands or millions: `tokens{M}K` and `tokens{M}M` parse too; a bare number means billions.
//! Pythia (EleutherAI) publishes `step{N}` alone, `step0` … `step143000`: every Pythia model trained
//! on 1024 sequences × 2048 tokens per step, so the tokens are `N · 2,097,152`.

use std::cmp::Ordering;

use serde::Serialize;

/// What a branch name says about the checkpoint it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BranchName {
    /// An intermediate checkpoint.
    Checkpoint(CheckpointName),
    /// `main`: the released model.
    Main,
    /// Any other name, kept as written.
    Other,
}

/// The fields of an intermediate-checkpoint branch name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointName {
    /// Training stage (1 = pretraining, 2 = mid-training); `None` for the card form `step…`.
    pub stage: Option<u32>,
    /// Stage-2 data mix ("ingredient"), when the name has one.
    pub ingredient: Option<u32>,
    /// Optimizer step.
    pub step: u64,
    /// Tokens seen, in billions, as the name rounds them (0 for names counted in `K` or `M`
    /// below a billion).
    pub tokens_billions: u64,
    /// Tokens seen as the name states them: the number times its unit (`K`, `M`, `B`).
    pub tokens: u64,
}

impl BranchName {
    pub fn parse(name: &str) -> Self {
        if name == "main" {
            return BranchName::Main;
        }
        parse_checkpoint(name).map_or(BranchName::Other, BranchName::Checkpoint)
    }

    pub fn checkpoint(&self) -> Option<&CheckpointName> {
        match self {
            BranchName::Checkpoint(c) => Some(c),
            _ => None,
        }
    }

    /// Checkpoints first by (stage, ingredient, step), then `main`, then other names.
    pub fn sort_key(&self) -> (u8, Option<u32>, Option<u32>, u64) {
        match self {
            BranchName::Checkpoint(c) => (0, c.stage, c.ingredient, c.step),
            BranchName::Main => (1, None, None, 0),
            BranchName::Other => (2, None, None, 0),
        }
    }
}

/// Orders branch names for listing: by `BranchName::sort_key`, then by the name itself.
pub fn compare_branches(a: &str, b: &str) -> Ordering {
    BranchName::parse(a)
        .sort_key()
        .cmp(&BranchName::parse(b).sort_key())
        .then_with(|| a.cmp(b))
}

fn parse_checkpoint(name: &str) -> Option<CheckpointName> {
    let mut parts = name.split('-').peekable();
    let stage = match parts.peek() {
        Some(p) if p.starts_with("stage") => {
            let stage = number_after(p, "stage")?;
            parts.next();
            Some(u32::try_from(stage).ok()?)
        }
        _ => None,
    };
    let ingredient = match parts.peek() {
        Some(p) if p.starts_with("ingredient") => {
            let ingredient = number_after(p, "ingredient")?;
            parts.next();
            Some(u32::try_from(ingredient).ok()?)
        }
        _ => None,
    };
    let step = number_after(parts.next()?, "step")?;
    let Some(tokens_part) = parts.next() else {
        // Pythia's bare form; a stage or ingredient without tokens is no known form.
        if stage.is_some() || ingredient.is_some() {
            return None;
        }
        let tokens = step.checked_mul(PYTHIA_TOKENS_PER_STEP)?;
        return Some(CheckpointName {
            stage: None,
            ingredient: None,
            step,
            tokens_billions: tokens / BILLION,
            tokens,
        });
    };
    let tokens_text = tokens_part.strip_prefix("tokens")?;
    let (digits, unit) = match tokens_text.as_bytes().last()? {
        b'B' => (&tokens_text[..tokens_text.len() - 1], BILLION),
        b'M' => (&tokens_text[..tokens_text.len() - 1], 1_000_000),
        b'K' => (&tokens_text[..tokens_text.len() - 1], 1_000),
        _ => (tokens_text, BILLION),
    };
    let tokens = number_after(digits, "")?.checked_mul(unit)?;
    if parts.next().is_some() {
        return None;
    }
    Some(CheckpointName {
        stage,
        ingredient,
        step,
        tokens_billions: tokens / BILLION,
        tokens,
    })
}

const BILLION: u64 = 1_000_000_000;

/// Pythia's batch: 1024 sequences of 2048 tokens (the Pythia paper, Table 1 and §2).
const PYTHIA_TOKENS_PER_STEP: u64 = 1024 * 2048;

/// The token part of a branch name ckpt-scan writes for its own runs: OLMo's ceiling rounding, in
/// the unit that keeps the number informative (`K` below ten million, `M` below ten billion, else
/// `B`), so `stage1-step{N}-tokens{M}{unit}` parses back to about the same count.
pub fn tokens_suffix(tokens: u64) -> String {
    let (unit, letter) = if tokens < 10_000_000 {
        (1_000, 'K')
    } else if tokens < 10 * BILLION {
        (1_000_000, 'M')
    } else {
        (BILLION, 'B')
    };
    format!("tokens{}{letter}", tokens.div_ceil(unit))
}

/// The decimal number that follows `prefix` and makes up the rest of `part`.
fn number_after(part: &str, prefix: &str) -> Option<u64> {
    let digits = part.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Up to `count` existing names closest to `wanted`: for a checkpoint name, the checkpoints of the
/// same stage and ingredient nearest in step; otherwise the names sharing the longest prefix.
pub fn nearest_branches<'a>(wanted: &str, names: &[&'a str], count: usize) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &'a str)> = match BranchName::parse(wanted).checkpoint() {
        Some(w) => names
            .iter()
            .filter_map(|&n| {
                let c = *BranchName::parse(n).checkpoint()?;
                let same_run = c.stage == w.stage && c.ingredient == w.ingredient;
                let distance = c.step.abs_diff(w.step);
                // Other stages still qualify, but after every checkpoint of the same run.
                Some((
                    if same_run {
                        distance
                    } else {
                        u64::MAX / 2 + distance / 2
                    },
                    n,
                ))
            })
            .collect(),
        None => names
            .iter()
            .map(|&n| {
                let shared = n
                    .bytes()
                    .zip(wanted.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                (u64::MAX - shared as u64, n)
            })
            .collect(),
    };
    scored.sort();
    scored.into_iter().take(count).map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(name: &str) -> CheckpointName {
        *BranchName::parse(name)
            .checkpoint()
            .unwrap_or_else(|| panic!("{name} should parse"))
    }

    #[test]
    fn parses_stage1_names_with_and_without_the_b() {
        let expected = CheckpointName {
            stage: Some(1),
            ingredient: None,
            step: 928646,
            tokens_billions: 3896,
            tokens: 3_896_000_000_000,
        };
        assert_eq!(checkpoint("stage1-step928646-tokens3896B"), expected);
        assert_eq!(checkpoint("stage1-step928646-tokens3896"), expected);
    }

    #[test]
    fn parses_stage2_ingredients_and_the_model_card_form() {
        assert_eq!(
            checkpoint("stage2-ingredient3-step35763-tokens301B"),
            CheckpointName {
                stage: Some(2),
                ingredient: Some(3),
                step: 35763,
                tokens_billions: 301,
                tokens: 301_000_000_000,
            }
        );
        assert_eq!(
            checkpoint("step102500-tokens860B"),
            CheckpointName {
                stage: None,
                ingredient: None,
                step: 102500,
                tokens_billions: 860,
                tokens: 860_000_000_000,
            }
        );
    }

    #[test]
    fn pythia_steps_count_two_million_tokens_each_and_sort_by_number() {
        let c = checkpoint("step143000");
        assert_eq!(
            (c.stage, c.step, c.tokens),
            (None, 143_000, 299_892_736_000)
        );
        assert_eq!(c.tokens_billions, 299);
        assert_eq!(checkpoint("step0").tokens, 0);
        let mut names = vec!["step1000", "main", "step512", "step0", "step143000"];
        names.sort_by(|a, b| compare_branches(a, b));
        assert_eq!(
            names,
            ["step0", "step512", "step1000", "step143000", "main"]
        );
    }

    #[test]
    fn small_runs_count_tokens_in_thousands_or_millions() {
        let c = checkpoint("stage1-step64-tokens131K");
        assert_eq!((c.step, c.tokens, c.tokens_billions), (64, 131_000, 0));
        let c = checkpoint("stage1-step5000-tokens1200M");
        assert_eq!((c.tokens, c.tokens_billions), (1_200_000_000, 1));
        assert_eq!(tokens_suffix(0), "tokens0K");
        assert_eq!(tokens_suffix(131_072), "tokens132K");
        assert_eq!(tokens_suffix(12_000_001), "tokens13M");
        assert_eq!(tokens_suffix(3_895_500_000_000), "tokens3896B");
        // What the writer produces, the parser reads back (to the rounding).
        for tokens in [0, 999, 8192, 9_999_999, 10_000_000, 25_000_000_000] {
            let name = format!("stage1-step1-{}", tokens_suffix(tokens));
            let parsed = checkpoint(&name).tokens;
            assert!(
                parsed >= tokens && parsed - tokens < parsed / 100 + 1000,
                "{name}"
            );
        }
    }

    #[test]
    fn keeps_other_names_unparsed() {
        assert_eq!(BranchName::parse("main"), BranchName::Main);
        for name in [
            "dev",
            "stage1-step-tokens5B",
            "stage1-stepX-tokens5B",
            "stage1-step1000-tokens5B-extra",
            "stage1-step1000",
            "stage1-step1000-tokens5.5B",
            "stagex-step1000-tokens5B",
            "stage1-step1000-tokensB",
            "stage1-step1000-tokensK",
            "stage1-step1000-tokens5G",
            "stage1-step1000-tokens99999999999999999999B",
            "refs/pr/1",
        ] {
            assert_eq!(BranchName::parse(name), BranchName::Other, "{name}");
        }
    }

    #[test]
    fn sorts_by_stage_ingredient_step_then_main_then_others() {
        let mut names = vec![
            "zeta",
            "main",
            "stage2-ingredient1-step200-tokens2B",
            "stage1-step10000-tokens42B",
            "stage2-ingredient2-step100-tokens1B",
            "stage1-step900-tokens4B",
            "stage2-ingredient1-step100-tokens1B",
            "alpha",
        ];
        names.sort_by(|a, b| compare_branches(a, b));
        assert_eq!(
            names,
            [
                "stage1-step900-tokens4B",
                "stage1-step10000-tokens42B",
                "stage2-ingredient1-step100-tokens1B",
                "stage2-ingredient1-step200-tokens2B",
                "stage2-ingredient2-step100-tokens1B",
                "main",
                "alpha",
                "zeta",
            ]
        );
    }

    #[test]
    fn nearest_branches_prefer_the_same_run_by_step() {
        let names = [
            "main",
            "stage1-step1000-tokens5B",
            "stage1-step2000-tokens9B",
            "stage1-step3000-tokens13B",
            "stage2-ingredient1-step1400-tokens6B",
        ];
        assert_eq!(
            nearest_branches("stage1-step1400-tokens6B", &names, 2),
            ["stage1-step1000-tokens5B", "stage1-step2000-tokens9B"]
        );
        assert_eq!(nearest_branches("mian", &names, 1), ["main"]);
    }
}
