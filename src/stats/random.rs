//! Keyed random streams and the samplers built on them: every draw is a function of
//! (seed, stream name, chunk), never of libtorch's global generator, so results do not depend on
//! threads, streaming order or what else the process draws. The one exception, the torch-seeded
//! draws kept for reproducing earlier figures, goes through [`with_torch_seed`].

use std::sync::Mutex;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

/// OLMo-2 truncates its normal at this many standard deviations.
pub const TRUNCATION_SIGMAS: f64 = 3.0;

/// Serialises users of libtorch's global generator: seeding and drawing happen under one lock, so
/// two threads (tests in one binary, parallel units) cannot interleave their streams.
static TORCH_GENERATOR: Mutex<()> = Mutex::new(());

/// Runs `draw` with libtorch's global generator seeded to `seed`, holding it for the whole call.
/// For streams whose published figures were drawn by torch; new code uses [`sample_normal`].
pub fn with_torch_seed<T>(seed: i64, draw: impl FnOnce() -> T) -> T {
    let _held = TORCH_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    draw()
}

/// The random stream of one generation chunk of one tensor: ChaCha8 keyed by
/// sha256(seed, tensor name, chunk index). Independent of libtorch's global generator, so results
/// do not depend on threads or on what else the process draws.
fn chunk_rng(seed: u64, name: &str, chunk: u64) -> ChaCha8Rng {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update(chunk.to_le_bytes());
    ChaCha8Rng::from_seed(hasher.finalize().into())
}

/// `n` draws uniform on the open interval (−edge, edge), at 24-bit resolution.
fn uniform_symmetric(rng: &mut ChaCha8Rng, n: usize, edge: f64) -> Vec<f32> {
    const SCALE: f64 = 1.0 / (1u64 << 24) as f64;
    (0..n)
        .map(|_| {
            let u = ((rng.next_u32() >> 8) as f64 + 0.5) * SCALE; // in (0, 1)
            (edge * (2.0 * u - 1.0)) as f32
        })
        .collect()
}

/// Rows are generated in chunks of about this many elements, so scratch memory stays one chunk
/// whatever the tensor's size.
const GENERATION_CHUNK: i64 = 1 << 22;

/// Inverse-CDF sampling of a normal: `x = std·√2·erfinv(v)` for `v` uniform on (−edge, edge),
/// where `edge = erf(cut/√2)` truncates at ±cut·σ (as `torch.nn.init.trunc_normal_` does), and
/// `cut = ∞` (edge 1) gives a plain normal. Returns `[rows, cols...]` filled chunk by chunk.
/// For shapes fixed in code; shapes from a config go through [`try_sample_normal`].
pub fn sample_normal(shape: &[i64], seed: u64, name: &str, std: f64, cut_sigmas: f64) -> Tensor {
    try_sample_normal(shape, seed, name, std, cut_sigmas).expect("a tensor of a size fixed in code")
}

/// [`sample_normal`] with the allocation's failure (a size a config asked for that the machine
/// cannot hold) returned as an error instead of a panic.
pub fn try_sample_normal(
    shape: &[i64],
    seed: u64,
    name: &str,
    std: f64,
    cut_sigmas: f64,
) -> Result<Tensor, tch::TchError> {
    let edge = if cut_sigmas.is_finite() {
        f64::try_from(Tensor::from(cut_sigmas / std::f64::consts::SQRT_2).erf())
            .expect("scalar erf")
    } else {
        1.0
    };
    let t = Tensor::f_empty(shape, (Kind::Float, Device::Cpu))?;
    let row_elements: i64 = shape[1..].iter().product();
    let rows_per_chunk = (GENERATION_CHUNK / row_elements.max(1)).max(1);
    let (mut start, mut chunk) = (0, 0u64);
    while start < shape[0] {
        let rows = rows_per_chunk.min(shape[0] - start);
        let mut rng = chunk_rng(seed, name, chunk);
        let values = uniform_symmetric(&mut rng, (rows * row_elements) as usize, edge);
        let mut view = t.narrow(0, start, rows);
        view.copy_(&Tensor::from_slice(&values).view_(view.size()));
        let _ = view.erfinv_();
        let _ = view.g_mul_scalar_(std * std::f64::consts::SQRT_2);
        if cut_sigmas.is_finite() {
            // erfinv of an f32 just inside ±edge can round a hair past the cut.
            let _ = view.clamp_(-cut_sigmas * std, cut_sigmas * std);
        }
        start += rows;
        chunk += 1;
    }
    Ok(t)
}

/// The standard deviation of a normal with standard deviation `std` truncated at `±cut·std`.
pub fn truncated_normal_std(std: f64, cut_sigmas: f64) -> f64 {
    let c = cut_sigmas;
    let pdf = (-c * c / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mass = f64::try_from(Tensor::from(c / std::f64::consts::SQRT_2).erf()).expect("scalar erf");
    std * (1.0 - 2.0 * c * pdf / mass).sqrt()
}
