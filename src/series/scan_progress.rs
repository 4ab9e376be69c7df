//! Scan progress: checkpoints done, with the checkpoint, analysis and layer under way as the
//! message (a bar on a terminal, plain lines otherwise; hidden with --quiet).

use std::cell::{Cell, RefCell};

use crate::printer::Printer;
use crate::progress::Progress;

/// Interior mutability because the analyses report layers through `Fn` callbacks.
pub struct ScanProgress {
    progress: RefCell<Progress>,
    checkpoints_done: Cell<usize>,
    checkpoint: RefCell<String>,
    analysis: RefCell<(String, i64)>,
}

impl ScanProgress {
    pub fn new(printer: &Printer, checkpoints: usize) -> Self {
        ScanProgress {
            progress: RefCell::new(Progress::new(
                printer,
                "scan",
                "checkpoint",
                checkpoints as u64,
            )),
            checkpoints_done: Cell::new(0),
            checkpoint: RefCell::new(String::new()),
            analysis: RefCell::new((String::new(), 0)),
        }
    }

    pub fn checkpoint(&self, label: &str) {
        *self.checkpoint.borrow_mut() = label.to_string();
        *self.analysis.borrow_mut() = (String::new(), 0);
        self.show(None);
    }

    pub fn checkpoint_done(&self) {
        self.checkpoints_done.set(self.checkpoints_done.get() + 1);
        self.show(None);
    }

    pub fn analysis(&self, name: &str, layers: i64) {
        *self.analysis.borrow_mut() = (name.to_string(), layers);
        self.show(Some(0));
    }

    pub fn layer(&self, done: i64) {
        self.show(Some(done));
    }

    fn show(&self, layer: Option<i64>) {
        let mut message = self.checkpoint.borrow().clone();
        let (analysis, layers) = &*self.analysis.borrow();
        if let (Some(done), false) = (layer, analysis.is_empty()) {
            message.push_str(&format!(" · {analysis} layer {done}/{layers}"));
        }
        let mut progress = self.progress.borrow_mut();
        progress.set_message(message);
        progress.set_position(self.checkpoints_done.get() as f64);
    }

    pub fn note(&self, message: String) {
        self.progress.borrow().println(message);
    }

    pub fn finish(&self) {
        self.progress.borrow().finish();
    }
}
