//! The Hub source and `refs` against a loopback Hub (tests/hub_server): resolving branches,
//! lazy shard downloads, retries, cut-off and corrupt downloads, auth, offline use of the cache.
//!
//! The checkpoint is a tiny OLMo-2 (2 layers, hidden 32, 2 heads) written here with the
//! `safetensors` crate: three shards where layer 0 spans the first two, plus the same tensors as a
//! single `model.safetensors` on `main`. Every test uses its own server and temp cache.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use crate::hub_server::{sha256_hex, Commit, Fault, HubRepo, HubServer, Target};
use ckpt_scan::config::ModelConfig;
use ckpt_scan::report::refs_report::refs_report;
use ckpt_scan::source::hub::{list_refs, HubSettings, HubSource, RefsOrigin};
use ckpt_scan::source::safetensors::SafetensorsSource;
use ckpt_scan::source::{expected_tensors, open_source_with, WeightSource};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

const REPO: &str = "org/tiny";
const BRANCH: &str = "stage1-step1000-tokens5B";
const TOKENIZER: &[u8] = br#"{"version":"1.0","model":{"type":"BPE"}}"#;
/// Tensors per shard in the sharded commit: layer 0 starts in shard 1 and ends in shard 2.
const SHARD_SIZES: [usize; 3] = [6, 9, usize::MAX];
const QUERY_0: &str = "model.layers.0.self_attn.q_proj.weight";

/// The tiny checkpoint: files of the sharded commit and of the single-file commit.
struct Fixture {
    sharded: BTreeMap<String, Vec<u8>>,
    single: BTreeMap<String, Vec<u8>>,
    /// Tensor name → shard file, in the sharded commit.
    weight_map: BTreeMap<String, String>,
    /// The sharded commit written to disk, read back with the local safetensors source.
    local: tempfile::TempDir,
}

fn commit_sha(label: &str) -> String {
    sha256_hex(label.as_bytes())[..40].to_string()
}

