//! `validate --kv SPEC`: the KV-cache variants a run compares at equal items, parsed from their
//! spelling. Pure: text in, [`KvSpec`] out, or a one-line error naming the flag.
//!
//! ```text
//! quant:int8 | quant:int4 | quant:int2   [:gG]  KIVI codes (keys per channel, values per token)
//! lowrank:R                   [+intB]  rank-R PCA code of each layer's K and V
//! refs:P                      [+intB]  reference heads, fraction P of heads rebuilt
//! evict:S+W                            first S positions and the last W (StreamingLLM)
//! …[@k | @v | @kv]                     which kinds (not for evict; default both)
//! ```

use anyhow::{bail, Result};

use crate::infer::reference_heads::KvMode;
use crate::model::kv_cache::Eviction;
use crate::model::kv_quant::QUANT_BITS;

/// KIVI's default group: 32 tokens per key channel group, 32 channels per value group.
pub const DEFAULT_QUANT_GROUP: i64 = 32;

/// What a variant does to the cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvMethod {
    /// Every head stored as integer codes.
    Quant,
    /// Each layer's heads (per kind) stored as `rank` principal components.
    LowRank {
        rank: i64,
    },
    /// `fraction` of the KV heads rebuilt from same-layer reference heads.
    ReferenceHeads {
        fraction: f64,
    },
    Evict(Eviction),
}

/// Integer codes of `bits` in groups of `group` (keys per channel, values per token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantCodes {
    pub bits: u8,
    pub group: i64,
}

/// One parsed `--kv` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct KvSpec {
    /// As written: the mode's name in every report.
    pub text: String,
    pub method: KvMethod,
    /// The codes everything the method stores is quantized to (always set for `quant:`).
    pub codes: Option<QuantCodes>,
    /// Which kinds the method (and codes) apply to; the other is stored plainly.
    pub scope: KvMode,
}

impl KvSpec {
    /// Parses one entry; errors name `--kv` and the entry.
    pub fn parse(text: &str) -> Result<Self> {
        let fail = |why: &str| anyhow::anyhow!("--kv {text}: {why}");
        let (body, scope) = match text.rsplit_once('@') {
            Some((body, "k")) => (body, KvMode::K),
            Some((body, "v")) => (body, KvMode::V),
            Some((body, "kv")) => (body, KvMode::Kv),
            Some((_, other)) => return Err(fail(&format!("scope @{other} must be @k, @v or @kv"))),
            None => (text, KvMode::Kv),
        };
        let (name, rest) = body.split_once(':').ok_or_else(|| fail(USAGE))?;
        let spec = |method, codes| KvSpec {
            text: text.to_string(),
            method,
            codes,
            scope,
        };
        match name {
            "quant" => {
                let codes = parse_codes(rest).map_err(|why| fail(&why))?;
                Ok(spec(KvMethod::Quant, Some(codes)))
            }
            "lowrank" | "refs" => {
                let (value, codes) = match rest.split_once('+') {
                    Some((value, codes)) => {
                        (value, Some(parse_codes(codes).map_err(|why| fail(&why))?))
                    }
                    None => (rest, None),
                };
                let method = if name == "lowrank" {
                    match value.parse::<i64>() {
                        Ok(rank) if rank >= 1 => KvMethod::LowRank { rank },
                        _ => return Err(fail("the rank must be a whole number of at least 1")),
                    }
                } else {
                    match value.parse::<f64>() {
                        Ok(f) if f > 0.0 && f < 1.0 => KvMethod::ReferenceHeads { fraction: f },
                        _ => return Err(fail("the fraction of heads rebuilt must lie in (0, 1)")),
                    }
                };
                Ok(spec(method, codes))
            }
            "evict" => {
                if scope != KvMode::Kv || text.contains('@') {
                    return Err(fail("eviction drops keys and values together: no @k or @v"));
                }
                let numbers = rest
                    .split_once('+')
                    .and_then(|(s, w)| Some((s.parse::<i64>().ok()?, w.parse::<i64>().ok()?)));
                match numbers {
                    Some((sinks, window)) if sinks >= 0 && window >= 1 => Ok(spec(
                        KvMethod::Evict(Eviction { sinks, window }),
                        None,
                    )),
                    _ => Err(fail(
                        "expected evict:SINKS+WINDOW, whole numbers with WINDOW ≥ 1 (e.g. evict:4+256)",
                    )),
                }
            }
            _ => Err(fail(USAGE)),
        }
    }

