//! Streaming Gram statistics: `[X 1]ᵀ[X 1]` accumulated over row batches, so any linear regression
//! among X's columns can be fitted and scored later without touching rows again.
//!
//! Precision: products and sums are f64 whatever the input, so a Gram of f32 vectors is exact to
//! f64 rounding. f32 products were tried and are twice as fast, but their rounding (≈ 1e-7 relative,
//! growing with the rows a product sums) is multiplied by the size of the coefficients when
//! references are nearly collinear: a cross-layer refit of seven V heads from 576 rows then missed
//! lstsq by 3e-4 in R² (benches/README.md, "Regression stage"). Rows are also shifted by a fixed
//! offset (the first rows' means), so centring at the end never cancels large numbers.
//!
//! Speed: only the block-upper triangle of the symmetric product is computed, in strips
//! `X_iᵀ X_{i..}` of [`BLOCK_COLUMNS`] columns, and rows are converted to f64 [`CHUNK_ROWS`] at a
//! time, so a batch's f64 copy stays small.

use tch::{Device, Kind, Tensor};

/// Rows converted to f64 and multiplied at a time (4096 × 4096 columns: a 128 MiB copy).
const CHUNK_ROWS: i64 = 4096;

/// Column block of the symmetric product: strip `i` is `X_iᵀ X_{i..}`, so 53% of `XᵀX` is
/// computed at 4096 columns while each product stays large enough to run at full speed.
const BLOCK_COLUMNS: i64 = 256;

/// Sufficient statistics of the rows seen so far: count, column sums and cross-products.
///
/// The accumulators are f64 on the CPU (or the device given) whatever the input.
pub struct Gram {
    /// Number of rows accumulated.
    pub rows: i64,
    /// `[D]` f64 offset subtracted from every row (the first batch's column means).
    shift: Option<Tensor>,
    /// `[D]` Σ (x − shift).
    sums: Tensor,
    /// `[D, D]` Σ (x − shift)ᵀ(x − shift), block-upper: blocks below the diagonal stay zero.
    upper: Tensor,
}

impl Gram {
    pub fn new(columns: i64, device: Device) -> Self {
        Gram {
            rows: 0,
            shift: None,
            sums: Tensor::zeros([columns], (Kind::Double, device)),
            upper: Tensor::zeros([columns, columns], (Kind::Double, device)),
        }
    }

    pub fn columns(&self) -> i64 {
        self.sums.size()[0]
    }

    /// Adds rows `x`: `[n, D]` of any float kind.
    pub fn add(&mut self, x: &Tensor) {
        let n = x.size()[0];
        let d = self.columns();
        let mut start = 0;
        while start < n {
            let rows = x
                .narrow(0, start, CHUNK_ROWS.min(n - start))
                .to_device(self.sums.device())
                .to_kind(Kind::Double);
            // Any offset near the mean serves; the first chunk's is at hand.
            let shift = self
                .shift
                .get_or_insert_with(|| rows.mean_dim(0, false, Kind::Double));
            let chunk = rows - &*shift;
            self.sums += chunk.sum_dim_intlist(0, false, Kind::Double);
            for first in (0..d).step_by(BLOCK_COLUMNS as usize) {
                let width = BLOCK_COLUMNS.min(d - first);
                let strip = chunk
                    .narrow(1, first, width)
                    .transpose(0, 1)
                    .matmul(&chunk.narrow(1, first, d - first));
                let mut target = self
                    .upper
                    .narrow(0, first, width)
                    .narrow(1, first, d - first);
                target += strip;
            }
            start += CHUNK_ROWS;
        }
        self.rows += n;
    }

    /// Column means `[D]`.
    pub fn means(&self) -> Tensor {
        let shifted_means = &self.sums / self.rows.max(1) as f64;
        match &self.shift {
            Some(shift) => shifted_means + shift,
            None => shifted_means,
        }
    }

    /// Centred cross-products `XᵀX − n·μμᵀ` `[D, D]` (the scatter matrix about the mean).
    pub fn scatter(&self) -> Tensor {
        self.moments().scatter
    }

    /// The mean and scatter, computed once for all the fits and scores that follow.
    pub fn moments(&self) -> Moments {
        Gram {
            rows: self.rows,
            shift: self.shift.as_ref().map(Tensor::shallow_clone),
            sums: self.sums.shallow_clone(),
            upper: self.upper.copy(),
        }
        .into_moments()
    }

