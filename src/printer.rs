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
        if let Err(e) = writeln!(out, "{}", message.as_ref()) {
            // A closed pipe (`| head`) means the reader has what it wants: stop quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }
}
