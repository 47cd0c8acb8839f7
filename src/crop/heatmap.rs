//! Heatmaps and boxes (SPEC A.1–A.2): channel sum of the last-stage features, per-image
//! min-max at feature resolution, bilinear upsampling (align_corners = False) to the eval
//! input size, strict `> k`, rectangular closure; box = [y0/H, x0/W, y1/H, x1/W] with the
//! reference's last-index convention (a full box is (0, 0, 31/32, 31/32) at 32×32). A
//! constant map, or one with nothing above k, is invalid: the box is the whole image and
//! `valid` is 0, so the caller keeps that image's previous box (SPEC D.2).
//!
//! GPU vs CPU: the channel sums differ by rounding, so a pixel within ~1e-6 of k can flip;
//! tests compare on maps without such ties.

use crate::error::{Error, Result};
use crate::gpu::{grid_1d, Kernel};
use crate::ops::{cpu, u, Real};
use crate::tensor::{Device, Tensor};

pub(crate) const CHANNEL_SUM: Kernel = Kernel::new("heatmap_box", "channel_sum");
const BOX: Kernel = Kernel::new("heatmap_box", "box_from_heat");

/// Largest feature map (h·w) the GPU kernel takes.
pub const MAX_CELLS: usize = 256;

/// Channel sum, min-max normalised per image: [N, h·w] (`None` for a constant map).
pub fn normalized_heat_ref<T: Real>(
    features: &[T],
    n: usize,
    c: usize,
    hw: usize,
) -> Vec<Option<Vec<T>>> {
    (0..n)
        .map(|i| {
            let heat: Vec<T> = (0..hw)
                .map(|j| (0..c).map(|ch| features[(i * c + ch) * hw + j]).sum())
                .collect();
            let lo = heat.iter().copied().fold(T::infinity(), T::min);
            let hi = heat.iter().copied().fold(T::neg_infinity(), T::max);
            let range = hi - lo;
            (range > T::zero()).then(|| heat.iter().map(|&v| (v - lo) / range).collect())
        })
        .collect()
}

fn axis<T: Real>(dst: usize, n_in: usize, n_out: usize) -> (usize, usize, T) {
    let s = ((T::of(dst as f64) + T::of(0.5)) * (T::of(n_in as f64) / T::of(n_out as f64))
        - T::of(0.5))
    .max(T::zero());
    let i0 = s.floor().to64() as usize;
    (i0, (i0 + 1).min(n_in - 1), s - T::of(i0 as f64))
}

/// Bilinear upsampling of one [h, w] map to [out_h, out_w] (align_corners = False).
pub fn upsample_ref<T: Real>(m: &[T], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<T> {
    let mut out = vec![T::zero(); out_h * out_w];
    for y in 0..out_h {
        let (y0, y1, wy) = axis::<T>(y, h, out_h);
        for x in 0..out_w {
            let (x0, x1, wx) = axis::<T>(x, w, out_w);
            let top = (T::one() - wx) * m[y0 * w + x0] + wx * m[y0 * w + x1];
            let bottom = (T::one() - wx) * m[y1 * w + x0] + wx * m[y1 * w + x1];
            out[y * out_w + x] = (T::one() - wy) * top + wy * bottom;
        }
    }
    out
}

/// Box of one upsampled map at threshold k, or `None`.
pub fn box_ref<T: Real>(up: &[T], out_h: usize, out_w: usize, k: T) -> Option<[f64; 4]> {
    let (mut y0, mut y1, mut x0, mut x1) = (usize::MAX, 0, usize::MAX, 0);
    for y in 0..out_h {
        for x in 0..out_w {
            if up[y * out_w + x] > k {
                y0 = y0.min(y);
                y1 = y1.max(y);
                x0 = x0.min(x);
                x1 = x1.max(x);
            }
        }
    }
    (y0 != usize::MAX).then(|| {
        [
            y0 as f64 / out_h as f64,
            x0 as f64 / out_w as f64,
            y1 as f64 / out_h as f64,
            x1 as f64 / out_w as f64,
        ]
    })
}

/// Boxes [N, 4] and validity [N] (1 or 0) from features [N, C, h, w] at eval size out_hw.
pub fn boxes(features: &Tensor, out_hw: (usize, usize), k: f32) -> Result<(Tensor, Tensor)> {
    let &[n, c, h, w] = features.shape() else {
        return Err(Error::shape(
            "heatmap_box",
            format!("expects features [N, C, h, w], got {:?}", features.shape()),
        ));
    };
    if !(k > 0.0 && k < 1.0) {
        return Err(Error::Config {
            field: "crop.box_thresh".into(),
            msg: format!("{k} is outside (0, 1)"),
        });
    }
    if h * w > MAX_CELLS || out_hw.0 == 0 || out_hw.1 == 0 {
        return Err(Error::shape(
            "heatmap_box",
            format!(
                "feature map {h}x{w} (at most {MAX_CELLS} cells) to {}x{}",
                out_hw.0, out_hw.1
            ),
        ));
    }
    match features.device() {
        Device::Cpu => {
            let heat = normalized_heat_ref(features.cpu_data().unwrap_or_default(), n, c, h * w);
            let (mut b, mut v) = (Vec::with_capacity(n * 4), Vec::with_capacity(n));
            for m in heat {
                let bx = m.and_then(|m| {
                    box_ref(
                        &upsample_ref(&m, h, w, out_hw.0, out_hw.1),
                        out_hw.0,
                        out_hw.1,
                        k,
                    )
                });
                v.push(bx.is_some() as u8 as f32);
                b.extend(bx.unwrap_or([0.0, 0.0, 1.0, 1.0]).iter().map(|&x| x as f32));
            }
            Ok((cpu(b, &[n, 4]), cpu(v, &[n])))
        }
        Device::Gpu(g) => {
            let p = [
                u(n),
                u(c),
                u(h),
                u(w),
                u(out_hw.0),
                u(out_hw.1),
                k.to_bits(),
                0,
            ];
            let heat = g.alloc(n * h * w);
            let fb = features.gpu_buffer().expect("gpu").1;
            // channel_sum uses src and out only; out_valid is bound by box_from_heat.
            g.dispatch(CHANNEL_SUM, &[], &[fb, &heat], &p, grid_1d(n * h * w, 64));
            let (b, v) = (g.alloc(n * 4), g.alloc(n));
            g.dispatch(BOX, &[], &[&heat, &b, &v], &p, grid_1d(n, 64));
            Ok((
                Tensor::from_gpu(&g, b, &[n, 4]),
                Tensor::from_gpu(&g, v, &[n]),
            ))
        }
    }
}
