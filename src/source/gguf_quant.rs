//! GGML tensor types and their dequantisation to f32, following the block layouts of ggml's
//! `ggml-quants.c` and reproducing gguf-py's `gguf.quants.dequantize` bit for bit (same f32
//! operations in the same order, no fused multiply-add).
//!
//! Legend inside the kernels: `d` block scale, `m`/`dmin` block minimum, `q` quantised value,
//! `sc` sub-block scale, `QK_K` = 256 weights per k-quant super-block.

use half::f16;

/// A GGML tensor type as GGUF files number it (`ggml_type` in ggml.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Iq2Xxs,
    Iq2Xs,
    Iq3Xxs,
    Iq1S,
    Iq4Nl,
    Iq3S,
    Iq2S,
    Iq4Xs,
    I8,
    I16,
    I32,
    I64,
    F64,
    Iq1M,
    Bf16,
    Tq1_0,
    Tq2_0,
    Mxfp4,
}

/// `(type, id, name, weights per block, bytes per block)`, from ggml.h / gguf-py `GGML_QUANT_SIZES`.
const LAYOUTS: [(GgmlType, u32, &str, usize, usize); 32] = [
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 40),
    (GgmlType::Q2K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8K, 15, "Q8_K", 256, 292),
    (GgmlType::Iq2Xxs, 16, "IQ2_XXS", 256, 66),
    (GgmlType::Iq2Xs, 17, "IQ2_XS", 256, 74),
    (GgmlType::Iq3Xxs, 18, "IQ3_XXS", 256, 98),
    (GgmlType::Iq1S, 19, "IQ1_S", 256, 50),
    (GgmlType::Iq4Nl, 20, "IQ4_NL", 32, 18),
    (GgmlType::Iq3S, 21, "IQ3_S", 256, 110),
    (GgmlType::Iq2S, 22, "IQ2_S", 256, 82),
    (GgmlType::Iq4Xs, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::Iq1M, 29, "IQ1_M", 256, 56),
    (GgmlType::Bf16, 30, "BF16", 1, 2),
    (GgmlType::Tq1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::Tq2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::Mxfp4, 39, "MXFP4", 32, 17),
];

/// Weights per k-quant super-block.
const QK_K: usize = 256;

impl GgmlType {
    /// The type a GGUF tensor-info `type` field names, or `None` for ids this table does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        LAYOUTS.iter().find(|l| l.1 == id).map(|l| l.0)
    }

    fn layout(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        LAYOUTS
            .iter()
            .find(|l| l.0 == self)
            .expect("every GgmlType variant has a row in LAYOUTS")
    }

    pub fn id(self) -> u32 {
        self.layout().1
    }

    /// The name ggml and gguf-py use (`Q4_K`, `BF16`, …).
    pub fn name(self) -> &'static str {
        self.layout().2
    }

    /// Weights per block (1 for plain float and integer types).
    pub fn block_size(self) -> usize {
        self.layout().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.layout().4
    }

    /// Whether [`dequantize`] handles this type.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::Bf16
                | GgmlType::Q8_0
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q4K
                | GgmlType::Q5K
                | GgmlType::Q6K
        )
    }
}

/// Dequantises whole blocks of `ty` to f32.
///
/// `blocks`: `n * ty.type_size()` bytes holding `n` blocks; result: `n * ty.block_size()` values in
/// storage order. `None` when the type has no dequantiser here (see [`GgmlType::is_supported`]).
///
/// # Panics
/// If `blocks` is not a whole number of blocks: callers validate tensor extents first.
pub fn dequantize(ty: GgmlType, blocks: &[u8]) -> Option<Vec<f32>> {
    let mut out = vec![0f32; blocks.len() / ty.type_size() * ty.block_size()];
    dequantize_into(ty, blocks, &mut out)?;
    Some(out)
}