fn fixture() -> Fixture {
    let config = json!({
        "architectures": ["Olmo2ForCausalLM"],
        "model_type": "olmo2",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": 128,
        "rms_norm_eps": 1e-6,
        "rope_theta": 500000.0,
        "max_position_embeddings": 64,
        "tie_word_embeddings": false
    });
    let model_config = ModelConfig::from_json(&config, Path::new("config.json")).unwrap();
    // Deterministic values without a tensor library: a 64-bit LCG, top bits as f32 in [-1, 1).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = expected_tensors(&model_config)
        .into_iter()
        .map(|(name, shape)| {
            let count: i64 = shape.iter().product();
            let bytes = (0..count)
                .flat_map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0).to_le_bytes()
                })
                .collect();
            (name, shape.iter().map(|&d| d as usize).collect(), bytes)
        })
        .collect();
    let serialize = |group: &[(String, Vec<usize>, Vec<u8>)]| {
        let views: Vec<(String, TensorView)> = group
            .iter()
            .map(|(name, shape, bytes)| {
                (
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    };
    let config_bytes = serde_json::to_vec_pretty(&config).unwrap();
    let mut sharded = BTreeMap::new();
    let mut weight_map = BTreeMap::new();
    let mut rest = tensors.as_slice();
    for (i, &size) in SHARD_SIZES.iter().enumerate() {
        let (group, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, SHARD_SIZES.len());
        for (name, _, _) in group {
            weight_map.insert(name.clone(), file.clone());
        }
        sharded.insert(file, serialize(group));
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    sharded.insert(
        "model.safetensors.index.json".into(),
        serde_json::to_vec_pretty(&index).unwrap(),
    );
    sharded.insert("config.json".into(), config_bytes.clone());
    let single = BTreeMap::from([
        ("config.json".to_string(), config_bytes),
        ("model.safetensors".to_string(), serialize(&tensors)),
        ("tokenizer.json".to_string(), TOKENIZER.to_vec()),
    ]);
    let local = tempfile::tempdir().unwrap();
    for (file, bytes) in &sharded {
        std::fs::write(local.path().join(file), bytes).unwrap();
    }
    Fixture {
        sharded,
        single,
        weight_map,
        local,
    }
}

fn repos(fixture: &Fixture) -> HashMap<String, HubRepo> {
    let (sharded, single) = (commit_sha("sharded"), commit_sha("single"));
    let repo = HubRepo {
        branches: BTreeMap::from([
            (BRANCH.to_string(), sharded.clone()),
            ("stage1-step2000-tokens9B".to_string(), sharded.clone()),
            (
                "stage2-ingredient1-step100-tokens1B".to_string(),
                sharded.clone(),
            ),
            ("experiment".to_string(), sharded.clone()),
            ("main".to_string(), single.clone()),
        ]),
        commits: BTreeMap::from([
            (
                sharded,
                Commit {
                    files: fixture.sharded.clone(),
                },
            ),
            (
                single,
                Commit {
                    files: fixture.single.clone(),
                },
            ),
        ]),
        token: None,
    };
    let private = HubRepo {
        token: Some("secret".into()),
        ..repo.clone()
    };
    HashMap::from([
        (REPO.to_string(), repo),
        ("org/private".to_string(), private),
    ])
}

fn test_settings(server: &HubServer, cache: &Path) -> HubSettings {
    let mut settings = HubSettings::new(server.url.clone(), cache);
    settings.retries = 2;
    settings.retry_backoff = Duration::from_millis(1);
    settings.connect_timeout = Duration::from_secs(5);
    settings.io_timeout = Duration::from_secs(10);
    settings.quiet = true;
    settings
}

fn local_source(fixture: &Fixture) -> SafetensorsSource {
    SafetensorsSource::open(fixture.local.path(), "local").unwrap()
}

/// Every tensor of `source` equals the local files' tensor of the same name.
fn assert_same_tensors(source: &dyn WeightSource, fixture: &Fixture) {
    let local = local_source(fixture);
    let names = |s: &dyn WeightSource| -> Vec<(String, Vec<i64>, String, u64)> {
        s.tensor_infos()
            .into_iter()
            .map(|i| (i.name, i.shape, i.dtype, i.bytes))
            .collect()
    };
    assert_eq!(names(source), names(&local));
    for info in local.tensor_infos() {
        let (a, b) = (
            source.read(&info.name).unwrap(),
            local.read(&info.name).unwrap(),
        );
        assert!(a.equal(&b), "{} differs", info.name);
    }
}

/// File names in `<cache>/models--org--tiny/blobs`.
fn blobs(cache: &Path) -> Vec<String> {
    let dir = cache.join("models--org--tiny/blobs");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn shard_digest(fixture: &Fixture, shard: usize) -> String {
    let file = format!("model-{shard:05}-of-00003.safetensors");
    sha256_hex(&fixture.sharded[&file])
}

/// Branch, stage, ingredient, step, tokens.
type ParsedRow<'a> = (&'a str, Option<u32>, Option<u32>, Option<u64>, Option<u64>);

#[test]
fn refs_lists_every_branch_with_its_commit_and_parses_the_names() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    let cache = tempfile::tempdir().unwrap();
    let settings = test_settings(&server, cache.path());
    let listing = list_refs(REPO, &settings).unwrap();
    assert_eq!(
        listing.origin,
        RefsOrigin::Server {
            url: format!("{}/api/models/{REPO}/refs", server.url)
        }
    );
    assert_eq!(listing.branches.len(), 5);
    let report = refs_report(REPO, listing, &settings);
    let rows: Vec<ParsedRow> = report
        .branches
        .iter()
        .map(|r| {
            (
                r.branch.as_str(),
                r.stage,
                r.ingredient,
                r.step,
                r.tokens_billions,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (BRANCH, Some(1), None, Some(1000), Some(5)),
            (
                "stage1-step2000-tokens9B",
                Some(1),
                None,
                Some(2000),
                Some(9)
            ),
            (
                "stage2-ingredient1-step100-tokens1B",
                Some(2),
                Some(1),
                Some(100),
                Some(1)
            ),
            ("main", None, None, None, None),
            ("experiment", None, None, None, None),
        ]
    );
    assert_eq!(report.branches[0].commit, commit_sha("sharded"));
    assert_eq!(report.branches[3].commit, commit_sha("single"));
}

#[test]
fn malformed_refs_json_is_a_clear_error() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    server.set_refs_body(r#"{"branches": [{"name": "main"}"#);
    let cache = tempfile::tempdir().unwrap();
    let e = list_refs(REPO, &test_settings(&server, cache.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("/api/models/{REPO}/refs")), "{e}");
    assert!(e.contains("not the JSON the Hub API returns"), "{e}");
    assert!(e.contains("hint: check that HF_ENDPOINT"), "{e}");
}

#[test]
fn opens_a_branch_records_its_commit_and_reads_the_local_tensors() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    let cache = tempfile::tempdir().unwrap();
    let settings = test_settings(&server, cache.path());
    let spec = format!("hf:{REPO}@{BRANCH}");
    let source = open_source_with(&spec, &settings).unwrap();
    let provenance = source.provenance();
    assert_eq!(provenance.kind, "hub");
    assert_eq!(provenance.spec, spec);
    assert_eq!(
        provenance.revision_sha.as_deref(),
        Some(&*commit_sha("sharded"))
    );
    assert_eq!(source.config().num_hidden_layers, 2);
    assert_same_tensors(source.as_ref(), &fixture);
    // This commit has no tokenizer.json: the 404 is an answer, recorded like huggingface_hub does.
    assert_eq!(source.tokenizer_path(), None);
    let repo_dir = cache.path().join("models--org--tiny");
    assert!(repo_dir
        .join(".no_exist")
        .join(commit_sha("sharded"))
        .join("tokenizer.json")
        .exists());
    let recorded = std::fs::read_to_string(repo_dir.join("refs").join(BRANCH)).unwrap();
    assert_eq!(recorded.trim(), commit_sha("sharded"));

    // `main` is a single model.safetensors with a tokenizer.
    let main = open_source_with(&format!("hf:{REPO}"), &settings).unwrap();
    assert_eq!(
        main.provenance().revision_sha.as_deref(),
        Some(&*commit_sha("single"))
    );
    assert_same_tensors(main.as_ref(), &fixture);
    let tokenizer = main.tokenizer_path().expect("main has a tokenizer.json");
    assert_eq!(std::fs::read(tokenizer).unwrap(), TOKENIZER);
}

#[test]
fn reading_one_tensor_downloads_only_its_shard() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    let cache = tempfile::tempdir().unwrap();
    let source =
        HubSource::open(REPO, BRANCH, "test", &test_settings(&server, cache.path())).unwrap();
    let shard = |n: usize| format!("model-{n:05}-of-00003.safetensors");
    // Layer 0 spans the first two shards (by construction of SHARD_SIZES).
    let layer0_shards: std::collections::BTreeSet<&String> = fixture
        .weight_map
        .iter()
        .filter(|(name, _)| name.starts_with("model.layers.0."))
        .map(|(_, file)| file)
        .collect();
    assert_eq!(layer0_shards.len(), 2);
    assert_eq!(fixture.weight_map[QUERY_0], shard(1));
    let last_of_layer0 = "model.layers.0.post_feedforward_layernorm.weight";
    assert_eq!(fixture.weight_map[last_of_layer0], shard(2));

    // Open read the shard headers with range requests but downloaded no shard.
    assert!(source.local_shards().is_empty());
    assert_eq!(source.tensor_infos().len(), fixture.weight_map.len());
    assert_eq!(server.count("/cdn/", true), 0, "{:?}", server.requests());

    let _ = source.read(QUERY_0).unwrap();
    assert_eq!(source.local_shards(), [shard(1)]);
    assert!(blobs(cache.path()).contains(&shard_digest(&fixture, 1)));
    assert_eq!(server.count(&shard_digest(&fixture, 1), true), 1);
    assert_eq!(server.count(&shard_digest(&fixture, 2), true), 0);
    assert_eq!(server.count(&shard_digest(&fixture, 3), true), 0);

    let _ = source.read(last_of_layer0).unwrap();
    assert_eq!(source.local_shards(), [shard(1), shard(2)]);
    assert_eq!(server.count(&shard_digest(&fixture, 3), true), 0);
    assert!(!blobs(cache.path()).contains(&shard_digest(&fixture, 3)));
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    let cache = tempfile::tempdir().unwrap();
    let settings = test_settings(&server, cache.path());
    let shard1 = shard_digest(&fixture, 1);
    server.fail("/revision/", Target::Any, Fault::Status(500), 1);
    server.fail(&shard1, Target::Downloads, Fault::Status(503), 1);
    let source = HubSource::open(REPO, BRANCH, "test", &settings).unwrap();
    assert_eq!(server.count("/revision/", false), 2);
    let local = local_source(&fixture);
    assert!(source
        .read(QUERY_0)
        .unwrap()
        .equal(&local.read(QUERY_0).unwrap()));
    assert_eq!(server.count(&shard1, true), 2);

    // Past the budget: the first try and `retries` more, then a message that says so.
    let cache = tempfile::tempdir().unwrap();
    server.fail("/revision/", Target::Any, Fault::Status(500), 100);
    let before = server.count("/revision/", false);
    let e = HubSource::open(REPO, BRANCH, "test", &test_settings(&server, cache.path()))
        .err()
        .expect("a server that keeps failing")
        .to_string();
    assert_eq!(server.count("/revision/", false) - before, 3);
    assert!(
        e.contains("HTTP 500") && e.contains("gave up after 3 attempts"),
        "{e}"
    );
}

#[test]
fn connection_errors_are_retried_then_reported() {
    // A port that was just free: nothing listens, so every connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let mut settings = HubSettings::new(format!("http://127.0.0.1:{port}"), cache.path());
    settings.retry_backoff = Duration::from_millis(1);
    settings.retries = 2;
    settings.quiet = true;
    let e = HubSource::open(REPO, BRANCH, "test", &settings)
        .err()
        .expect("nothing listens")
        .to_string();
    assert!(
        e.contains(&format!(
            "127.0.0.1:{port}/api/models/org/tiny/revision/{BRANCH}"
        )),
        "{e}"
    );
    assert!(e.contains("gave up after 3 attempts"), "{e}");
}

#[test]
fn an_unknown_revision_names_the_repo_and_the_nearest_branches() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    let cache = tempfile::tempdir().unwrap();
    let e = HubSource::open(
        REPO,
        "stage1-step1100-tokens5B",
        "test",
        &test_settings(&server, cache.path()),
    )
    .err()
    .expect("no such branch")
    .to_string();
    assert!(
        e.contains("revision stage1-step1100-tokens5B not found in org/tiny"),
        "{e}"
    );
    assert!(
        e.contains("nearest branches: stage1-step1000-tokens5B, stage1-step2000-tokens9B"),
        "{e}"
    );
    assert!(e.contains("hint: `ckpt-scan refs hf:org/tiny`"), "{e}");
    assert!(!cache
        .path()
        .join("models--org--tiny/refs/stage1-step1100-tokens5B")
        .exists());
}

