//! Integer KV-cache quantization as KIVI (Liu et al. 2024) lays it out: asymmetric min–max codes of
//! 8, 4 or 2 bits, keys grouped per channel over `group` consecutive tokens, values grouped per
//! token over `group` consecutive channels; each group keeps an f16 scale and minimum. Codes are
//! packed `8 / bits` to a byte, so the buffers hold what the format claims.
//!
//! Keys are quantized a whole group of tokens at a time; the tokens of the group not yet complete
//! stay in full precision (KIVI's residual), and are counted at their full size.

use tch::{Kind, Tensor};

use crate::model::kv_cache::{element_bytes, GrowingBuffer};

/// The code widths the format supports.
pub const QUANT_BITS: [u8; 3] = [8, 4, 2];

/// Bytes of one stored scale or minimum (f16, as KIVI).
const SCALE_BYTES: i64 = 2;

/// How a group is laid out: along tokens for each channel (keys) or along channels of one token
/// (values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupAxis {
    PerChannel,
    PerToken,
}

/// One kind's quantization: code width, group size and grouping axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct QuantFormat {
    pub bits: u8,
    pub group: i64,
    pub axis: GroupAxis,
}

impl QuantFormat {
    /// Codes per byte.
    fn per_byte(&self) -> i64 {
        8 / self.bits as i64
    }

    /// Largest code, `2^bits − 1`.
    fn levels(&self) -> f64 {
        ((1u32 << self.bits) - 1) as f64
    }

    /// Bytes a cache of this format holds for `tokens` positions of rows `width` wide (one
    /// sequence), residual rows counted at `element_bytes` each: the closed form the tests check
    /// the buffers against.
    pub fn bytes(&self, tokens: i64, width: i64, element_bytes: i64) -> i64 {
        let codes_per_row = width / self.per_byte();
        match self.axis {
            GroupAxis::PerToken => {
                tokens * (codes_per_row + 2 * SCALE_BYTES * (width / self.group))
            }
            GroupAxis::PerChannel => {
                let (groups, residual) = (tokens / self.group, tokens % self.group);
                groups * (self.group * codes_per_row + 2 * SCALE_BYTES * width)
                    + residual * width * element_bytes
            }
        }
    }

    /// Why rows `width` wide cannot take this format (`None`: they can).
    pub fn unfit_for(&self, width: i64) -> Option<String> {
        if width % self.per_byte() != 0 {
            return Some(format!(
                "rows of {width} values do not pack {} codes to a byte",
                self.per_byte()
            ));
        }
        if self.axis == GroupAxis::PerToken && width % self.group != 0 {
            return Some(format!(
                "a group of {} channels does not divide rows of {width} values",
                self.group
            ));
        }
        None
    }
}

/// Quantized groups: packed codes and f16 scales and minimums.
struct Codes {
    packed: Tensor,
    scales: Tensor,
    minimums: Tensor,
}

/// Min–max codes of `x` over groups along `dim` (size kept), as f16 scale/minimum and packed
/// codes along the last dim.
fn quantize_groups(x: &Tensor, dim: i64, format: &QuantFormat) -> Codes {
    let x = x.to_kind(Kind::Float);
    let minimums = x.amin(dim, true).to_kind(Kind::Half);
    let maximums = x.amax(dim, true).to_kind(Kind::Half);
    // A constant group has scale 0; any positive scale gives it code 0 and decodes exactly.
    let scales = ((maximums.to_kind(Kind::Float) - minimums.to_kind(Kind::Float))
        / format.levels())
    .clamp_min(f64::from(f32::MIN_POSITIVE))
    .to_kind(Kind::Half);
    let codes = ((&x - minimums.to_kind(Kind::Float)) / scales.to_kind(Kind::Float))
        .round()
        .clamp(0.0, format.levels())
        .to_kind(Kind::Int);
    Codes {
        packed: pack(&codes, format),
        scales: scales.squeeze_dim(dim),
        minimums: minimums.squeeze_dim(dim),
    }
}

/// Int codes `[…, n]` → uint8 `[…, n / per_byte]`, code `k` of a byte in bits `k·bits..`.
fn pack(codes: &Tensor, format: &QuantFormat) -> Tensor {
    let mut size = codes.size();
    let n = size.pop().expect("codes have a last dim");
    let per_byte = format.per_byte();
    size.extend([n / per_byte, per_byte]);
    let shifts: Vec<i32> = (0..per_byte)
        .map(|k| (k * format.bits as i64) as i32)
        .collect();
    let shifts = Tensor::from_slice(&shifts).to_device(codes.device());
    codes
        .view(size.as_slice())
        .bitwise_left_shift(&shifts)
        .sum_dim_intlist(-1, false, Kind::Int)
        .to_kind(Kind::Uint8)
}

