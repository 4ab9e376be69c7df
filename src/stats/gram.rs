//! Streaming Gram statistics: `[X 1]ᵀ[X 1]` accumulated in f64 over row batches, so any linear
//! regression among X's columns can be fitted and scored later without touching rows again.

use tch::{Device, Kind, Tensor};

/// Sufficient statistics of the rows seen so far: count, column sums and cross-products.
///
/// `columns` is D; the accumulators are f64 on the CPU (or the device given) whatever the input.
pub struct Gram {
    /// Number of rows accumulated.
    pub rows: i64,
    /// `[D]` column sums `Xᵀ1`.
    pub sums: Tensor,
    /// `[D, D]` cross-products `XᵀX`.
    pub cross: Tensor,
}

impl Gram {
    pub fn new(columns: i64, device: Device) -> Self {
        Gram {
            rows: 0,
            sums: Tensor::zeros([columns], (Kind::Double, device)),
            cross: Tensor::zeros([columns, columns], (Kind::Double, device)),
        }
    }

    pub fn columns(&self) -> i64 {
        self.sums.size()[0]
    }

    /// Adds rows `x`: `[n, D]` of any float kind.
    pub fn add(&mut self, x: &Tensor) {
        let x = x.to_device(self.sums.device()).to_kind(Kind::Double);
        self.rows += x.size()[0];
        self.sums += x.sum_dim_intlist(0, false, Kind::Double);
        self.cross += x.transpose(0, 1).matmul(&x);
    }

    /// Column means `[D]`.
    pub fn means(&self) -> Tensor {
        &self.sums / self.rows.max(1) as f64
    }

    /// Centred cross-products `XᵀX − n·μμᵀ` `[D, D]` (the scatter matrix about the mean).
    pub fn scatter(&self) -> Tensor {
        let mean = self.means();
        &self.cross - mean.outer(&mean) * self.rows as f64
    }

    /// The mean and scatter, computed once for all the fits and scores that follow.
    pub fn moments(&self) -> Moments {
        Moments {
            rows: self.rows,
            means: self.means(),
            scatter: self.scatter(),
        }
    }

    /// Merges another accumulator over the same columns.
    pub fn merge(&mut self, other: &Gram) {
        self.rows += other.rows;
        self.sums += &other.sums;
        self.cross += &other.cross;
    }
}

/// Row count, column means `[D]` and scatter `[D, D]` of one split: all a regression needs.
pub struct Moments {
    pub rows: i64,
    pub means: Tensor,
    pub scatter: Tensor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_accumulate_to_the_full_gram() {
        tch::manual_seed(0);
        let x = Tensor::randn([50, 6], (Kind::Double, Device::Cpu)) + 3.0;
        let mut g = Gram::new(6, Device::Cpu);
        g.add(&x.narrow(0, 0, 20));
        g.add(&x.narrow(0, 20, 30));
        let direct = x.transpose(0, 1).matmul(&x);
        assert!(f64::try_from((&g.cross - direct).abs().max()).unwrap() < 1e-9);
        let centred = &x - x.mean_dim(0, true, Kind::Double);
        let scatter = centred.transpose(0, 1).matmul(&centred);
        assert!(f64::try_from((g.scatter() - scatter).abs().max()).unwrap() < 1e-9);
        assert_eq!(g.rows, 50);
    }
}
