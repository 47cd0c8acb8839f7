//! Pooling.
//!
//! - max_pool2d(k, s, p): y = window maximum (padding never wins); the gradient goes to the
//!   first maximum of each window in row-major order (PyTorch's CPU kernel picks the same one,
//!   which matters after a ReLU where ties at 0 are common).
//! - global_avg_pool: [N, C, H, W] → [N, C], y = mean over H·W; gx = gy/(H·W).
//!
//! Tolerance GPU vs CPU: max pool is exact; average pool sums H·W values: atol 1e-6, rtol 1e-5.

use super::{buf, cpu, u, Real, TResult};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, Kernel};
use crate::tensor::{Device, Tensor};

const MAX_FWD: Kernel = Kernel::new("pool", "max_pool_forward");
const MAX_BWD: Kernel = Kernel::new("pool", "max_pool_backward");
const AVG_FWD: Kernel = Kernel::new("pool", "avg_pool_forward");
const AVG_BWD: Kernel = Kernel::new("pool", "avg_pool_backward");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

/// (planes, H, W, OH, OW).
pub fn max_pool_dims(x: &[usize], cfg: MaxPool) -> Result<(usize, usize, usize, usize, usize)> {
    let &[n, c, h, w] = x else {
        return Err(Error::shape(
            "max_pool2d",
            format!("expects [N, C, H, W], got {x:?}"),
        ));
    };
    if cfg.stride == 0
        || cfg.k == 0
        || cfg.pad * 2 > cfg.k
        || h + 2 * cfg.pad < cfg.k
        || w + 2 * cfg.pad < cfg.k
    {
        return Err(Error::shape(
            "max_pool2d",
            format!(
                "kernel {} stride {} padding {} does not fit input {x:?}",
                cfg.k, cfg.stride, cfg.pad
            ),
        ));
    }
    let oh = (h + 2 * cfg.pad - cfg.k) / cfg.stride + 1;
    let ow = (w + 2 * cfg.pad - cfg.k) / cfg.stride + 1;
    Ok((n * c, h, w, oh, ow))
}

/// (y, argmax index within the plane as f32).
pub fn max_pool_ref<T: Real>(
    x: &[T],
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    cfg: MaxPool,
) -> (Vec<T>, Vec<f32>) {
    let mut y = vec![T::zero(); planes * oh * ow];
    let mut idx = vec![0.0f32; planes * oh * ow];
    for p in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<(T, usize)> = None;
                for ky in 0..cfg.k {
                    let iy = (oy * cfg.stride + ky) as isize - cfg.pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..cfg.k {
                        let ix = (ox * cfg.stride + kx) as isize - cfg.pad as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let i = iy as usize * w + ix as usize;
                        let v = x[p * h * w + i];
                        if best.is_none_or(|(b, _)| v > b) {
                            best = Some((v, i));
                        }
                    }
                }
                let (v, i) = best.expect("window overlaps the input");
                y[(p * oh + oy) * ow + ox] = v;
                idx[(p * oh + oy) * ow + ox] = i as f32;
            }
        }
    }
    (y, idx)
}

pub fn max_pool_backward_ref<T: Real>(
    gy: &[T],
    idx: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) -> Vec<T> {
    let mut gx = vec![T::zero(); planes * h * w];
    for p in 0..planes {
        for o in 0..oh * ow {
            gx[p * h * w + idx[p * oh * ow + o] as usize] += gy[p * oh * ow + o];
        }
    }
    gx
}

pub fn avg_pool_ref<T: Real>(x: &[T], planes: usize, hw: usize) -> Vec<T> {
    (0..planes)
        .map(|p| x[p * hw..(p + 1) * hw].iter().copied().sum::<T>() / T::of(hw as f64))
        .collect()
}

pub fn avg_pool_backward_ref<T: Real>(gy: &[T], hw: usize) -> Vec<T> {
    gy.iter()
        .flat_map(|&g| std::iter::repeat_n(g / T::of(hw as f64), hw))
        .collect()
}

/// The kernels' parameter block.
fn max_pool_params(x: &[usize], cfg: MaxPool) -> Result<[u32; 8]> {
    let (planes, h, w, oh, ow) = max_pool_dims(x, cfg)?;
    Ok([
        u(planes),
        u(h),
        u(w),
        u(oh),
        u(ow),
        u(cfg.k),
        u(cfg.stride),
        u(cfg.pad),
    ])
}

