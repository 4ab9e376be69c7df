//! Learning-rate schedule: linear warm-up then cosine decay to a floor, as OLMo's `CosWithWarmup`
//! (`olmo/optim.py`), evaluated at the 1-based number of the update being taken.

/// Peak rate, warm-up length, total updates and the floor as a fraction of the peak.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineWithWarmup {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub final_fraction: f64,
}

impl CosineWithWarmup {
    /// The rate for update number `update` (1 for the first update).
    pub fn rate(&self, update: u64) -> f64 {
        let floor = self.peak * self.final_fraction;
        if update < self.warmup_steps {
            return self.peak * update as f64 / self.warmup_steps as f64;
        }
        if update >= self.total_steps {
            return floor;
        }
        let span = (self.total_steps - self.warmup_steps) as f64;
        let progress = (update - self.warmup_steps) as f64 / span;
        floor + (self.peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_peaks_and_ends_at_the_floor() {
        let s = CosineWithWarmup {
            peak: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            final_fraction: 0.1,
        };
        assert!((s.rate(1) - 0.1).abs() < 1e-12);
        assert!((s.rate(5) - 0.5).abs() < 1e-12);
        assert!((s.rate(10) - 1.0).abs() < 1e-12);
        // Halfway through the cosine: floor + (peak − floor)/2.
        assert!((s.rate(60) - 0.55).abs() < 1e-12);
        assert!((s.rate(110) - 0.1).abs() < 1e-12);
        assert!((s.rate(500) - 0.1).abs() < 1e-12);
    }
}