#[test]
fn a_private_repo_needs_hf_token() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    let cache = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&server, cache.path());
    let e = HubSource::open("org/private", BRANCH, "test", &settings)
        .err()
        .expect("no token")
        .to_string();
    assert!(
        e.contains("HTTP 401") && e.contains("no token was sent"),
        "{e}"
    );
    assert!(e.contains("hint: ") && e.contains("set HF_TOKEN"), "{e}");
    settings.token = Some("wrong".into());
    let e = list_refs("org/private", &settings).unwrap_err().to_string();
    assert!(e.contains("the token sent was refused"), "{e}");
    settings.token = Some("secret".into());
    let source = HubSource::open("org/private", BRANCH, "test", &settings).unwrap();
    let _ = source.read(QUERY_0).unwrap();
}

#[test]
fn a_cut_off_download_is_discarded_and_the_next_attempt_succeeds() {
    let fixture = fixture();
    let shard1 = shard_digest(&fixture, 1);
    let size = fixture.sharded["model-00001-of-00003.safetensors"].len();
    for (fault, needle) in [
        (Fault::CutShort(size / 2), "truncated: received"),
        (Fault::ShortNoLength(size / 2), "truncated: received"),
        (Fault::Corrupt, "does not match the expected"),
    ] {
        let server = HubServer::start(repos(&fixture));
        let cache = tempfile::tempdir().unwrap();
        let mut settings = test_settings(&server, cache.path());
        settings.retries = 0;
        let source = HubSource::open(REPO, BRANCH, "test", &settings).unwrap();
        server.fail(&shard1, Target::Downloads, fault, 1);
        let e = source.read(QUERY_0).unwrap_err().to_string();
        assert!(
            e.contains(needle) && e.contains("discarded"),
            "{fault:?}: {e}"
        );
        assert!(
            e.contains("org/tiny/model-00001-of-00003.safetensors"),
            "{e}"
        );
        // Nothing partial is left where a reader would take it for the file.
        let left = blobs(cache.path());
        assert!(
            !left
                .iter()
                .any(|b| b.contains(&shard1) || b.ends_with(".incomplete")),
            "{left:?}"
        );
        let link = cache
            .path()
            .join("models--org--tiny/snapshots")
            .join(commit_sha("sharded"))
            .join("model-00001-of-00003.safetensors");
        assert!(
            link.symlink_metadata().is_err(),
            "{fault:?}: snapshot link left behind"
        );

        // The server is healthy again: the same source downloads the right bytes.
        let local = local_source(&fixture);
        let tensor = source.read(QUERY_0).unwrap();
        assert!(tensor.equal(&local.read(QUERY_0).unwrap()), "{fault:?}");
        assert!(blobs(cache.path()).contains(&shard1));
    }
}

