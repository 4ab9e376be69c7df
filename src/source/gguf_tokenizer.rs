//! A `tokenizers::Tokenizer` rebuilt from GGUF tokenizer metadata (`tokenizer.ggml.*`), the way
//! transformers 5.24 does it (`integrations/gguf/gguf_tokenizer_mapping.py`), so token ids equal
//! `AutoTokenizer.from_pretrained(dir, gguf_file=…)`'s.
//!
//! Supported: `tokenizer.ggml.model = gpt2` (byte-level BPE), and `llama` (SentencePiece BPE) in
//! Gemma files, whose merges are rebuilt from the vocabulary as transformers' `gemma_tokenizer`
//! does. Other models give an error with a hint to pass a tokenizer.json instead.

use std::collections::HashSet;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::gguf_file::{GgufFile, GgufValue};
use crate::error::{SourceError, SourceResult};

/// `tokenizer.ggml.token_type` of control tokens (`<|im_start|>`), added as special tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// `tokenizer.ggml.token_type` of user-defined tokens (`<think>`), added whole but not special.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

// The split regexes transformers installs per `tokenizer.ggml.pre` (GGUF_PRE_TOKENIZER_SPLITS).
const LLAMA3_SPLIT: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const QWEN2_SPLIT: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const QWEN35_SPLIT: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}",
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// The split regex transformers installs for a `tokenizer.ggml.pre` value; `None` keeps GPT-2's
/// byte-level regex. (SmolLM2's `smollm` is absent from transformers' table, so it gets GPT-2's
/// regex; that equals llama.cpp's `smollm` split because the vocabulary has no digit merges.)
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's byte → printable character table (`bytes_to_unicode`).
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[byte as usize] = if printable {
            char::from(byte)
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("256 + n < 0x180 is a valid char")
        };
    }
    table
}

/// SentencePiece's word-boundary mark, which stands for a space in the vocabulary.
const SPACE_MARK: char = '\u{2581}';

/// Builds the tokenizer the file describes.
pub fn tokenizer_from_gguf(file: &GgufFile) -> SourceResult<Tokenizer> {
    let bad = |message: String| SourceError::malformed(file.path(), message);
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| bad("no tokenizer.ggml.model string in the metadata".into()))?;
    let architecture = file
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .unwrap_or("");
    match model {
        "gpt2" => byte_level_tokenizer(file),
        "llama" if architecture == "gemma3" => gemma_tokenizer(file),
        _ => Err(bad(format!(
            "tokenizer.ggml.model {model:?} is not supported for general.architecture \
             {architecture:?} (supported: gpt2 byte-level BPE; llama SentencePiece in gemma3 files)\n\
             hint: pass --tokenizer PATH/tokenizer.json"
        ))),
    }
}

/// `tokenizer.ggml.token_type`, empty when the file has none.
fn token_types(file: &GgufFile) -> SourceResult<Vec<i64>> {
    match file.get("tokenizer.ggml.token_type") {
        None => Ok(Vec::new()),
        Some(v) => v
            .as_array()
            .map(|items| items.iter().map(|t| t.as_i64().unwrap_or(0)).collect())
            .ok_or_else(|| {
                SourceError::malformed(file.path(), "tokenizer.ggml.token_type is not an array")
            }),
    }
}

/// Adds the file's control tokens as special tokens and its user-defined tokens (when in the
/// vocabulary) as plain added tokens, so both stay whole in text. `keep_control` filters the
/// control tokens (transformers skips mislabelled ones in byte-level vocabularies).
fn add_marked_tokens(
    tokenizer: &mut Tokenizer,
    file: &GgufFile,
    tokens: &[&str],
    keep_control: impl Fn(&str) -> bool,
) -> SourceResult<()> {
    let bad = |message: String| SourceError::malformed(file.path(), message);
    let types = token_types(file)?;
    let of_type = |wanted: i64| {
        tokens
            .iter()
            .zip(&types)
            .filter(move |(_, &t)| t == wanted)
            .map(|(token, _)| *token)
    };
    let control: Vec<AddedToken> = of_type(TOKEN_TYPE_CONTROL)
        .filter(|t| keep_control(t))
        .map(|t| AddedToken::from(t.to_string(), true).normalized(false))
        .collect();
    tokenizer
        .add_special_tokens(control)
        .map_err(|e| bad(format!("adding control tokens: {e}")))?;
    let known = tokenizer.get_vocab(true);
    let user_defined: Vec<AddedToken> = of_type(TOKEN_TYPE_USER_DEFINED)
        .filter(|t| known.contains_key(*t))
        .map(|t| AddedToken::from(t.to_string(), false).normalized(false))
        .collect();
    tokenizer
        .add_tokens(user_defined)
        .map_err(|e| bad(format!("adding user-defined tokens: {e}")))?;
    Ok(())
}

