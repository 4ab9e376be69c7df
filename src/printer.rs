//! All user-facing output goes through here: progress and notes on stderr, data on stdout.

use std::io::Write;

/// Prints notes to stderr unless quiet; results always go to stdout.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    pub quiet: bool,
}

impl Printer {
    pub fn note(&self, message: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", message.as_ref());
        }
    }

    pub fn warn(&self, message: impl AsRef<str>) {
        eprintln!("warning: {}", message.as_ref());
    }

    pub fn result(&self, message: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) means the reader has what it wants: the result is dropped and
        // the command goes on to finish its files (library code never exits the process).
        let _ = writeln!(out, "{}", message.as_ref());
    }
}