#[test]
fn a_short_blob_left_in_the_cache_is_downloaded_again() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    let cache = tempfile::tempdir().unwrap();
    let settings = test_settings(&server, cache.path());
    let shard1 = shard_digest(&fixture, 1);
    {
        let source = HubSource::open(REPO, BRANCH, "test", &settings).unwrap();
        let _ = source.read(QUERY_0).unwrap();
    }
    // What hf-hub 0.5 leaves after a body cut short without a Content-Length.
    let blob = cache.path().join("models--org--tiny/blobs").join(&shard1);
    let size = std::fs::metadata(&blob).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let source = HubSource::open(REPO, BRANCH, "test", &settings).unwrap();
    let tensor = source.read(QUERY_0).unwrap();
    assert!(tensor.equal(&local_source(&fixture).read(QUERY_0).unwrap()));
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), size);
    assert_eq!(server.count(&shard1, true), 2);
}

#[test]
fn a_cut_off_transfer_resumes_from_where_it_stopped() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    let cache = tempfile::tempdir().unwrap();
    let shard1 = shard_digest(&fixture, 1);
    let half = fixture.sharded["model-00001-of-00003.safetensors"].len() / 2;
    let source =
        HubSource::open(REPO, BRANCH, "test", &test_settings(&server, cache.path())).unwrap();
    server.fail(&shard1, Target::Downloads, Fault::CutShort(half), 1);
    let tensor = source.read(QUERY_0).unwrap();
    assert!(tensor.equal(&local_source(&fixture).read(QUERY_0).unwrap()));
    let ranges: Vec<Option<String>> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.contains(&shard1) && r.is_download())
        .map(|r| r.range)
        .collect();
    assert_eq!(ranges, [None, Some(format!("bytes={half}-"))]);
}

