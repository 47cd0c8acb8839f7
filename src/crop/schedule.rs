//! ContrastiveCrop's schedule (SPEC A.0, C.3) and the box update pass.
//!
//! Epochs are 1-based. Views use plain RandomResizedCrop while `epoch ≤ warmup_epochs` and
//! ContrastiveCrop from `warmup_epochs + 1`; boxes are recomputed *after* epoch e when
//! e ≥ warmup, e ≠ E and e % loc_interval == 0 (never after the last epoch).

use serde::Serialize;

use super::heatmap;
use super::sampler::BoxF;
use crate::autograd::Tape;
use crate::data::ImageSet;
use crate::error::Result;
use crate::ssl::{feature_map, Method};
use crate::tensor::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub epochs: usize,
    pub warmup_epochs: usize,
    pub loc_interval: usize,
}

impl Schedule {
    pub fn use_box(&self, epoch: usize) -> bool {
        epoch > self.warmup_epochs
    }
    pub fn update_after(&self, epoch: usize) -> bool {
        epoch >= self.warmup_epochs
            && epoch != self.epochs
            && self.loc_interval > 0
            && epoch.is_multiple_of(self.loc_interval)
    }
}

/// Statistics logged at every box update.
#[derive(Clone, Debug, Serialize)]
pub struct BoxStats {
    pub epoch: usize,
    /// Mean box area as a fraction of the image ((bottom − top)·(right − left)).
    pub box_mean_area: f64,
    /// Share of boxes covering more than 90 % of the image.
    pub box_near_full: f64,
    /// Images whose map was constant (previous box kept).
    pub box_fallbacks: usize,
    /// Object proposals per image (objectcrop's proposal refreshes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposals_mean: Option<f64>,
}

impl BoxStats {
    fn of(epoch: usize, boxes: &[BoxF], fallbacks: usize, proposals_mean: Option<f64>) -> Self {
        let areas: Vec<f64> = boxes
            .iter()
            .map(|b| ((b[2] - b[0]) * (b[3] - b[1])) as f64)
            .collect();
        let n = areas.len().max(1) as f64;
        BoxStats {
            epoch,
            box_mean_area: areas.iter().sum::<f64>() / n,
            box_near_full: areas.iter().filter(|&&a| a > 0.9).count() as f64 / n,
            box_fallbacks: fallbacks,
            proposals_mean,
        }
    }
}

/// Settings of a box pass: the eval transform's normalisation, the threshold k and the batch.
#[derive(Clone, Copy, Debug)]
pub struct BoxPass {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub k: f32,
    pub batch: usize,
}

/// Last-stage feature maps of this rank's share of the images (all of them for one rank) in
/// dataset order, `batch` at a time, with the method's online backbone in eval mode on the
/// eval transform (normalisation only): `each(first index, features)`.
fn feature_pass(
    method: &mut dyn Method,
    data: &ImageSet,
    pass: &BoxPass,
    device: &Device,
    mut each: impl FnMut(usize, &crate::tensor::Tensor) -> Result<()>,
) -> Result<()> {
    let range = crate::dist::shard(data.len());
    for start in range.clone().step_by(pass.batch.max(1)) {
        let end = (start + pass.batch).min(range.end);
        let mut tape = Tape::new();
        let xv = tape.input(data.eval_batch(start..end, pass.mean, pass.std, device)?);
        let fm = feature_map(method, &mut tape, xv)?;
        each(start, tape.value(fm))?;
    }
    Ok(())
}

/// Recompute every image's box (SPEC A.1–A.2). Only boxes are read back.
pub fn update_boxes(
    method: &mut dyn Method,
    data: &ImageSet,
    boxes: &mut [BoxF],
    pass: &BoxPass,
    device: &Device,
    epoch: usize,
) -> Result<BoxStats> {
    let (h, w) = (data.height, data.width);
    // Rows [valid, box] of this rank's share, gathered into dataset order.
    let mut rows = Vec::new();
    feature_pass(method, data, pass, device, |_, fm| {
        let (b, v) = heatmap::boxes(fm, (h, w), pass.k)?;
        let (b, v) = (b.to_vec()?, v.to_vec()?);
        for (j, valid) in v.iter().enumerate() {
            rows.push(*valid);
            rows.extend_from_slice(&b[4 * j..4 * j + 4]);
        }
        Ok(())
    })?;
    let rows = crate::dist::gather_shards(&rows, 5, data.len());
    let mut fallbacks = 0;
    for (bx, r) in boxes.iter_mut().zip(rows.chunks(5)) {
        if r[0] > 0.5 {
            *bx = [r[1], r[2], r[3], r[4]];
        } else {
            fallbacks += 1;
        }
    }
    Ok(BoxStats::of(epoch, boxes, fallbacks, None))
}

/// Recompute every image's object proposals (at most `max`; an image without any keeps its
/// previous ones). The statistics are over all proposals.
pub fn update_proposals(
    method: &mut dyn Method,
    data: &ImageSet,
    proposals: &mut [Vec<BoxF>],
    pass: &BoxPass,
    max: usize,
    device: &Device,
    epoch: usize,
) -> Result<BoxStats> {
    let (h, w) = (data.height, data.width);
    // Rows [count (−1: none above k), max boxes] of this rank's share, gathered into dataset
    // order.
    let row = 1 + 4 * max;
    let mut rows = Vec::new();
    feature_pass(method, data, pass, device, |_, fm| {
        for p in super::proposals::proposals(fm, (h, w), pass.k, max)? {
            let start = rows.len();
            rows.resize(start + row, 0.0);
            match p {
                Some(p) => {
                    rows[start] = p.len() as f32;
                    for (k, b) in p.iter().take(max).enumerate() {
                        rows[start + 1 + 4 * k..start + 5 + 4 * k].copy_from_slice(b);
                    }
                }
                None => rows[start] = -1.0,
            }
        }
        Ok(())
    })?;
    let rows = crate::dist::gather_shards(&rows, row, data.len());
    let mut fallbacks = 0;
    for (p, r) in proposals.iter_mut().zip(rows.chunks(row)) {
        if r[0] < 0.0 {
            fallbacks += 1;
        } else {
            *p = (0..r[0] as usize)
                .map(|k| [r[1 + 4 * k], r[2 + 4 * k], r[3 + 4 * k], r[4 + 4 * k]])
                .collect();
        }
    }
    let all: Vec<BoxF> = proposals.iter().flatten().copied().collect();
    let mean = all.len() as f64 / proposals.len().max(1) as f64;
    Ok(BoxStats::of(epoch, &all, fallbacks, Some(mean)))
}
