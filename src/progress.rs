//! Progress a person can read while a long step runs: an indicatif bar on a terminal, and one plain
//! line every few seconds when stderr is not one (under `make`, CI or a log file), with the elapsed
//! time and an estimate of what is left. Silent under `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::printer::Printer;

/// Plain lines come at most this often (the last position is always printed).
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

/// Progress of one long step: `done` of `total` units (steps, layers, checkpoints, tasks).
pub struct Progress {
    label: String,
    unit: String,
    total: u64,
    /// Position and time when counting began: a resumed run's rate counts only the work done now.
    first: Option<(f64, Instant)>,
    message: String,
    mode: Mode,
}

enum Mode {
    Hidden,
    Bar(ProgressBar),
    Plain { last_line: Option<Instant> },
}

impl Progress {
    /// `label` names the step (`train`, `scan`), `unit` what is counted (`steps`, `checkpoints`).
    pub fn new(printer: &Printer, label: &str, unit: &str, total: u64) -> Self {
        let mode = if printer.quiet {
            Mode::Hidden
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>8} [{bar:30}] {pos}/{len} {msg} ({elapsed}, ETA {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            Mode::Bar(bar)
        } else {
            Mode::Plain { last_line: None }
        };
        Progress {
            label: label.to_string(),
            unit: unit.to_string(),
            total,
            first: None,
            message: String::new(),
            mode,
        }
    }

    /// What is being worked on now (a checkpoint label, a layer, a loss), shown after the count.
    pub fn set_message(&mut self, message: impl Into<String>) {
        self.message = message.into();
        if let Mode::Bar(bar) = &self.mode {
            bar.set_message(self.message.clone());
        }
    }

    /// Moves to `done` units (fractional inside a unit, for a finer estimate); prints a plain line
    /// when the interval has passed or the work is complete.
    pub fn set_position(&mut self, done: f64) {
        let now = Instant::now();
        let first = *self.first.get_or_insert((done, now));
        match &mut self.mode {
            Mode::Hidden => {}
            Mode::Bar(bar) => bar.set_position(done.floor() as u64),
            Mode::Plain { last_line } => {
                let due = last_line.is_none_or(|t| now.duration_since(t) >= PLAIN_INTERVAL);
                if due || done >= self.total as f64 {
                    *last_line = Some(now);
                    eprintln!("{}", self.plain_line(done, first, now));
                }
            }
        }
    }

    /// A note that stays above the bar (or among the plain lines).
    pub fn println(&self, message: impl AsRef<str>) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(bar) => bar.println(message.as_ref()),
            Mode::Plain { .. } => eprintln!("{}", message.as_ref()),
        }
    }

    /// Clears the bar (plain mode already printed the final position).
    pub fn finish(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }

    fn plain_line(&self, done: f64, first: (f64, Instant), now: Instant) -> String {
        let elapsed = now.duration_since(first.1).as_secs_f64();
        let mut line = format!(
            "{}: {} {}/{}",
            self.label,
            self.unit,
            done.floor() as u64,
            self.total
        );
        if !self.message.is_empty() {
            line.push_str(&format!(" · {}", self.message));
        }
        line.push_str(&format!(" · {} elapsed", duration_text(elapsed)));
        if let Some(left) = seconds_left(first.0, done, self.total as f64, elapsed) {
            line.push_str(&format!(", about {} left", duration_text(left)));
        }
        line
    }
}

/// Time left at the rate since counting began; `None` until some work is done.
fn seconds_left(start: f64, done: f64, total: f64, elapsed: f64) -> Option<f64> {
    let advanced = done - start;
    (advanced > 0.0 && elapsed > 0.0).then(|| (total - done).max(0.0) * elapsed / advanced)
}

/// `42s`, `3m05s`, `1h02m`.
fn duration_text(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_follows_the_rate_since_counting_began() {
        // Resumed at 100 of 1000, 300 done in 60 s: 600 left at 5/s.
        assert_eq!(seconds_left(100.0, 400.0, 1000.0, 60.0), Some(120.0));
        assert_eq!(seconds_left(100.0, 100.0, 1000.0, 60.0), None);
        assert_eq!(seconds_left(0.0, 1000.0, 1000.0, 60.0), Some(0.0));
    }

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(duration_text(42.4), "42s");
        assert_eq!(duration_text(185.0), "3m05s");
        assert_eq!(duration_text(3720.0), "1h02m");
    }

    #[test]
    fn plain_line_names_the_count_the_work_and_the_estimate() {
        let printer = Printer { quiet: false };
        let mut progress = Progress::new(&printer, "train", "step", 100);
        progress.mode = Mode::Plain { last_line: None };
        progress.set_message("loss 5.1");
        let t0 = Instant::now();
        let line = progress.plain_line(50.0, (0.0, t0), t0 + Duration::from_secs(30));
        assert_eq!(
            line,
            "train: step 50/100 · loss 5.1 · 30s elapsed, about 30s left"
        );
    }
}