#[test]
fn offline_a_populated_cache_works_with_the_server_gone() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    let cache = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&server, cache.path());
    for revision in [BRANCH, "main"] {
        let source = HubSource::open(REPO, revision, "test", &settings).unwrap();
        for info in source.tensor_infos() {
            let _ = source.read(&info.name).unwrap();
        }
    }
    drop(server);
    settings.offline = true;
    let source = open_source_with(&format!("hf:{REPO}@{BRANCH}"), &settings).unwrap();
    assert_eq!(source.provenance().kind, "hf-cache");
    assert_eq!(
        source.provenance().revision_sha.as_deref(),
        Some(&*commit_sha("sharded"))
    );
    assert_same_tensors(source.as_ref(), &fixture);
    let by_sha = HubSource::open(REPO, &commit_sha("sharded"), "test", &settings).unwrap();
    assert_same_tensors(&by_sha, &fixture);
    let main = HubSource::open(REPO, "main", "test", &settings).unwrap();
    assert!(main.tokenizer_path().is_some());

    let listing = list_refs(REPO, &settings).unwrap();
    assert!(matches!(listing.origin, RefsOrigin::Cache { .. }));
    let names: Vec<&str> = listing.branches.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["main", BRANCH], "only the branches fetched before");
}

#[test]
fn offline_without_the_files_is_one_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let mut offline = HubSettings::new("http://127.0.0.1:9", cache.path());
    offline.offline = true;
    let e = HubSource::open(REPO, BRANCH, "test", &offline)
        .err()
        .expect("empty cache")
        .to_string();
    assert!(
        e.contains("offline (HF_HUB_OFFLINE): org/tiny@stage1-step1000-tokens5B"),
        "{e}"
    );
    assert!(e.contains(&cache.path().display().to_string()), "{e}");
    assert!(e.contains("hint: unset HF_HUB_OFFLINE"), "{e}");

    // Config and index cached, shards not: the error lists what is missing.
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    HubSource::open(REPO, BRANCH, "test", &test_settings(&server, cache.path())).unwrap();
    let e = HubSource::open(REPO, BRANCH, "test", &offline)
        .err()
        .expect("shards not cached")
        .to_string();
    assert!(
        e.contains("3 of 3 shards: model-00001-of-00003.safetensors"),
        "{e}"
    );
}