/// Whether Python's `str.isspace` holds (Rust's `is_whitespace` plus the ASCII separators
/// U+001C–U+001F, which Python counts).
fn python_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The merges a vocabulary implies, best first (transformers' `generate_merges` with Gemma's
/// sort key): every split of every token into two vocabulary tokens, ordered by the token's last
/// position in the file, then by a longer left part first.
fn merges_from_vocabulary(vocab: &Vocab) -> Vec<(String, String)> {
    let mut last_position: Vec<(u32, &str)> = vocab.iter().map(|(t, &i)| (i, t.as_str())).collect();
    last_position.sort_unstable();
    let mut merges = Vec::new();
    for (_, token) in last_position {
        let cuts: Vec<usize> = token.char_indices().map(|(at, _)| at).skip(1).collect();
        // Longer left part first; at one length the split is unique, so no further key matters.
        for &at in cuts.iter().rev() {
            let (left, right) = token.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push((left.to_string(), right.to_string()));
            }
        }
    }
    merges
}

/// Gemma's SentencePiece BPE as transformers 5.24 rebuilds it from a GGUF (`gemma_tokenizer`
/// with `GemmaTokenizer`'s pipeline): tokens of two or more spaces respelled with `▁`, merges
/// from the vocabulary order, spaces normalised to `▁`, byte fallback for unknown characters,
/// and `<bos>` added when the file's `add_bos_token` asks for it.
fn gemma_tokenizer(file: &GgufFile) -> SourceResult<Tokenizer> {
    let bad = |message: String| SourceError::malformed(file.path(), message);
    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    let respelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.chars().all(python_is_space) {
                SPACE_MARK.to_string().repeat(t.chars().count())
            } else {
                t.to_string()
            }
        })
        .collect();
    // Later duplicates win, as in transformers' dict comprehension.
    let vocab: Vocab = respelled
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let merges = merges_from_vocabulary(&vocab);
    let unknown = "<unk>";
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unknown.to_string())
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| {
            bad(format!(
                "tokenizer.ggml.tokens do not form a BPE model: {e}"
            ))
        })?;
    let mut tokenizer = Tokenizer::new(bpe);
    let space = String::from(SPACE_MARK);
    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| bad(format!("replace {from:?} → {to:?}: {e}")))
    };
    tokenizer
        .with_normalizer(Some(replace(" ", &space)?))
        .map_err(|e| bad(format!("space normaliser: {e}")))?;
    let split = Split::new(
        SplitPattern::String(" ".into()),
        SplitDelimiterBehavior::MergedWithPrevious,
        false,
    )
    .map_err(|e| bad(format!("space split: {e}")))?;
    tokenizer.with_pre_tokenizer(Some(split));
    tokenizer.with_decoder(Some(DecoderSequence::new(vec![
        replace(&space, " ")?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));
    add_marked_tokens(&mut tokenizer, file, &tokens, |_| true)?;
    // The named special tokens stay whole too (GemmaTokenizer registers them).
    let named: Vec<AddedToken> = ["unknown", "bos", "eos", "padding"]
        .iter()
        .filter_map(|k| file.get(&format!("tokenizer.ggml.{k}_token_id"))?.as_i64())
        .filter_map(|id| tokens.get(usize::try_from(id).ok()?))
        .map(|t| AddedToken::from(t.to_string(), true).normalized(false))
        .collect();
    tokenizer
        .add_special_tokens(named)
        .map_err(|e| bad(format!("adding named special tokens: {e}")))?;
    let adds_bos = file
        .get("tokenizer.ggml.add_bos_token")
        .and_then(GgufValue::as_bool)
        .unwrap_or(true);
    let bos = file
        .get("tokenizer.ggml.bos_token_id")
        .and_then(GgufValue::as_i64);
    if let (true, Some(id)) = (adds_bos, bos) {
        let token = tokens.get(id as usize).ok_or_else(|| {
            bad(format!(
                "tokenizer.ggml.bos_token_id {id} is past the vocabulary"
            ))
        })?;
        let template = TemplateProcessing::builder()
            .try_single(format!("{token} $A"))
            .and_then(|b| b.try_pair(format!("{token} $A {token} $B")))
            .map_err(|e| bad(format!("BOS template: {e}")))?
            .special_tokens(vec![(token.to_string(), id as u32)])
            .build()
            .map_err(|e| bad(format!("BOS template: {e}")))?;
        tokenizer.with_post_processor(Some(template));
    }
    Ok(tokenizer)
}

/// GPT-2-style byte-level BPE with the file's merges.
fn byte_level_tokenizer(file: &GgufFile) -> SourceResult<Tokenizer> {
    let bad = |message: String| SourceError::malformed(file.path(), message);
    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    let merges = string_array(file, "tokenizer.ggml.merges")?;

    let alphabet = byte_alphabet();
    let spelled: HashSet<char> = alphabet.iter().copied().collect();
    let in_alphabet = |token: &str| token.chars().all(|c| spelled.contains(&c));
    // Tokens written in plain UTF-8 rather than the byte alphabet are respelled, as transformers
    // does; later duplicates win, as in its dict comprehension.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| {
            let spelling = if in_alphabet(token) {
                token.to_string()
            } else {
                token.bytes().map(|b| alphabet[b as usize]).collect()
            };
            (spelling, id as u32)
        })
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| m.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| {
            bad(format!(
                "tokenizer.ggml.tokens/merges do not form a BPE model: {e}"
            ))
        })?;

    let mut tokenizer = Tokenizer::new(bpe);
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("default");
    let pre_tokenizer: PreTokenizerWrapper = match split_regex(pre) {
        None => ByteLevel::new(false, true, true).into(),
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| bad(format!("split regex for tokenizer.ggml.pre {pre:?}: {e}")))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // A control token outside the byte alphabet is a llama.cpp mislabel; transformers skips it.
    add_marked_tokens(&mut tokenizer, file, &tokens, in_alphabet)?;
    Ok(tokenizer)
}

