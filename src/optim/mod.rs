//! Optimiser updates and schedules.
//!
//! - SGD with momentum and weight decay, PyTorch semantics (dampening 0, no Nesterov; weight
//!   decay added to the gradient before the momentum buffer): g' = g + wd·p,
//!   buf ← μ·buf + g', p ← p − lr·buf. A zero-initialised buffer reproduces PyTorch's first
//!   step (buf = g').
//! - EMA of parameters (MoCo key encoder, BYOL target): t ← m·t + (1 − m)·o.
//! - Cosine schedule per 1-based epoch with a floor: lr_e = η + (lr − η)(1 + cos(π(e−1)/E))/2,
//!   η = decay_rate·lr.
//!
//! All updates are in place (a dispatch on the GPU, no readback). Tolerance GPU vs CPU: one
//! or two roundings (atol 1e-6, rtol 1e-6).

use crate::error::{Error, Result};
use crate::gpu::{grid_1d, GpuBuffer, Kernel};
use crate::ops::{f, u, Real};
use crate::tensor::{same_device, same_shape, Device, Tensor};
use rayon::prelude::*;

/// Updates of at least this many elements run on the pool, in chunks of `CHUNK`.
const PARALLEL_MIN: usize = 1 << 16;
const CHUNK: usize = 1 << 14;

const SGD: Kernel = Kernel::new("optim", "sgd_step");
const EMA: Kernel = Kernel::new("optim", "ema_update");
const LARS_NORMS: Kernel = Kernel::new("lars", "lars_norms");
const LARS_STEP: Kernel = Kernel::new("lars", "lars_step");

/// LARS's trust coefficient and the epsilon of its ratio (the usual values).
pub const LARS_ETA: f32 = 0.001;
pub const LARS_EPS: f32 = 1e-8;

/// LARS on top of SGD (see `shaders/lars.wgsl`): the step scaled per tensor by
/// trust = η‖p‖ / (‖g‖ + wd‖p‖ + ε), 1 when either norm is 0.
#[allow(clippy::too_many_arguments)]
pub fn lars_ref<T: Real>(
    p: &mut [T],
    g: &[T],
    buf: &mut [T],
    lr: T,
    momentum: T,
    wd: T,
    eta: T,
    eps: T,
) {
    let pn = p
        .iter()
        .map(|&x| x * x)
        .fold(T::zero(), |a, b| a + b)
        .sqrt();
    let gn = g
        .iter()
        .map(|&x| x * x)
        .fold(T::zero(), |a, b| a + b)
        .sqrt();
    let trust = if pn > T::zero() && gn > T::zero() {
        eta * pn / (gn + wd * pn + eps)
    } else {
        T::one()
    };
    for i in 0..p.len() {
        let d = (g[i] + wd * p[i]) * trust;
        buf[i] = momentum * buf[i] + d;
        p[i] -= lr * buf[i];
    }
}

/// One LARS step on `param` in place, with its momentum buffer; on the GPU the norms stay
/// on the device.
pub fn lars_step(
    param: &mut Tensor,
    grad: &Tensor,
    buf: &mut Tensor,
    lr: f32,
    momentum: f32,
    wd: f32,
) -> Result<()> {
    let n = param.numel();
    step_in_place(
        "lars_step",
        param,
        grad,
        buf,
        |p, g, b| lars_ref(p, g, b, lr, momentum, wd, LARS_ETA, LARS_EPS),
        |gpu, pb, gb, bb| {
            let norms = gpu.alloc(2);
            let prm = [
                u(n),
                f(lr),
                f(momentum),
                f(wd),
                f(LARS_ETA),
                f(LARS_EPS),
                0,
                0,
            ];
            gpu.dispatch(LARS_NORMS, &[], &[pb, gb, &norms], &prm, [1, 1, 1]);
            gpu.dispatch(LARS_STEP, &[], &[pb, gb, bb, &norms], &prm, grid_1d(n, 256));
        },
    )
}

pub fn sgd_ref<T: Real>(p: &mut [T], g: &[T], buf: &mut [T], lr: T, momentum: T, wd: T) {
    for i in 0..p.len() {
        let gi = g[i] + wd * p[i];
        buf[i] = momentum * buf[i] + gi;
        p[i] -= lr * buf[i];
    }
}

pub fn ema_ref<T: Real>(target: &mut [T], online: &[T], m: T) {
    for (t, &o) in target.iter_mut().zip(online) {
        *t = m * *t + (T::one() - m) * o;
    }
}

/// The plumbing both in-place optimiser steps share: shape and device checks, then on the
/// CPU `cpu(p, g, buf)` on the host data, on the GPU `gpu(gpu, p, g, buf)` recording dispatches.
fn step_in_place(
    op: &'static str,
    param: &mut Tensor,
    grad: &Tensor,
    buf: &mut Tensor,
    cpu: impl FnOnce(&mut [f32], &[f32], &mut [f32]),
    gpu: impl FnOnce(&std::sync::Arc<crate::gpu::Gpu>, &GpuBuffer, &GpuBuffer, &GpuBuffer),
) -> Result<()> {
    same_shape(op, param, grad)?;
    same_shape(op, param, buf)?;
    match same_device(op, &[param, grad, buf])? {
        Device::Cpu => {
            // In place: no copies (a parameter still shared with a live tape is copied once
            // by `cpu_data_mut`; the trainer drops its tape before updating).
            let g = grad.cpu_data().unwrap_or_default();
            let b = buf
                .cpu_data_mut()
                .ok_or_else(|| Error::Autograd("cpu tensor".into()))?;
            let p = param
                .cpu_data_mut()
                .ok_or_else(|| Error::Autograd("cpu tensor".into()))?;
            cpu(p, g, b);
            Ok(())
        }
        Device::Gpu(g) => {
            let (pb, gb, bb) = (
                param.gpu_buffer().expect("gpu").1,
                grad.gpu_buffer().expect("gpu").1,
                buf.gpu_buffer().expect("gpu").1,
            );
            gpu(&g, pb, gb, bb);
            Ok(())
        }
    }
}