/// [`dequantize`] into a caller-provided buffer of exactly `n * ty.block_size()` values.
///
/// # Panics
/// If `blocks` is not a whole number of blocks or `out` has the wrong length.
pub fn dequantize_into(ty: GgmlType, blocks: &[u8], out: &mut [f32]) -> Option<()> {
    let (block_size, type_size) = (ty.block_size(), ty.type_size());
    assert!(
        blocks.len().is_multiple_of(type_size)
            && out.len() == blocks.len() / type_size * block_size,
        "{} bytes of {} blocks ({type_size} bytes per {block_size} weights) into {} values",
        blocks.len(),
        ty.name(),
        out.len()
    );
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => f32_block,
        GgmlType::F16 => f16_block,
        GgmlType::Bf16 => bf16_block,
        GgmlType::Q8_0 => q8_0_block,
        GgmlType::Q4_0 => q4_0_block,
        GgmlType::Q4_1 => q4_1_block,
        GgmlType::Q5_0 => q5_0_block,
        GgmlType::Q5_1 => q5_1_block,
        GgmlType::Q4K => q4_k_block,
        GgmlType::Q5K => q5_k_block,
        GgmlType::Q6K => q6_k_block,
        _ => return None,
    };
    if block_size == 1 {
        // Plain float types: one loop over the whole tensor instead of a call per element.
        plain(ty, blocks, out);
    } else {
        for (block, values) in blocks
            .chunks_exact(type_size)
            .zip(out.chunks_exact_mut(block_size))
        {
            kernel(block, values);
        }
    }
    Some(())
}

fn plain(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (b, o) in bytes.chunks_exact(4).zip(out.iter_mut()) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
                *o = f16_at(b, 0);
            }
        }
        GgmlType::Bf16 => {
            for (b, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
                *o = bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        _ => unreachable!("plain() is only called for block_size 1 types"),
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// bf16 is the top half of an f32.
fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

fn f32_block(block: &[u8], out: &mut [f32]) {
    plain(GgmlType::F32, block, out)
}

fn f16_block(block: &[u8], out: &mut [f32]) {
    plain(GgmlType::F16, block, out)
}

fn bf16_block(block: &[u8], out: &mut [f32]) {
    plain(GgmlType::Bf16, block, out)
}

/// Q8_0, 34 bytes → 32 weights: `f16 d; i8 q[32]`; `w = q * d`.
fn q8_0_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

/// Q4_0, 18 bytes → 32 weights: `f16 d; u8 qs[16]`; weight j < 16 is the low nibble of `qs[j]`,
/// weight j + 16 the high nibble; `w = d * (q - 8)`.
fn q4_0_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let qs = &block[2..18];
    for j in 0..16 {
        out[j] = d * f32::from((qs[j] & 0x0F) as i8 - 8);
        out[j + 16] = d * f32::from((qs[j] >> 4) as i8 - 8);
    }
}

/// Q4_1, 20 bytes → 32 weights: `f16 d; f16 m; u8 qs[16]`, nibbles as in Q4_0; `w = d * q + m`.
fn q4_1_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qs = &block[4..20];
    for j in 0..16 {
        out[j] = d * f32::from(qs[j] & 0x0F) + m;
        out[j + 16] = d * f32::from(qs[j] >> 4) + m;
    }
}

/// The 32 five-bit values of a Q5_0 / Q5_1 block: low nibbles as in Q4_0, and bit j of the
/// little-endian `u32 qh` as bit 4 of weight j.
fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; 32];
    for j in 0..16 {
        let bit = |k: usize| (((high >> k) & 1) as u8) << 4;
        q[j] = (qs[j] & 0x0F) | bit(j);
        q[j + 16] = (qs[j] >> 4) | bit(j + 16);
    }
    q
}

/// Q5_0, 22 bytes → 32 weights: `f16 d; u32 qh; u8 qs[16]`; `w = d * (q - 16)`.
fn q5_0_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, q) in out.iter_mut().zip(q5_values(&block[2..6], &block[6..22])) {
        *o = d * f32::from(q as i8 - 16);
    }
}

