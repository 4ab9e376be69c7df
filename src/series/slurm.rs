//! `scan --slurm`: the sbatch scripts of a sharded scan — a job array with one task per shard
//! (`scan --shard auto/N`, requeued on node failure, per-task logs) and a report job that runs after
//! the whole array (`afterany`, so failed shards are listed rather than hiding the report).
//! Rendering is pure; submitting is one `sbatch --parsable` call per script.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::series::manifest::SlurmSettings;

/// Flags over the manifest's `[slurm]` table, with the values checked.
pub fn resolve(flags: &SlurmSettings, manifest: &SlurmSettings) -> Result<SlurmSettings> {
    let pick = |name: &str, flag: &Option<String>, default: &Option<String>| -> Result<_> {
        let value = flag.clone().or_else(|| default.clone());
        if let Some(v) = &value {
            // Values land on `#SBATCH` lines: whitespace or `#` would smuggle in other options.
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '#') {
                bail!("--slurm-{name} {v:?}: not a valid sbatch value");
            }
        }
        Ok(value)
    };
    let concurrency = flags.concurrency.or(manifest.concurrency);
    if concurrency == Some(0) {
        bail!("--slurm-concurrency 0: at least one task must run");
    }
    Ok(SlurmSettings {
        concurrency,
        partition: pick("partition", &flags.partition, &manifest.partition)?,
        time: pick("time", &flags.time, &manifest.time)?,
        mem: pick("mem", &flags.mem, &manifest.mem)?,
        gres: pick("gres", &flags.gres, &manifest.gres)?,
        account: pick("account", &flags.account, &manifest.account)?,
    })
}

fn directives(options: &SlurmSettings) -> Vec<String> {
    [
        ("partition", &options.partition),
        ("time", &options.time),
        ("mem", &options.mem),
        ("gres", &options.gres),
        ("account", &options.account),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| format!("#SBATCH --{name}={v}")))
    .collect()
}

/// The two scripts of a sharded scan.
pub struct SlurmJob {
    pub array_script: String,
    pub report_script: String,
}

/// Renders the scripts. `command` is the scan command line every task shares (binary, manifest,
/// cache folder and analysis flags, already quoted); the array adds `--shard auto/N`, the report
/// job `--report`.
pub fn render(
    name: &str,
    command: &str,
    shards: usize,
    logs: &Path,
    options: &SlurmSettings,
) -> SlurmJob {
    let throttle = options
        .concurrency
        .map_or(String::new(), |k| format!("%{}", k.min(shards)));
    let mut array = vec![
        "#!/bin/bash".to_string(),
        format!("#SBATCH --job-name=ckpt-scan-{name}"),
        format!("#SBATCH --array=0-{}{throttle}", shards - 1),
        format!("#SBATCH --output={}/shard-%a.log", logs.display()),
        "#SBATCH --open-mode=append".to_string(),
        // A node failure requeues the task; finished units are kept, claims of the dead task
        // are taken over, so the rerun does only what is left.
        "#SBATCH --requeue".to_string(),
    ];
    array.extend(directives(options));
    array.push("set -euo pipefail".into());
    array.push(format!("exec {command} --shard auto/{shards}"));
    let mut report = vec![
        "#!/bin/bash".to_string(),
        format!("#SBATCH --job-name=ckpt-scan-{name}-report"),
        format!("#SBATCH --output={}/report.log", logs.display()),
    ];
    report.extend(
        directives(options)
            .into_iter()
            .filter(|d| !d.starts_with("#SBATCH --gres")),
    );
    report.push("set -euo pipefail".into());
    report.push(format!("exec {command} --report"));
    SlurmJob {
        array_script: array.join("\n") + "\n",
        report_script: report.join("\n") + "\n",
    }
}

/// Submits `script` with `sbatch --parsable` (plus `extra` arguments) → the job id.
pub fn submit(script: &Path, extra: &[String]) -> Result<String> {
    let output = Command::new("sbatch")
        .arg("--parsable")
        .args(extra)
        .arg(script)
        .output()
        .context("sbatch: cannot run it (is Slurm installed and on PATH?)")?;
    if !output.status.success() {
        bail!(
            "sbatch {}: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let id = text
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        bail!("sbatch {}: unexpected reply {text:?}", script.display());
    }
    Ok(id)
}

/// Quotes one word for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_and_report_scripts_carry_the_options_and_the_shard_contract() {
        let flags = SlurmSettings {
            gres: Some("gpu:1".into()),
            ..Default::default()
        };
        let manifest = SlurmSettings {
            concurrency: Some(2),
            partition: Some("gpu".into()),
            gres: Some("gpu:2".into()),
            ..Default::default()
        };
        let options = resolve(&flags, &manifest).unwrap();
        let job = render(
            "tiny",
            "/bin/ckpt-scan scan /m/tiny.toml",
            4,
            Path::new("/logs"),
            &options,
        );
        let a = &job.array_script;
        for line in [
            "#SBATCH --array=0-3%2",
            "#SBATCH --output=/logs/shard-%a.log",
            "#SBATCH --requeue",
            "#SBATCH --partition=gpu",
            "#SBATCH --gres=gpu:1",
            "exec /bin/ckpt-scan scan /m/tiny.toml --shard auto/4",
        ] {
            assert!(a.lines().any(|l| l == line), "{line} missing in\n{a}");
        }
        let r = &job.report_script;
        assert!(
            r.ends_with("exec /bin/ckpt-scan scan /m/tiny.toml --report\n"),
            "{r}"
        );
        assert!(!r.contains("--gres"), "the report job needs no GPU\n{r}");
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        let flags = SlurmSettings {
            time: Some("1:00\n#SBATCH --x".into()),
            ..Default::default()
        };
        let err = resolve(&flags, &SlurmSettings::default()).unwrap_err();
        assert!(err.to_string().contains("--slurm-time"), "{err}");
        let zero = SlurmSettings {
            concurrency: Some(0),
            ..Default::default()
        };
        assert!(resolve(&zero, &SlurmSettings::default()).is_err());
    }

    #[test]
    fn shell_quoting_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/a/b-c.toml"), "/a/b-c.toml");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
        assert_eq!(shell_quote(""), "''");
    }
}
