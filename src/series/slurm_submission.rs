//! `scan --slurm`: the array job (one shard per task) and the report job after it, written under
//! `<out>/slurm/` and submitted (or, for a dry run, printed).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::output::atomic::write_atomic;
use crate::printer::Printer;
use crate::series::manifest::SlurmSettings;
use crate::series::slurm;

/// A resolved submission. Paths as the user gave them; the jobs get them made absolute (a Slurm
/// job starts in another folder).
pub struct SlurmSubmission {
    pub series_name: String,
    pub manifest_path: PathBuf,
    pub out_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub shards: usize,
    pub options: SlurmSettings,
    /// The flags every worker repeats after `scan MANIFEST --out --cache-dir`.
    pub worker_flags: Vec<String>,
    /// Print the scripts instead of submitting them.
    pub dry_run: bool,
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}: no absolute path", path.display()))
}

impl SlurmSubmission {
    /// Writes and submits the two jobs (or prints them for a dry run); the result tells the user
    /// how to follow them.
    pub fn submit(&self, printer: &Printer) -> Result<()> {
        let slurm_dir = absolute(&self.out_dir.join("slurm"))?;
        let logs = slurm_dir.join("logs");
        let exe = std::env::current_exe().context("cannot locate the ckpt-scan binary")?;
        let mut words: Vec<String> = vec![
            exe.display().to_string(),
            "scan".into(),
            absolute(&self.manifest_path)?.display().to_string(),
            "--out".into(),
            absolute(&self.out_dir)?.display().to_string(),
            "--cache-dir".into(),
            absolute(&self.cache_dir)?.display().to_string(),
        ];
        words.extend(self.worker_flags.iter().cloned());
        let command: Vec<String> = words.iter().map(|w| slurm::shell_quote(w)).collect();
        let job = slurm::render(
            &self.series_name,
            &command.join(" "),
            self.shards,
            &logs,
            &self.options,
        );
        if self.dry_run {
            printer.result(format!(
                "# {}/scan.sbatch\n{}\n# {}/report.sbatch (after the array: --dependency=afterany)\n{}",
                slurm_dir.display(),
                job.array_script,
                slurm_dir.display(),
                job.report_script
            ));
            return Ok(());
        }
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("{}: cannot create", logs.display()))?;
        let (array_path, report_path) = (
            slurm_dir.join("scan.sbatch"),
            slurm_dir.join("report.sbatch"),
        );
        write_atomic(&array_path, job.array_script.as_bytes())?;
        write_atomic(&report_path, job.report_script.as_bytes())?;
        let array_id = slurm::submit(&array_path, &[])?;
        let report_id =
            slurm::submit(&report_path, &[format!("--dependency=afterany:{array_id}")])?;
        printer.result(format!(
            "submitted array job {array_id} ({} shards) and report job {report_id}\n\
             follow: squeue -j {array_id},{report_id}   logs: {}\n\
             units:  ckpt-scan scan {} --cache-dir {} --status\n\
             report: {} (written by job {report_id})",
            self.shards,
            logs.display(),
            self.manifest_path.display(),
            self.cache_dir.display(),
            self.out_dir.join("report.md").display()
        ));
        Ok(())
    }
}
