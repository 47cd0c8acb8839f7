//! Object proposals (SPEC B.2, D.8): the **8-connected components** of `heat > k` (strict) on
//! the same upsampled, min-max-normalised layer-4 heatmap ContrastiveCrop's boxes use (SPEC
//! A.1–A.2), one box per component in the boxes' convention `[y0/H, x0/W, y1/H, x1/W]` (first
//! and last index over the size), ranked by the heat summed over the component (ties: the
//! component met first in raster order), at most `max` per image. A constant map, or one with
//! nothing above k, has no proposals (`None`): the caller keeps the image's previous ones.
//!
//! Proposals can also come from a JSON file: `{"<dataset index>": [[x1, y1, x2, y2], …], …}`
//! in pixels, x2/y2 exclusive (PIL's crop box), stored in the same convention (so
//! `[0, 0, W, H]` is the whole image, `[0, 0, (W−1)/W, (H−1)/H]`).
//!
//! The heatmaps come from the run's device (on a GPU: channel sum, normalisation and
//! upsampling there, one map per image read back); the labelling runs on the CPU.

use std::collections::VecDeque;
use std::path::Path;

use super::heatmap::{normalized_heat_ref, upsample_ref, CHANNEL_SUM, MAX_CELLS};
use super::sampler::BoxF;
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, Kernel};
use crate::ops::{u, Real};
use crate::tensor::{Device, Tensor};

const UPSAMPLED: Kernel = Kernel::new("heatmap_box", "upsampled_heat");

/// The reference's number of proposals per image (BING's top 10).
pub const DEFAULT_MAX_PROPOSALS: usize = 10;

/// One connected component: its box (boxes' convention), summed heat and pixel count.
#[derive(Clone, Debug, PartialEq)]
pub struct Component {
    pub bbox: [f64; 4],
    pub heat: f64,
    pub pixels: usize,
}

/// The 8-connected components of `heat > k` of one `h`×`w` map, ranked by summed heat
/// (descending; ties in raster order of their first pixel), at most `max`.
pub fn components<T: Real>(heat: &[T], h: usize, w: usize, k: T, max: usize) -> Vec<Component> {
    let mut label = vec![usize::MAX; h * w];
    let mut found = Vec::new();
    let mut queue = VecDeque::new();
    for start in 0..h * w {
        if label[start] != usize::MAX || heat[start] <= k {
            continue;
        }
        let id = found.len();
        label[start] = id;
        queue.push_back(start);
        let (mut y0, mut x0, mut y1, mut x1) = (usize::MAX, usize::MAX, 0, 0);
        let (mut sum, mut pixels) = (0.0f64, 0);
        while let Some(p) = queue.pop_front() {
            let (y, x) = (p / w, p % w);
            (y0, y1, x0, x1) = (y0.min(y), y1.max(y), x0.min(x), x1.max(x));
            sum += heat[p].to64();
            pixels += 1;
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let q = ny * w + nx;
                    if label[q] == usize::MAX && heat[q] > k {
                        label[q] = id;
                        queue.push_back(q);
                    }
                }
            }
        }
        found.push(Component {
            bbox: [
                y0 as f64 / h as f64,
                x0 as f64 / w as f64,
                y1 as f64 / h as f64,
                x1 as f64 / w as f64,
            ],
            heat: sum,
            pixels,
        });
    }
    // Stable: equal sums keep raster order.
    found.sort_by(|a, b| b.heat.total_cmp(&a.heat));
    found.truncate(max);
    found
}

/// Upsampled, min-max-normalised heatmaps [H·W] of features [N, C, h, w] (`None`: constant
/// map), computed on the features' device.
pub fn heat_maps(features: &Tensor, out_hw: (usize, usize)) -> Result<Vec<Option<Vec<f32>>>> {
    let &[n, c, h, w] = features.shape() else {
        return Err(Error::shape(
            "heat_maps",
            format!("expects features [N, C, h, w], got {:?}", features.shape()),
        ));
    };
    let (oh, ow) = out_hw;
    if h * w > MAX_CELLS || oh == 0 || ow == 0 {
        return Err(Error::shape(
            "heat_maps",
            format!("feature map {h}x{w} (at most {MAX_CELLS} cells) to {oh}x{ow}"),
        ));
    }
    match features.device() {
        Device::Cpu => {
            Ok(
                normalized_heat_ref(features.cpu_data().unwrap_or_default(), n, c, h * w)
                    .into_iter()
                    .map(|m| m.map(|m| upsample_ref(&m, h, w, oh, ow)))
                    .collect(),
            )
        }
        Device::Gpu(g) => {
            let p = [u(n), u(c), u(h), u(w), u(oh), u(ow), 0, 0];
            let sums = g.alloc(n * h * w);
            let fb = features.gpu_buffer().expect("gpu").1;
            g.dispatch(CHANNEL_SUM, &[], &[fb, &sums], &p, grid_1d(n * h * w, 64));
            let (maps, valid) = (g.alloc(n * oh * ow), g.alloc(n));
            g.dispatch(
                UPSAMPLED,
                &[],
                &[&sums, &maps, &valid],
                &p,
                grid_1d(n * oh * ow, 64),
            );
            let maps = Tensor::from_gpu(&g, maps, &[n, oh * ow]).to_vec()?;
            let valid = Tensor::from_gpu(&g, valid, &[n]).to_vec()?;
            Ok(maps
                .chunks(oh * ow)
                .zip(valid)
                .map(|(m, v)| (v > 0.5).then(|| m.to_vec()))
                .collect())
        }
    }
}