#[test]
fn evict_frees_the_shards_and_reads_download_them_again() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    let cache = tempfile::tempdir().unwrap();
    let mut source =
        HubSource::open(REPO, BRANCH, "test", &test_settings(&server, cache.path())).unwrap();
    let _ = source.read(QUERY_0).unwrap();
    let shard_bytes = fixture.sharded["model-00001-of-00003.safetensors"].len() as u64;
    assert_eq!(source.evict().unwrap(), shard_bytes);
    assert!(source.local_shards().is_empty());
    assert!(!blobs(cache.path()).contains(&shard_digest(&fixture, 1)));
    assert_eq!(source.tensor_infos().len(), fixture.weight_map.len());
    let tensor = source.read(QUERY_0).unwrap();
    assert!(tensor.equal(&local_source(&fixture).read(QUERY_0).unwrap()));
    assert_eq!(server.count(&shard_digest(&fixture, 1), true), 2);
}

/// Runs the binary with the Hub variables set for `home` and `endpoint` only; a child process has
/// its own environment, so tests never race on this process's.
fn ckpt_scan(home: &Path, endpoint: &str, offline: bool, args: &[&str]) -> (String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ckpt-scan"));
    for var in [
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "XDG_CACHE_HOME",
    ] {
        command.env_remove(var);
    }
    command.env("HF_HOME", home).env("HF_ENDPOINT", endpoint);
    if offline {
        command.env("HF_HUB_OFFLINE", "1");
    }
    let output = command.args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(output.status.success(), "{args:?} failed:\n{stderr}");
    (stdout, stderr)
}

