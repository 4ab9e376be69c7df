//! A sink that keeps every capture in memory, for tests, fixtures and small dumps.

use std::collections::BTreeMap;

use tch::{Device, Tensor};

use super::{CapturePoint, CaptureSink, LayerCapture};

/// Captured tensors of one layer at one point, concatenated over batches along dim 0 (on the CPU).
#[derive(Default)]
pub struct RecordedLayer {
    pub queries: Vec<Tensor>,
    pub keys: Vec<Tensor>,
    pub values: Vec<Tensor>,
    pub attention: Vec<Tensor>,
}

/// Records all layers at the chosen points.
pub struct Recorder {
    points: Vec<CapturePoint>,
    attention: bool,
    pub layers: BTreeMap<(i64, CapturePoint), RecordedLayer>,
}

impl Recorder {
    pub fn new(points: &[CapturePoint], attention: bool) -> Self {
        Recorder {
            points: points.to_vec(),
            attention,
            layers: BTreeMap::new(),
        }
    }

    /// Queries, keys and values of `layer` at `point`, batches concatenated.
    pub fn get(&self, layer: i64, point: CapturePoint) -> Option<(Tensor, Tensor, Tensor)> {
        let r = self.layers.get(&(layer, point))?;
        Some((
            Tensor::cat(&r.queries, 0),
            Tensor::cat(&r.keys, 0),
            Tensor::cat(&r.values, 0),
        ))
    }
}

impl CaptureSink for Recorder {
    fn points(&self, _layer: i64) -> Vec<CapturePoint> {
        self.points.clone()
    }

    fn wants_attention(&self, _layer: i64) -> bool {
        self.attention
    }

    fn capture(&mut self, c: &LayerCapture) -> anyhow::Result<()> {
        let entry = self.layers.entry((c.layer, c.point)).or_default();
        let cpu = |t: &Tensor| t.to_device(Device::Cpu).to_kind(tch::Kind::Float);
        entry.queries.push(cpu(c.queries));
        entry.keys.push(cpu(c.keys));
        entry.values.push(cpu(c.values));
        if let Some(a) = c.attention {
            entry.attention.push(cpu(a));
        }
        Ok(())
    }
}