/// Proposals of every image of features [N, C, h, w] at eval size `out_hw` and threshold k
/// (`None`: no component, keep the previous proposals).
pub fn proposals(
    features: &Tensor,
    out_hw: (usize, usize),
    k: f32,
    max: usize,
) -> Result<Vec<Option<Vec<BoxF>>>> {
    if !(k > 0.0 && k < 1.0) {
        return Err(Error::Config {
            field: "crop.box_thresh".into(),
            msg: format!("{k} is outside (0, 1)"),
        });
    }
    Ok(from_maps(&heat_maps(features, out_hw)?, out_hw, k, max))
}

/// Proposals of heatmaps from [`heat_maps`] (`None`: a constant map or no component).
pub fn from_maps(
    maps: &[Option<Vec<f32>>],
    out_hw: (usize, usize),
    k: f32,
    max: usize,
) -> Vec<Option<Vec<BoxF>>> {
    maps.iter()
        .map(|m| {
            let found = components(m.as_ref()?, out_hw.0, out_hw.1, k, max);
            (!found.is_empty()).then(|| found.iter().map(|c| c.bbox.map(|v| v as f32)).collect())
        })
        .collect()
}

/// A pixel box `[x1, y1, x2, y2]` (x2, y2 exclusive) in the boxes' convention.
pub fn from_pixels(b: [usize; 4], hgt: usize, wid: usize) -> BoxF {
    let [x1, y1, x2, y2] = b;
    [
        y1 as f32 / hgt as f32,
        x1 as f32 / wid as f32,
        (y2 - 1) as f32 / hgt as f32,
        (x2 - 1) as f32 / wid as f32,
    ]
}

/// The pixel box `[x1, y1, x2, y2]` (x2, y2 exclusive) of a box in the boxes' convention.
pub fn to_pixels(b: BoxF, hgt: usize, wid: usize) -> [usize; 4] {
    let px = |f: f32, n: usize| ((f as f64 * n as f64).round() as usize).min(n - 1);
    let (y1, x1) = (px(b[0], hgt), px(b[1], wid));
    let (y2, x2) = (px(b[2], hgt).max(y1), px(b[3], wid).max(x1));
    [x1, y1, x2 + 1, y2 + 1]
}

/// Proposals read from a JSON file `{"<index>": [[x1, y1, x2, y2], …]}` for a dataset of `n`
/// images of `hgt`×`wid`; images without an entry get the whole image. Every box must have
/// 0 ≤ x1 < x2 ≤ W and 0 ≤ y1 < y2 ≤ H.
pub fn read_file(path: &Path, n: usize, hgt: usize, wid: usize) -> Result<Vec<Vec<BoxF>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?;
    let bad = |m: String| Error::file(path, m);
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| {
        bad("must be a JSON object {\"<dataset index>\": [[x1, y1, x2, y2], …]}".into())
    })?;
    let mut out = vec![Vec::new(); n];
    for (key, list) in obj {
        let i: usize = key
            .parse()
            .map_err(|_| bad(format!("entry `{key}`: the key must be a dataset index")))?;
        if i >= n {
            return Err(bad(format!(
                "entry `{key}`: index out of range (the dataset has {n} images)"
            )));
        }
        let boxes = list
            .as_array()
            .ok_or_else(|| bad(format!("entry `{key}`: must be a list of [x1, y1, x2, y2]")))?;
        for (j, b) in boxes.iter().enumerate() {
            let c: Option<Vec<i64>> = b
                .as_array()
                .filter(|a| a.len() == 4)
                .and_then(|a| a.iter().map(|x| x.as_f64().map(|f| f as i64)).collect());
            let Some(c) = c else {
                return Err(bad(format!(
                    "entry `{key}`, box {j}: must be four numbers [x1, y1, x2, y2], got {b}"
                )));
            };
            let (x1, y1, x2, y2) = (c[0], c[1], c[2], c[3]);
            if !(0 <= x1 && x1 < x2 && x2 <= wid as i64 && 0 <= y1 && y1 < y2 && y2 <= hgt as i64) {
                return Err(bad(format!(
                    "entry `{key}`, box {j}: [{x1}, {y1}, {x2}, {y2}] is not inside the {wid}x{hgt} image with x1 < x2, y1 < y2"
                )));
            }
            out[i].push(from_pixels(
                [x1 as usize, y1 as usize, x2 as usize, y2 as usize],
                hgt,
                wid,
            ));
        }
    }
    for p in &mut out {
        if p.is_empty() {
            p.push(super::sampler::WHOLE_IMAGE);
        }
    }
    Ok(out)
}