#[test]
fn the_cli_reads_the_hub_settings_from_the_environment() {
    let fixture = fixture();
    let server = HubServer::start(repos(&fixture));
    let home = tempfile::tempdir().unwrap();
    let json_path = home.path().join("refs.json");
    let (stdout, _) = ckpt_scan(
        home.path(),
        &server.url,
        false,
        &["refs", "hf:org/tiny", "--json", json_path.to_str().unwrap()],
    );
    let branches: Vec<&str> = stdout
        .lines()
        .skip(3)
        .filter_map(|line| line.split_whitespace().last())
        .collect();
    assert_eq!(
        branches,
        [
            BRANCH,
            "stage1-step2000-tokens9B",
            "stage2-ingredient1-step100-tokens1B",
            "main",
            "experiment"
        ],
        "{stdout}"
    );
    assert!(stdout.contains(&commit_sha("sharded")[..10]), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(
        report["branches"][0]["commit"],
        json!(commit_sha("sharded"))
    );
    assert_eq!(report["branches"][0]["step"], json!(1000));
    assert_eq!(report["origin"]["from"], json!("server"));
    assert_eq!(
        report["settings"]["cache_dir"],
        json!(home.path().join("hub").to_str().unwrap())
    );

    // Listing tensors from a Hub revision reads shard headers, not shards.
    let spec = format!("hf:{REPO}@{BRANCH}");
    let (stdout, _) = ckpt_scan(
        home.path(),
        &server.url,
        false,
        &["inspect", &spec, "--headers-only", "--quiet"],
    );
    assert!(stdout.contains(&format!("{spec} (hub)")), "{stdout}");
    assert!(
        stdout.contains(&format!("revision     {}", commit_sha("sharded"))),
        "{stdout}"
    );
    assert!(stdout.contains("problems     none"), "{stdout}");
    assert_eq!(server.count("/cdn/", true), 0);

    drop(server);
    let (stdout, _) = ckpt_scan(
        home.path(),
        "http://127.0.0.1:9",
        true,
        &["refs", "hf:org/tiny"],
    );
    assert!(stdout.contains("the cached subset only"), "{stdout}");
    assert!(
        stdout.contains(BRANCH) && !stdout.contains("experiment"),
        "{stdout}"
    );
}

/// Pythia's published branches: `step0`, the log-spaced `step1` … `step512`, then every 1000 steps
/// to `step143000` (154 in all).
fn pythia_branches() -> Vec<String> {
    let early = (0..10).map(|i| 1u64 << i);
    std::iter::once(0)
        .chain(early)
        .chain((1..=143).map(|k| k * 1000))
        .map(|step| format!("step{step}"))
        .collect()
}

#[test]
fn pythia_branches_are_listed_parsed_with_tokens_and_thinned_as_the_manifest_says() {
    let names = pythia_branches();
    assert_eq!(names.len(), 154);
    let repo = HubRepo {
        branches: names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), format!("{i:040x}")))
            .collect(),
        ..Default::default()
    };
    let server = HubServer::start(HashMap::from([(
        "EleutherAI/pythia-160m-deduped".to_string(),
        repo,
    )]));
    let cache = tempfile::tempdir().unwrap();
    let settings = test_settings(&server, cache.path());
    let listing = list_refs("EleutherAI/pythia-160m-deduped", &settings).unwrap();
    let report = refs_report("EleutherAI/pythia-160m-deduped", listing, &settings);
    assert_eq!(report.branches.len(), 154);
    // Listed in step order, each with Pythia's 2,097,152 tokens per step.
    let steps: Vec<Option<u64>> = report.branches.iter().map(|r| r.step).collect();
    assert_eq!(steps[..4], [Some(0), Some(1), Some(2), Some(4)]);
    assert_eq!(steps[153], Some(143_000));
    let last = &report.branches[153];
    assert_eq!(
        last.tokens_billions,
        Some(143_000 * 2_097_152 / 1_000_000_000)
    );

    let (manifest, _) =
        ckpt_scan::series::manifest::SeriesManifest::load("checkpoints/pythia-160m-deduped.toml")
            .unwrap();
    let sampling = manifest.hub.unwrap().branches.unwrap();
    let listed: Vec<String> = report.branches.iter().map(|r| r.branch.clone()).collect();
    let chosen = ckpt_scan::series::sampling::sample_branches(&listed, &sampling);
    // 16 log-spaced steps, plus step 0 (always kept).
    assert_eq!(chosen.len(), 17, "{chosen:?}");
    assert_eq!(chosen[0], ("step0".to_string(), 0));
    assert_eq!(chosen[16], ("step143000".to_string(), 143_000));
}

#[test]
fn every_shipped_series_manifest_parses() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("checkpoints").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let (manifest, _) =
            ckpt_scan::series::manifest::SeriesManifest::load(path.to_str().unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            Some(manifest.name.as_str()),
            path.file_stem().and_then(|s| s.to_str()),
            "the name is the file's"
        );
        names.push(manifest.name);
    }
    for wanted in [
        "pythia-160m-deduped",
        "pythia-1b-deduped",
        "olmo3-7b",
        "llama-3.1-8b",
        "falcon3-10b",
        "qwen3-32b",
        "olmo2-7b",
        "gemma3-270m",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing: {names:?}"
        );
    }
}