/// (y, saved argmax indices).
pub fn max_pool(x: &Tensor, cfg: MaxPool) -> Result<(Tensor, Tensor)> {
    let (planes, h, w, oh, ow) = max_pool_dims(x.shape(), cfg)?;
    let yshape = [x.shape()[0], x.shape()[1], oh, ow];
    let p = max_pool_params(x.shape(), cfg)?;
    match x.device() {
        Device::Cpu => {
            let (y, idx) =
                max_pool_ref(x.cpu_data().unwrap_or_default(), planes, h, w, oh, ow, cfg);
            Ok((cpu(y, &yshape), cpu(idx, &yshape)))
        }
        Device::Gpu(g) => {
            let (out, idx) = (g.alloc(planes * oh * ow), g.alloc(planes * oh * ow));
            g.dispatch(
                MAX_FWD,
                &[],
                &[buf(x), &out, &idx],
                &p,
                grid_1d(planes * oh * ow, 256),
            );
            Ok((
                Tensor::from_gpu(&g, out, &yshape),
                Tensor::from_gpu(&g, idx, &yshape),
            ))
        }
    }
}

pub fn max_pool_backward(gy: &Tensor, idx: &Tensor, xshape: &[usize], cfg: MaxPool) -> TResult {
    let (planes, h, w, oh, ow) = max_pool_dims(xshape, cfg)?;
    let p = max_pool_params(xshape, cfg)?;
    match gy.device() {
        Device::Cpu => Ok(cpu(
            max_pool_backward_ref(
                gy.cpu_data().unwrap_or_default(),
                idx.cpu_data().unwrap_or_default(),
                planes,
                h,
                w,
                oh,
                ow,
            ),
            xshape,
        )),
        Device::Gpu(g) => {
            let out = g.alloc(planes * h * w);
            g.dispatch(
                MAX_BWD,
                &[],
                &[buf(gy), buf(idx), &out],
                &p,
                grid_1d(planes * h * w, 256),
            );
            Ok(Tensor::from_gpu(&g, out, xshape))
        }
    }
}

fn gap_dims(x: &[usize]) -> Result<(usize, usize, usize, usize)> {
    match *x {
        [n, c, h, w] => Ok((n, c, h, w)),
        _ => Err(Error::shape(
            "global_avg_pool",
            format!("expects [N, C, H, W], got {x:?}"),
        )),
    }
}

pub fn global_avg_pool(x: &Tensor) -> TResult {
    let (n, c, h, w) = gap_dims(x.shape())?;
    let p = [u(n * c), u(h), u(w), 0, 0, 0, 0, 0];
    match x.device() {
        Device::Cpu => Ok(cpu(
            avg_pool_ref(x.cpu_data().unwrap_or_default(), n * c, h * w),
            &[n, c],
        )),
        Device::Gpu(g) => {
            let out = g.alloc(n * c);
            g.dispatch(AVG_FWD, &[], &[buf(x), &out], &p, grid_1d(n * c, 256));
            Ok(Tensor::from_gpu(&g, out, &[n, c]))
        }
    }
}

pub fn global_avg_pool_backward(gy: &Tensor, xshape: &[usize]) -> TResult {
    let (n, c, h, w) = gap_dims(xshape)?;
    let p = [u(n * c), u(h), u(w), 0, 0, 0, 0, 0];
    match gy.device() {
        Device::Cpu => Ok(cpu(
            avg_pool_backward_ref(gy.cpu_data().unwrap_or_default(), h * w),
            xshape,
        )),
        Device::Gpu(g) => {
            let out = g.alloc(n * c * h * w);
            g.dispatch(
                AVG_BWD,
                &[],
                &[buf(gy), &out],
                &p,
                grid_1d(n * c * h * w, 256),
            );
            Ok(Tensor::from_gpu(&g, out, xshape))
        }
    }
}

impl Tape {
    pub fn max_pool2d(&mut self, x: Var, cfg: MaxPool) -> Result<Var> {
        let xshape = self.value(x).shape().to_vec();
        let (y, idx) = max_pool(self.value(x), cfg)?;
        Ok(self.record("max_pool2d", y, &[x], move |gy, _| {
            Ok(vec![Some(max_pool_backward(gy, &idx, &xshape, cfg)?)])
        }))
    }

    pub fn global_avg_pool(&mut self, x: Var) -> Result<Var> {
        let xshape = self.value(x).shape().to_vec();
        let y = global_avg_pool(self.value(x))?;
        Ok(self.record("global_avg_pool", y, &[x], move |gy, _| {
            Ok(vec![Some(global_avg_pool_backward(gy, &xshape)?)])
        }))
    }
}