/// Q5_1, 24 bytes → 32 weights: `f16 d; f16 m; u32 qh; u8 qs[16]`; `w = d * q + m`.
fn q5_1_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    for (o, q) in out.iter_mut().zip(q5_values(&block[4..8], &block[8..24])) {
        *o = d * f32::from(q) + m;
    }
}

/// The 8 six-bit sub-block scales and minimums packed into Q4_K's 12 scale bytes.
///
/// Bytes 0–3 hold scales 0–3 (low 6 bits) and the top 2 bits of scales 4–7; bytes 4–7 the same for
/// minimums; bytes 8–11 the low 4 bits of scales 4–7 (low nibble) and minimums 4–7 (high nibble).
fn q4_k_scales_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for i in 0..4 {
        sc[i] = packed[i] & 0x3F;
        mn[i] = packed[4 + i] & 0x3F;
        sc[4 + i] = (packed[8 + i] & 0x0F) | ((packed[i] >> 2) & 0x30);
        mn[4 + i] = (packed[8 + i] >> 4) | ((packed[4 + i] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Q4_K, 144 bytes → 256 weights: `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]`. Eight sub-blocks
/// of 32; sub-block `2c` takes the low nibbles of `qs[32c..32c+32]`, `2c+1` the high nibbles;
/// `w = (d * sc) * q - dmin * m`.
fn q4_k_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let (sc, mn) = q4_k_scales_mins(&block[4..16]);
    let qs = &block[16..144];
    for chunk in 0..4 {
        for (half, shift) in [(0usize, 0u8), (1, 4)] {
            let sub = 2 * chunk + half;
            let scale = d * f32::from(sc[sub]);
            let min = dmin * f32::from(mn[sub]);
            let out = &mut out[32 * sub..32 * sub + 32];
            for (o, &q) in out.iter_mut().zip(&qs[32 * chunk..32 * chunk + 32]) {
                *o = scale * f32::from((q >> shift) & 0x0F) - min;
            }
        }
    }
}

/// Q5_K, 176 bytes → 256 weights: `f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]`.
/// Q4_K's layout plus a fifth bit: weight l of sub-block `s` takes bit `s` of `qh[l]`.
fn q5_k_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let (sc, mn) = q4_k_scales_mins(&block[4..16]);
    let qh = &block[16..48];
    let qs = &block[48..176];
    for chunk in 0..4 {
        for (half, shift) in [(0usize, 0u8), (1, 4)] {
            let sub = 2 * chunk + half;
            let scale = d * f32::from(sc[sub]);
            let min = dmin * f32::from(mn[sub]);
            let out = &mut out[32 * sub..32 * sub + 32];
            let low = &qs[32 * chunk..32 * chunk + 32];
            for ((o, &q), &h) in out.iter_mut().zip(low).zip(qh) {
                let q = ((q >> shift) & 0x0F) | (((h >> sub) & 1) << 4);
                *o = scale * f32::from(q) - min;
            }
        }
    }
}

/// Q6_K, 210 bytes → 256 weights: `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d`. Each half of
/// 128 weights uses 64 `ql` bytes (low 4 bits; weights r < 64 from low nibbles, r ≥ 64 from high)
/// and 32 `qh` bytes (2 high bits each; weight r from bits `2*(r/32)`); `w = (d * scale) * (q - 32)`
/// with one scale per 16 weights.
fn q6_k_block(block: &[u8], out: &mut [f32]) {
    let ql = &block[0..128];
    let qh = &block[128..192];
    let scales = &block[192..208];
    let d = f16_at(block, 208);
    for half in 0..2 {
        for r in 0..128 {
            let low = (ql[64 * half + r % 64] >> (4 * (r / 64))) & 0x0F;
            let high = (qh[32 * half + r % 32] >> (2 * (r / 32))) & 0x03;
            let q = (low | (high << 4)) as i8 - 32;
            let p = 128 * half + r;
            let scale = d * f32::from(scales[p / 16] as i8);
            out[p] = scale * f32::from(q);
        }
    }
    debug_assert_eq!(out.len(), QK_K);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn every_type_id_round_trips_and_block_sizes_divide() {
        for &(ty, id, name, block_size, type_size) in &LAYOUTS {
            assert_eq!(GgmlType::from_id(id), Some(ty), "{name}");
            assert_eq!(ty.name(), name);
            assert!(block_size >= 1 && type_size >= 1);
        }
        assert_eq!(GgmlType::from_id(4), None, "Q4_2 was removed from ggml");
        assert_eq!(GgmlType::from_id(9999), None);
    }

    #[test]
    fn plain_floats_decode_exactly() {
        let bytes: Vec<u8> = [1.5f32, -2.0, 0.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            dequantize(GgmlType::F32, &bytes).unwrap(),
            vec![1.5, -2.0, 0.0]
        );
        let half: Vec<u8> = [0.5f32, -3.0].iter().flat_map(|&x| f16_bytes(x)).collect();
        assert_eq!(dequantize(GgmlType::F16, &half).unwrap(), vec![0.5, -3.0]);
        // bf16 0x3FC0 is 1.5: sign 0, exponent 127, mantissa .1
        assert_eq!(
            dequantize(GgmlType::Bf16, &[0xC0, 0x3F]).unwrap(),
            vec![1.5]
        );
    }

    #[test]
    fn q8_0_is_scale_times_signed_byte() {
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let w = dequantize(GgmlType::Q8_0, &block).unwrap();
        assert_eq!(w[0], -8.0);
        assert_eq!(w[16], 0.0);
        assert_eq!(w[31], 7.5);
    }

    #[test]
    fn q4_0_puts_low_nibbles_first_and_centres_on_eight() {
        let mut block = f16_bytes(2.0).to_vec();
        // qs[0] = 0xF0: weight 0 is nibble 0 → (0-8)*2 = -16, weight 16 is nibble 15 → 14.
        block.extend([0xF0u8].iter().chain([0x88u8; 15].iter()));
        let w = dequantize(GgmlType::Q4_0, &block).unwrap();
        assert_eq!((w[0], w[16]), (-16.0, 14.0));
        assert_eq!((w[1], w[17]), (0.0, 0.0));
    }

    #[test]
    fn q4_1_adds_the_block_minimum() {
        let mut block = f16_bytes(0.25).to_vec();
        block.extend(f16_bytes(-1.0));
        block.extend([0x31u8; 16]);
        let w = dequantize(GgmlType::Q4_1, &block).unwrap();
        assert_eq!(w[0], 0.25 * 1.0 - 1.0);
        assert_eq!(w[16], 0.25 * 3.0 - 1.0);
    }

    #[test]
    fn q5_0_takes_bit_j_of_qh_as_the_fifth_bit_of_weight_j() {
        let mut block = f16_bytes(0.5).to_vec();
        // qh bits 0 and 16 set: weights 0 and 16 get +16.
        block.extend(0x0001_0001u32.to_le_bytes());
        block.extend([0x21u8; 16]); // low nibble 1, high nibble 2
        let w = dequantize(GgmlType::Q5_0, &block).unwrap();
        assert_eq!((w[0], w[1]), (0.5 * (17.0 - 16.0), 0.5 * (1.0 - 16.0)));
        assert_eq!((w[16], w[17]), (0.5 * (18.0 - 16.0), 0.5 * (2.0 - 16.0)));
    }

    #[test]
    fn q5_1_adds_the_block_minimum_to_five_bit_values() {
        let mut block = f16_bytes(0.25).to_vec();
        block.extend(f16_bytes(-1.0));
        block.extend(0x8000_0000u32.to_le_bytes()); // bit 31: weight 31
        block.extend([0x00u8; 15].iter().chain([0x30u8].iter()));
        let w = dequantize(GgmlType::Q5_1, &block).unwrap();
        assert_eq!(w[0], -1.0);
        assert_eq!(w[31], 0.25 * 19.0 - 1.0);
    }

    #[test]
    fn q5_k_adds_bit_s_of_qh_to_sub_block_s() {
        let mut block = f16_bytes(1.0).to_vec();
        block.extend(f16_bytes(0.5));
        block.extend([1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0]); // scales 1..4, mins 5..8
        let mut qh = [0u8; 32];
        qh[0] = 0b0000_0011; // weight 0 of sub-blocks 0 and 1
        block.extend(qh);
        let mut qs = [0u8; 128];
        qs[0] = 0x73;
        block.extend(qs);
        let w = dequantize(GgmlType::Q5K, &block).unwrap();
        assert_eq!(w[0], 1.0 * 19.0 - 0.5 * 5.0);
        assert_eq!(w[32], 2.0 * 23.0 - 0.5 * 6.0);
        assert_eq!(w[1], -0.5 * 5.0);
    }

    #[test]
    fn q4_k_unpacks_six_bit_scales_and_mins() {
        // Scale 4 = low nibble of byte 8 (0x5) | top bits of byte 0 (0b01 → 0x10) = 0x15 = 21.
        // Min 4 = high nibble of byte 8 (0xA) | top bits of byte 4 (0b10 → 0x20) = 0x2A = 42.
        let packed = [0x41, 2, 3, 4, 0x85, 6, 7, 8, 0xA5, 0, 0, 0];
        let (sc, mn) = q4_k_scales_mins(&packed);
        assert_eq!(sc, [1, 2, 3, 4, 21, 0, 0, 0]);
        assert_eq!(mn, [5, 6, 7, 8, 42, 0, 0, 0]);
        let mut block = f16_bytes(1.0).to_vec();
        block.extend(f16_bytes(0.5));
        block.extend(packed);
        let mut qs = [0u8; 128];
        qs[0] = 0x73; // sub-block 0 weight 0: q = 3; sub-block 1 weight 0: q = 7
        qs[64] = 0x02; // sub-block 4 weight 0: q = 2
        block.extend(qs);
        let w = dequantize(GgmlType::Q4K, &block).unwrap();
        assert_eq!(w[0], 1.0 * 3.0 - 0.5 * 5.0);
        assert_eq!(w[32], 2.0 * 7.0 - 0.5 * 6.0);
        assert_eq!(w[128], 21.0 * 2.0 - 0.5 * 42.0);
    }

    #[test]
    fn q6_k_combines_low_and_high_bits() {
        let mut block = vec![0u8; 210];
        block[0] = 0x21; // ql[0]: weight 0 low bits 1, weight 64 low bits 2
        block[128] = 0b1110_0111; // qh[0]: weight 0 high 3, 32 high 1, 64 high 2, 96 high 3
        for s in 0..16 {
            block[192 + s] = (s as i8 - 8) as u8;
        }
        block[208..210].copy_from_slice(&f16_bytes(0.5));
        let w = dequantize(GgmlType::Q6K, &block).unwrap();
        // weight 0: q = 1 | 3<<4 = 49 → 49-32 = 17, scale index 0 → -8
        assert_eq!(w[0], 0.5 * -8.0 * 17.0);
        // weight 32: q = 0 | 1<<4 = 16 → -16, scale index 2 → -6
        assert_eq!(w[32], 0.5 * -6.0 * -16.0);
        // weight 64: q = 2 | 2<<4 = 34 → 2, scale index 4 → -4
        assert_eq!(w[64], 0.5 * -4.0 * 2.0);
        // weight 128 (second half, all zero bits): q = -32, scale index 8 → 0
        assert_eq!(w[128], 0.0);
        assert_eq!(w[255], 0.5 * 7.0 * -32.0);
    }

    #[test]
    fn unsupported_types_return_none() {
        assert!(dequantize(GgmlType::Q3K, &[0u8; 110]).is_none());
        assert!(!GgmlType::Iq2Xxs.is_supported());
    }
}