    /// Parses a comma-separated list; names must differ.
    pub fn parse_list(entries: &[String]) -> Result<Vec<Self>> {
        let specs = entries
            .iter()
            .map(|e| KvSpec::parse(e.trim()))
            .collect::<Result<Vec<_>>>()?;
        for (i, spec) in specs.iter().enumerate() {
            if specs[..i].iter().any(|s| s.text == spec.text) {
                bail!("--kv {}: listed twice", spec.text);
            }
        }
        Ok(specs)
    }

    /// Whether the variant needs the calibration pass (maps are fitted on calibration text).
    pub fn needs_calibration(&self) -> bool {
        matches!(
            self.method,
            KvMethod::LowRank { .. } | KvMethod::ReferenceHeads { .. }
        )
    }
}

const USAGE: &str = "unknown variant; expected quant:int8|int4|int2[:gG], lowrank:R[+intB], \
                     refs:P[+intB] or evict:S+W, each optionally @k, @v or @kv";

/// `int8`, `int4:g64`, … → codes.
fn parse_codes(text: &str) -> std::result::Result<QuantCodes, String> {
    let (bits, group) = match text.split_once(':') {
        Some((bits, group)) => (bits, Some(group)),
        None => (text, None),
    };
    let bits = bits
        .strip_prefix("int")
        .and_then(|b| b.parse::<u8>().ok())
        .filter(|b| QUANT_BITS.contains(b))
        .ok_or_else(|| format!("codes {bits} must be int8, int4 or int2"))?;
    let group = match group {
        None => DEFAULT_QUANT_GROUP,
        Some(g) => g
            .strip_prefix('g')
            .and_then(|g| g.parse::<i64>().ok())
            .filter(|&g| g >= 1)
            .ok_or_else(|| format!("group {g} must be written gN with N ≥ 1 (e.g. g32)"))?,
    };
    Ok(QuantCodes { bits, group })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_to_its_variant() {
        let quant = KvSpec::parse("quant:int4:g64@k").unwrap();
        assert_eq!(quant.method, KvMethod::Quant);
        assert_eq!(quant.codes, Some(QuantCodes { bits: 4, group: 64 }));
        assert_eq!(quant.scope, KvMode::K);
        let low = KvSpec::parse("lowrank:96+int8").unwrap();
        assert_eq!(low.method, KvMethod::LowRank { rank: 96 });
        assert_eq!(low.codes, Some(QuantCodes { bits: 8, group: 32 }));
        assert_eq!(low.scope, KvMode::Kv);
        let refs = KvSpec::parse("refs:0.5@v").unwrap();
        assert_eq!(refs.method, KvMethod::ReferenceHeads { fraction: 0.5 });
        assert!(refs.codes.is_none() && refs.needs_calibration());
        let evict = KvSpec::parse("evict:4+256").unwrap();
        let eviction = Eviction {
            sinks: 4,
            window: 256,
        };
        assert_eq!(evict.method, KvMethod::Evict(eviction));
        assert!(!evict.needs_calibration());
    }

    #[test]
    fn bad_specs_are_one_line_errors_naming_the_flag() {
        for (text, says) in [
            ("quant:int3", "int8, int4 or int2"),
            ("quant:int4:64", "gN"),
            ("lowrank:0", "at least 1"),
            ("lowrank:x", "at least 1"),
            ("refs:1.5", "(0, 1)"),
            ("evict:", "evict:SINKS+WINDOW"),
            ("evict:4+0", "WINDOW ≥ 1"),
            ("evict:4+64@k", "together"),
            ("quant:int8@q", "@k, @v or @kv"),
            ("zip:9", "unknown variant"),
            ("quant", "unknown variant"),
        ] {
            let err = KvSpec::parse(text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--kv {text}: ")), "{err}");
            assert!(err.contains(says), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let twice = KvSpec::parse_list(&["quant:int8".into(), "quant:int8".into()]);
        assert!(twice.unwrap_err().to_string().contains("listed twice"));
    }
}