/// One SGD step on `param` in place, with its momentum buffer.
pub fn sgd_step(
    param: &mut Tensor,
    grad: &Tensor,
    buf: &mut Tensor,
    lr: f32,
    momentum: f32,
    wd: f32,
) -> Result<()> {
    let n = param.numel();
    step_in_place(
        "sgd_step",
        param,
        grad,
        buf,
        |p, g, b| {
            // Elementwise: chunks in parallel give the reference's values exactly.
            if p.len() < PARALLEL_MIN || crate::ops::reference_kernels() {
                return sgd_ref(p, g, b, lr, momentum, wd);
            }
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(b.par_chunks_mut(CHUNK))
                .for_each(|((p, g), b)| sgd_ref(p, g, b, lr, momentum, wd));
        },
        |gpu, pb, gb, bb| {
            gpu.dispatch(
                SGD,
                &[],
                &[pb, gb, bb],
                &[u(n), f(lr), f(momentum), f(wd)],
                grid_1d(n, 256),
            )
        },
    )
}

/// target ← m·target + (1 − m)·online, in place.
pub fn ema_update(target: &mut Tensor, online: &Tensor, m: f32) -> Result<()> {
    same_shape("ema_update", target, online)?;
    match same_device("ema_update", &[target, online])? {
        Device::Cpu => {
            let o = online.cpu_data().unwrap_or_default();
            let t = target
                .cpu_data_mut()
                .ok_or_else(|| Error::Autograd("cpu tensor".into()))?;
            if t.len() < PARALLEL_MIN || crate::ops::reference_kernels() {
                ema_ref(t, o, m);
            } else {
                t.par_chunks_mut(CHUNK)
                    .zip(o.par_chunks(CHUNK))
                    .for_each(|(t, o)| ema_ref(t, o, m));
            }
            Ok(())
        }
        Device::Gpu(gpu) => {
            let n = target.numel();
            let (tb, ob) = (
                target.gpu_buffer().expect("gpu").1,
                online.gpu_buffer().expect("gpu").1,
            );
            gpu.dispatch(EMA, &[], &[tb, ob], &[u(n), 0, f(m), 0], grid_1d(n, 256));
            Ok(())
        }
    }
}

/// Learning rate of 1-based `epoch` out of `epochs` with floor `decay_rate·lr`.
pub fn cosine_lr(lr: f64, epoch: usize, epochs: usize, decay_rate: f64) -> f64 {
    let eta = decay_rate * lr;
    let progress = (epoch.saturating_sub(1)) as f64 / epochs.max(1) as f64;
    eta + (lr - eta) * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
}

/// Zero momentum buffers for the trainable entries of `store` (zeros reproduce PyTorch's
/// first step).
pub fn momentum_buffers(
    store: &crate::nn::ParamStore,
    device: &Device,
) -> Result<Vec<Option<Tensor>>> {
    store
        .params
        .iter()
        .map(|p| {
            p.trainable()
                .then(|| Tensor::zeros(p.value.shape(), device))
                .transpose()
        })
        .collect()
}

/// One SGD step on every bound weight that received a gradient, with the learning rate and
/// weight decay `group(store id) = (lr, wd)` (parameter groups: SimSiam's fixed predictor
/// LR, BN/bias weight-decay exclusion).
pub fn sgd_store(
    store: &mut crate::nn::ParamStore,
    bound: &crate::nn::Bound,
    grads: &crate::autograd::Grads,
    bufs: &mut [Option<Tensor>],
    group: impl Fn(usize) -> (f32, f32),
    momentum: f32,
) -> Result<()> {
    update_store(
        store,
        bound,
        grads,
        bufs,
        |id| {
            let (lr, wd) = group(id);
            (lr, wd, false)
        },
        momentum,
    )
}

/// [`sgd_store`] with a per-parameter choice of LARS: `group(id) = (lr, wd, lars)`.
pub fn update_store(
    store: &mut crate::nn::ParamStore,
    bound: &crate::nn::Bound,
    grads: &crate::autograd::Grads,
    bufs: &mut [Option<Tensor>],
    group: impl Fn(usize) -> (f32, f32, bool),
    momentum: f32,
) -> Result<()> {
    for (id, var) in bound.iter() {
        let (Some(g), Some(buf)) = (grads.get(var), bufs[id].as_mut()) else {
            continue;
        };
        let (lr, wd, lars) = group(id);
        if lars {
            lars_step(&mut store.params[id].value, g, buf, lr, momentum, wd)?;
        } else {
            sgd_step(&mut store.params[id].value, g, buf, lr, momentum, wd)?;
        }
    }
    Ok(())
}

/// The learning rate of 1-based `epoch`: a linear warm-up lr·e/W over the first `warmup`
/// epochs, then the cosine schedule (floor decay_rate·lr) over the remaining ones. With
/// `warmup = 0` this is [`cosine_lr`] (the reference: no warm-up).
pub fn warmup_cosine_lr(
    lr: f64,
    epoch: usize,
    epochs: usize,
    decay_rate: f64,
    warmup: usize,
) -> f64 {
    if epoch <= warmup {
        lr * epoch as f64 / warmup as f64
    } else {
        cosine_lr(
            lr,
            epoch - warmup,
            epochs.saturating_sub(warmup),
            decay_rate,
        )
    }
}