    /// [`Gram::moments`] in place of the accumulators: no second `D × D` matrix.
    pub fn into_moments(self) -> Moments {
        let means = self.means();
        let mut cross = self.upper;
        let d = cross.size()[0];
        // Mirror the computed blocks into the zero blocks below the diagonal.
        let starts: Vec<i64> = (0..d).step_by(BLOCK_COLUMNS as usize).collect();
        for (i, &row) in starts.iter().enumerate() {
            for &column in &starts[..i] {
                let (height, width) = (BLOCK_COLUMNS.min(d - row), BLOCK_COLUMNS.min(d - column));
                let mirrored = cross
                    .narrow(0, column, width)
                    .narrow(1, row, height)
                    .transpose(0, 1);
                cross
                    .narrow(0, row, height)
                    .narrow(1, column, width)
                    .copy_(&mirrored);
            }
        }
        // Centre: Σ(x−c)(x−c)ᵀ − n·m mᵀ, m the mean of the shifted rows.
        let shifted_means = &self.sums / self.rows.max(1) as f64;
        let _ = cross.addr_(&(&shifted_means * -(self.rows as f64)), &shifted_means);
        Moments {
            rows: self.rows,
            means,
            scatter: cross,
        }
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

    fn max_abs(t: Tensor) -> f64 {
        f64::try_from(t.abs().max()).unwrap()
    }

    fn direct_scatter(x: &Tensor) -> Tensor {
        let centred = x - x.mean_dim(0, true, Kind::Double);
        centred.transpose(0, 1).matmul(&centred)
    }

    #[test]
    fn batches_accumulate_to_the_full_gram() {
        tch::manual_seed(0);
        let x = Tensor::randn([50, 6], (Kind::Double, Device::Cpu)) + 3.0;
        let mut g = Gram::new(6, Device::Cpu);
        g.add(&x.narrow(0, 0, 20));
        g.add(&x.narrow(0, 20, 30));
        assert!(max_abs(g.scatter() - direct_scatter(&x)) < 1e-9);
        assert!(max_abs(g.means() - x.mean_dim(0, false, Kind::Double)) < 1e-12);
        assert_eq!(g.rows, 50);
    }

    #[test]
    fn column_blocks_and_row_chunks_cover_the_whole_matrix() {
        // 1100 columns = two full blocks and a ragged one; 4500 rows = three chunks, one ragged.
        tch::manual_seed(1);
        let x = Tensor::randn([4500, 1100], (Kind::Double, Device::Cpu));
        let mut g = Gram::new(1100, Device::Cpu);
        g.add(&x);
        let want = direct_scatter(&x);
        let scale = max_abs(want.diagonal(0, 0, 1));
        assert!(max_abs(g.scatter() - want) < 1e-12 * scale);
    }

    #[test]
    fn f32_rows_far_from_zero_are_exact_to_f64_rounding() {
        // Means 1000× the spread: f32 products would get the scatter wrong by ~1e-2 unshifted
        // (the centring cancels 1e6-scale numbers) and by ~1e-7 shifted (tried).
        tch::manual_seed(2);
        let x64 = Tensor::randn([10_000, 64], (Kind::Double, Device::Cpu))
            .matmul(&Tensor::randn([64, 64], (Kind::Double, Device::Cpu)))
            + Tensor::randn([64], (Kind::Double, Device::Cpu)) * 1000.0;
        let x32 = x64.to_kind(Kind::Float);
        // One batch of 2000 rows, then 8000 at once (two full chunks of CHUNK_ROWS).
        let mut g = Gram::new(64, Device::Cpu);
        g.add(&x32.narrow(0, 0, 2000));
        g.add(&x32.narrow(0, 2000, 8000));
        // The reference is the f32 rows themselves, exactly centred in f64.
        let want = direct_scatter(&x32.to_kind(Kind::Double));
        let scale = max_abs(want.diagonal(0, 0, 1));
        let error = max_abs(g.scatter() - &want) / scale;
        assert!(error < 1e-12, "relative scatter error {error:e}");
        let mean_error =
            max_abs(g.means() - x32.to_kind(Kind::Double).mean_dim(0, false, Kind::Double));
        assert!(mean_error < 1e-9, "mean error {mean_error:e}");
    }
}