/// Inverse of [`pack`]: uint8 `[…, m]` → float codes `[…, m · per_byte]`.
fn unpack(packed: &Tensor, format: &QuantFormat) -> Tensor {
    let per_byte = format.per_byte();
    let shifts: Vec<i32> = (0..per_byte)
        .map(|k| (k * format.bits as i64) as i32)
        .collect();
    let shifts = Tensor::from_slice(&shifts).to_device(packed.device());
    let mut size = packed.size();
    let m = size.pop().expect("packed codes have a last dim");
    size.push(m * per_byte);
    packed
        .to_kind(Kind::Int)
        .unsqueeze(-1)
        .bitwise_right_shift(&shifts)
        .bitwise_and(format.levels() as i64)
        .to_kind(Kind::Float)
        .view(size.as_slice())
}

/// Token-major rows `[batch, len, width]` held as quantized codes (plus, per channel, the
/// full-precision residual of the group not yet complete). Reads dequantize every row.
pub struct QuantBuffer {
    format: QuantFormat,
    /// Per token: `[batch, cap, width/per_byte]`; per channel: `[batch, cap_groups, group,
    /// width/per_byte]`.
    packed: GrowingBuffer,
    /// Per token: `[batch, cap, width/group]`; per channel: `[batch, cap_groups, width]`.
    scales: GrowingBuffer,
    minimums: GrowingBuffer,
    /// Per channel only: the rows of the incomplete group, `[batch, < group, width]`.
    residual: Option<Tensor>,
    /// Complete units (tokens per token, groups per channel) in the buffers.
    units: i64,
}

impl QuantBuffer {
    pub fn new(format: QuantFormat) -> Self {
        QuantBuffer {
            format,
            packed: GrowingBuffer::default(),
            scales: GrowingBuffer::default(),
            minimums: GrowingBuffer::default(),
            residual: None,
            units: 0,
        }
    }

    fn push(&mut self, codes: Codes, added: i64) {
        let _ = self.packed.append(&codes.packed, self.units, 1);
        let _ = self.scales.append(&codes.scales, self.units, 1);
        let _ = self.minimums.append(&codes.minimums, self.units, 1);
        self.units += added;
    }

    /// Appends `new` `[batch, seq, width]` and returns every row held, dequantized, in `new`'s kind.
    pub fn append(&mut self, new: &Tensor) -> Tensor {
        let (b, width) = (new.size()[0], new.size()[2]);
        let f = self.format;
        match f.axis {
            GroupAxis::PerToken => {
                let s = new.size()[1];
                let grouped = new.view([b, s, width / f.group, f.group]);
                let mut codes = quantize_groups(&grouped, 3, &f);
                codes.packed = codes.packed.view([b, s, -1]);
                self.push(codes, s);
            }
            GroupAxis::PerChannel => {
                let rows = match self.residual.take() {
                    Some(r) => Tensor::cat(&[&r, new], 1),
                    None => new.shallow_clone(),
                };
                let n = rows.size()[1];
                let complete = n / f.group;
                if complete > 0 {
                    let grouped = rows
                        .narrow(1, 0, complete * f.group)
                        .view([b, complete, f.group, width]);
                    self.push(quantize_groups(&grouped, 2, &f), complete);
                }
                let left = n - complete * f.group;
                self.residual = (left > 0).then(|| rows.narrow(1, complete * f.group, left));
            }
        }
        self.read(b, width, new.kind())
    }

    /// Every row, dequantized: `[batch, len, width]` in `kind`.
    fn read(&self, b: i64, width: i64, kind: Kind) -> Tensor {
        let f = self.format;
        let units = self.units;
        let float = |buffer: &GrowingBuffer| buffer.filled(units).map(|t| t.to_kind(Kind::Float));
        let decoded = match (
            self.packed.filled(units),
            float(&self.scales),
            float(&self.minimums),
        ) {
            (Some(packed), Some(scales), Some(minimums)) => {
                let codes = unpack(&packed, &f);
                Some(match f.axis {
                    GroupAxis::PerToken => {
                        let grouped = codes.view([b, units, width / f.group, f.group]);
                        (grouped * scales.unsqueeze(3) + minimums.unsqueeze(3))
                            .view([b, units, width])
                    }
                    GroupAxis::PerChannel => (codes * scales.unsqueeze(2) + minimums.unsqueeze(2))
                        .view([b, units * f.group, width]),
                })
            }
            _ => None,
        };
        let decoded = decoded.map(|t| t.to_kind(kind));
        match (decoded, &self.residual) {
            (Some(d), Some(r)) => Tensor::cat(&[&d, r], 1),
            (Some(d), None) => d,
            (None, Some(r)) => r.shallow_clone(),
            (None, None) => unreachable!("append adds at least one row before a read"),
        }
    }