fn string_array<'a>(file: &'a GgufFile, key: &str) -> SourceResult<Vec<&'a str>> {
    let not_strings =
        || SourceError::malformed(file.path(), format!("{key} is not an array of strings"));
    file.get(key)
        .ok_or_else(|| SourceError::malformed(file.path(), format!("no {key} in the metadata")))?
        .as_array()
        .ok_or_else(not_strings)?
        .iter()
        .map(|v| v.as_str().ok_or_else(not_strings))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_gpt2() {
        let a = byte_alphabet();
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[b' ' as usize], 'Ġ'); // U+0120: the 33rd unprintable byte
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[0], 'Ā');
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn every_split_regex_compiles_and_splits_digits_as_its_family_does() {
        let pieces = |pre: &str, text: &str| -> Vec<String> {
            use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
            let split = Split::new(
                SplitPattern::Regex(split_regex(pre).unwrap().to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .unwrap();
            let mut s = PreTokenizedString::from(text);
            split.pre_tokenize(&mut s).unwrap();
            s.get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(piece, _, _)| piece.to_string())
                .collect()
        };
        assert_eq!(pieces("llama-bpe", "12345"), ["123", "45"]);
        assert_eq!(pieces("gpt-4o", "12345"), ["123", "45"]);
        assert_eq!(pieces("qwen2", "123"), ["1", "2", "3"]);
        assert_eq!(pieces("qwen35", "x 12"), ["x", " ", "1", "2"]);
        assert_eq!(pieces("tekken", "Hello world"), ["Hello", " world"]);
        assert_eq!(split_regex("smollm"), None);
    }
}