    /// Bytes held: codes, scales, minimums and the residual rows.
    pub fn bytes(&self) -> i64 {
        let residual = self
            .residual
            .as_ref()
            .map_or(0, |r| r.numel() as i64 * element_bytes(r.kind()));
        self.packed.bytes(self.units)
            + self.scales.bytes(self.units)
            + self.minimums.bytes(self.units)
            + residual
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn format(bits: u8, group: i64, axis: GroupAxis) -> QuantFormat {
        QuantFormat { bits, group, axis }
    }

    #[test]
    fn packing_round_trips_every_code() {
        for bits in QUANT_BITS {
            let f = format(bits, 4, GroupAxis::PerToken);
            let codes = Tensor::arange(1 << bits, (Kind::Int, Device::Cpu)).repeat([3, 2]);
            let packed = pack(&codes, &f);
            assert_eq!(packed.size(), [3, 2 * (1 << bits) / f.per_byte()]);
            assert_eq!(packed.kind(), Kind::Uint8);
            assert!(unpack(&packed, &f).equal(&codes.to_kind(Kind::Float)));
        }
    }

    /// Min–max codes: each value lies within half a step of its decoded value, and a group's
    /// minimum and maximum decode (to f16 rounding) exactly.
    #[test]
    fn dequantized_values_lie_within_half_a_step() {
        tch::manual_seed(3);
        let x = Tensor::randn([2, 37, 64], (Kind::Float, Device::Cpu)) * 3.0;
        for bits in QUANT_BITS {
            for axis in [GroupAxis::PerToken, GroupAxis::PerChannel] {
                let f = format(bits, 16, axis);
                let mut buffer = QuantBuffer::new(f);
                let mut read = Tensor::zeros([0], (Kind::Float, Device::Cpu));
                for (at, step) in [(0, 5), (5, 1), (6, 20), (26, 11)] {
                    read = buffer.append(&x.narrow(1, at, step));
                }
                assert_eq!(read.size(), x.size());
                // The widest group spans under 6σ·3 ≈ 20; a step is that over the levels.
                let step = f64::try_from((x.amax([1, 2], false) - x.amin([1, 2], false)).max())
                    .unwrap()
                    / f.levels();
                let err = f64::try_from((&read - &x).abs().max()).unwrap();
                assert!(
                    err <= 0.5 * step * 1.01 + 1e-2,
                    "{bits} bits {axis:?}: {err}"
                );
                if axis == GroupAxis::PerChannel {
                    // 37 = 2 groups of 16 + 5 residual rows, kept exactly.
                    assert!(read.narrow(1, 32, 5).equal(&x.narrow(1, 32, 5)));
                }
                assert_eq!(buffer.bytes(), 2 * f.bytes(37, 64, 4), "{bits} {axis:?}");
            }
        }
    }

    /// The closed form by hand: 4 bits, groups of 32, 192-wide rows, 100 tokens.
    #[test]
    fn bytes_follow_the_layout() {
        let per_token = format(4, 32, GroupAxis::PerToken);
        assert_eq!(per_token.bytes(100, 192, 4), 100 * (96 + 4 * 6));
        let per_channel = format(4, 32, GroupAxis::PerChannel);
        assert_eq!(
            per_channel.bytes(100, 192, 4),
            3 * (32 * 96 + 4 * 192) + 4 * 192 * 4
        );
        assert!(per_token.unfit_for(48).is_some());
        assert!(per_channel.unfit_for(48).is_none());
        assert!(format(2, 32, GroupAxis::PerChannel).unfit_for(6).is_some());
    }

    #[test]
    fn a_constant_group_decodes_exactly() {
        let x = Tensor::full([1, 32, 8], 1.5, (Kind::Float, Device::Cpu));
        for axis in [GroupAxis::PerToken, GroupAxis::PerChannel] {
            let mut buffer = QuantBuffer::new(format(2, 8, axis));
            assert!(buffer.append(&x).equal(&x));
        }
    }
}
