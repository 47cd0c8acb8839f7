//! Batch normalisation over channels, for [N, C] (1-D) and [N, C, H, W] (2-D).
//!
//! Train: μ, σ² (biased) over N·H·W per channel; y = (x−μ)/√(σ²+ε)·γ + β; running statistics
//! updated in place with momentum m and the *unbiased* variance (PyTorch's convention).
//! Eval: the running statistics instead of the batch's.
//! Backward (train): gx = γ·s/M·(M·gy − Σgy − x̂·Σgy·x̂), gγ = Σgy·x̂, gβ = Σgy, s = 1/√(σ²+ε).
//! Backward (eval): gx = γ·s·gy with the running s.
//!
//! Tolerance GPU vs CPU: reductions of M = N·H·W values: atol 1e-4, rtol 1e-4 on y and gx
//! (normalised values are O(1)); gγ, gβ sum M values: atol 1e-5·M.

use super::{buf, cpu, f, u, Real};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, Kernel};
use crate::tensor::{same_device, Device, Tensor};
use rayon::prelude::*;

const STATS_PARTIAL: Kernel = Kernel::new("batchnorm", "bn_stats_partial");
const STATS_MERGE: Kernel = Kernel::new("batchnorm", "bn_stats_merge");
const EVAL_STATS: Kernel = Kernel::new("batchnorm", "bn_eval_stats");
const APPLY: Kernel = Kernel::new("batchnorm", "bn_apply");
const BWD_PARTIAL: Kernel = Kernel::new("batchnorm", "bn_backward_partial");
const BWD_MERGE: Kernel = Kernel::new("batchnorm", "bn_backward_merge");
const BWD_INPUT: Kernel = Kernel::new("batchnorm", "bn_backward_input");

/// Values of one channel per workgroup in the GPU reductions: ResNet's first stage at batch
/// 256 (M = 262,144 per channel) spreads over 64 workgroups per channel.
const CHUNK_LEN: usize = 4096;

/// (chunks, chunk length) of a channel's `m` values.
fn chunks(m: usize) -> (usize, usize) {
    let k = m.div_ceil(CHUNK_LEN).max(1);
    (k, m.div_ceil(k).max(1))
}

/// The GPU kernels' parameter block.
fn gpu_params(
    (n, c, s): (usize, usize, usize),
    affine: bool,
    cfg: BatchNorm,
    flags: u32,
) -> [u32; 12] {
    let (k, len) = chunks(n * s);
    [
        u(n),
        u(c),
        u(s),
        affine as u32,
        f(cfg.eps),
        f(cfg.momentum),
        flags,
        u(k),
        u(len),
        0,
        0,
        0,
    ]
}

/// Flag bits of the GPU kernels.
const UPDATE_RUNNING: u32 = 1;
const FUSED_RELU: u32 = 2;
const EVAL_BACKWARD: u32 = 4;
const RESIDUAL: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    pub momentum: f32,
    pub eps: f32,
}

impl Default for BatchNorm {
    fn default() -> Self {
        Self {
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// (N, C, S) for [N, C] or [N, C, H, W].
pub fn dims(x: &[usize]) -> Result<(usize, usize, usize)> {
    match *x {
        [n, c] => Ok((n, c, 1)),
        [n, c, h, w] => Ok((n, c, h * w)),
        _ => Err(Error::shape(
            "batch_norm",
            format!("expects [N, C] or [N, C, H, W], got {x:?}"),
        )),
    }
}

/// Per-channel mean and biased variance.
pub fn stats_ref<T: Real>(x: &[T], n: usize, c: usize, s: usize) -> (Vec<T>, Vec<T>) {
    let m = T::of((n * s) as f64);
    let mut mean = vec![T::zero(); c];
    let mut var = vec![T::zero(); c];
    for ch in 0..c {
        let mut acc = T::zero();
        for i in 0..n {
            for v in &x[(i * c + ch) * s..(i * c + ch + 1) * s] {
                acc += *v;
            }
        }
        mean[ch] = acc / m;
        let mut q = T::zero();
        for i in 0..n {
            for v in &x[(i * c + ch) * s..(i * c + ch + 1) * s] {
                let d = *v - mean[ch];
                q += d * d;
            }
        }
        var[ch] = q / m;
    }
    (mean, var)
}

/// y = (x − mean)·invstd·γ + β.
#[allow(clippy::too_many_arguments)]
pub fn apply_ref<T: Real>(
    x: &[T],
    mean: &[T],
    invstd: &[T],
    gamma: Option<&[T]>,
    beta: Option<&[T]>,
    n: usize,
    c: usize,
    s: usize,
) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    for i in 0..n {
        for ch in 0..c {
            let (g, b) = (
                gamma.map_or(T::one(), |g| g[ch]),
                beta.map_or(T::zero(), |b| b[ch]),
            );
            for k in 0..s {
                let e = (i * c + ch) * s + k;
                y[e] = (x[e] - mean[ch]) * invstd[ch] * g + b;
            }
        }
    }
    y
}

/// (gx, gγ, gβ). `train` selects the batch-statistics gradient; otherwise the statistics are
/// constants.
#[allow(clippy::too_many_arguments)]
pub fn backward_ref<T: Real>(
    x: &[T],
    gy: &[T],
    mean: &[T],
    invstd: &[T],
    gamma: Option<&[T]>,
    n: usize,
    c: usize,
    s: usize,
    train: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let m = T::of((n * s) as f64);
    let mut gx = vec![T::zero(); x.len()];
    let mut gg = vec![T::zero(); c];
    let mut gb = vec![T::zero(); c];
    for ch in 0..c {
        for i in 0..n {
            for k in 0..s {
                let e = (i * c + ch) * s + k;
                gb[ch] += gy[e];
                gg[ch] += gy[e] * (x[e] - mean[ch]) * invstd[ch];
            }
        }
        let kk = invstd[ch] * gamma.map_or(T::one(), |g| g[ch]);
        for i in 0..n {
            for k in 0..s {
                let e = (i * c + ch) * s + k;
                gx[e] = if train {
                    let xhat = (x[e] - mean[ch]) * invstd[ch];
                    kk / m * (m * gy[e] - gb[ch] - xhat * gg[ch])
                } else {
                    kk * gy[e]
                };
            }
        }
    }
    (gx, gg, gb)
}

// The CPU path's kernels (tested against the references): channels in parallel for the
// sums, (image, channel) planes in parallel for the elementwise passes. Each channel's sums
// run in image order (16 f32 lanes per plane, planes added in f64), so the result does not
// depend on the thread count.

/// Σ f(v) over one plane in 16 f32 lanes.
#[inline]
fn plane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut lanes = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += f(x);
        }
    }
    lanes.iter().map(|&l| l as f64).sum::<f64>() + rest.iter().map(|&x| f(x) as f64).sum::<f64>()
}

/// Per-channel mean and biased variance (two passes, as the reference).
pub fn stats_fast(x: &[f32], n: usize, c: usize, s: usize) -> (Vec<f32>, Vec<f32>) {
    let m = (n * s).max(1) as f64;
    let plane = |i: usize, ch: usize| &x[(i * c + ch) * s..][..s];
    let per: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mean = ((0..n).map(|i| plane_sum(plane(i, ch), |v| v)).sum::<f64>() / m) as f32;
            let q: f64 = (0..n)
                .map(|i| plane_sum(plane(i, ch), |v| (v - mean) * (v - mean)))
                .sum();
            (mean, (q / m) as f32)
        })
        .collect();
    per.into_iter().unzip()
}

/// y = (x − mean)·a + β per channel (a = invstd·γ; subtracting first, as the reference: x·a
/// + (β − mean·a) would cancel where |mean| ≫ std).
#[allow(clippy::too_many_arguments)]
pub fn apply_fast(
    x: &[f32],
    mean: &[f32],
    invstd: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    c: usize,
    s: usize,
    relu: bool,
) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(s.max(1))
        .zip(x.par_chunks(s.max(1)))
        .enumerate()
        .for_each(|(plane, (yp, xp))| {
            let ch = plane % c.max(1);
            let a = invstd[ch] * gamma.map_or(1.0, |g| g[ch]);
            let (m, b) = (mean[ch], beta.map_or(0.0, |b| b[ch]));
            for (y, &x) in yp.iter_mut().zip(xp) {
                let v = (x - m) * a + b;
                *y = if relu { v.max(0.0) } else { v };
            }
        });
    y
}

/// (gx, gγ, gβ) as `backward_ref`.
#[allow(clippy::too_many_arguments)]
pub fn backward_fast(
    x: &[f32],
    gy: &[f32],
    mean: &[f32],
    invstd: &[f32],
    gamma: Option<&[f32]>,
    n: usize,
    c: usize,
    s: usize,
    train: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let m = (n * s).max(1) as f32;
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut gb, mut gxy) = (0f64, 0f64);
            for i in 0..n {
                let (xp, gp) = (&x[(i * c + ch) * s..][..s], &gy[(i * c + ch) * s..][..s]);
                gb += plane_sum(gp, |g| g);
                // Σ gy·(x − mean) in lanes: the product needs both planes.
                let mut lanes = [0f32; 16];
                let (xc, gc) = (xp.chunks_exact(16), gp.chunks_exact(16));
                let (xr, gr) = (xc.remainder(), gc.remainder());
                for (xs, gs) in xc.zip(gc) {
                    for ((l, &xv), &gv) in lanes.iter_mut().zip(xs).zip(gs) {
                        *l += gv * (xv - mean[ch]);
                    }
                }
                gxy += lanes.iter().map(|&l| l as f64).sum::<f64>()
                    + xr.iter()
                        .zip(gr)
                        .map(|(&xv, &gv)| (gv * (xv - mean[ch])) as f64)
                        .sum::<f64>();
            }
            (gb as f32, (gxy * invstd[ch] as f64) as f32)
        })
        .collect();
    let (gb, gg): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
    let mut gx = vec![0f32; x.len()];
    gx.par_chunks_mut(s.max(1))
        .enumerate()
        .for_each(|(plane, gxp)| {
            let ch = plane % c.max(1);
            let kk = invstd[ch] * gamma.map_or(1.0, |g| g[ch]);
            let (xp, gp) = (&x[plane * s..][..s], &gy[plane * s..][..s]);
            if train {
                // kk/m·(m·gy − gβ − x̂·gγ) = kk·gy − kk/m·gβ − kk/m·gγ·invstd·(x − mean)
                let (a, b) = (kk / m * gg[ch] * invstd[ch], kk / m * gb[ch]);
                for ((g, &xv), &gv) in gxp.iter_mut().zip(xp).zip(gp) {
                    *g = kk * gv - b - a * (xv - mean[ch]);
                }
            } else {
                for (g, &gv) in gxp.iter_mut().zip(gp) {
                    *g = kk * gv;
                }
            }
        });
    (gx, gg, gb)
}

/// Result of a forward pass: the output and the statistics used ([mean | invstd], 2C values).
pub struct BnForward {
    pub y: Tensor,
    pub saved: Tensor,
}

/// Forward. In training mode `running_*` are updated in place (when `update_running`).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    cfg: BatchNorm,
    train: bool,
    update_running: bool,
    relu: bool,
) -> Result<BnForward> {
    forward_fused(
        x,
        gamma,
        beta,
        running_mean,
        running_var,
        cfg,
        (train, update_running),
        relu,
        None,
    )
}

/// [`forward`] with `residual` added before the optional ReLU: y = relu(BN(x) + residual),
/// one pass over the activations on the GPU (ResNet's block output).
#[allow(clippy::too_many_arguments)]
pub fn forward_fused(
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    cfg: BatchNorm,
    (train, update_running): (bool, bool),
    relu: bool,
    residual: Option<&Tensor>,
) -> Result<BnForward> {
    let (n, c, s) = dims(x.shape())?;
    if let Some(r) = residual {
        if r.shape() != x.shape() {
            return Err(Error::shape(
                "batch_norm",
                format!(
                    "residual of shape {:?} for input {:?}",
                    r.shape(),
                    x.shape()
                ),
            ));
        }
    }
    for (name, t) in [
        ("weight", gamma),
        ("bias", beta),
        ("running_mean", Some(&*running_mean)),
        ("running_var", Some(&*running_var)),
    ] {
        if let Some(t) = t {
            if t.shape() != [c] {
                return Err(Error::shape(
                    "batch_norm",
                    format!(
                        "{name} of shape {:?} for input {:?} with {c} channels",
                        t.shape(),
                        x.shape()
                    ),
                ));
            }
        }
    }
    if train && n * s < 2 {
        return Err(Error::shape(
            "batch_norm",
            format!(
                "training needs more than one value per channel, got input {:?}",
                x.shape()
            ),
        ));
    }
    let mut all = vec![x, &*running_mean, &*running_var];
    all.extend(gamma);
    all.extend(beta);
    all.extend(residual);
    match same_device("batch_norm", &all)? {
        Device::Cpu => {
            let xv = x.cpu_data().unwrap_or_default();
            let reference = super::reference_kernels();
            let (mean, invstd) = if train {
                let (mean, var) = if reference {
                    stats_ref(xv, n, c, s)
                } else {
                    stats_fast(xv, n, c, s)
                };
                if update_running {
                    let unb = (n * s) as f32 / (n * s - 1) as f32;
                    let m = cfg.momentum;
                    let rm = running_mean.cpu_data_mut().expect("cpu");
                    for (r, v) in rm.iter_mut().zip(&mean) {
                        *r = (1.0 - m) * *r + m * v;
                    }
                    let rv = running_var.cpu_data_mut().expect("cpu");
                    for (r, v) in rv.iter_mut().zip(&var) {
                        *r = (1.0 - m) * *r + m * v * unb;
                    }
                }
                (
                    mean,
                    var.iter()
                        .map(|v| 1.0 / (v + cfg.eps).sqrt())
                        .collect::<Vec<_>>(),
                )
            } else {
                let rm = running_mean.cpu_data().unwrap_or_default().to_vec();
                let rv = running_var.cpu_data().unwrap_or_default();
                (rm, rv.iter().map(|v| 1.0 / (v + cfg.eps).sqrt()).collect())
            };
            let (g, b) = (
                gamma.and_then(|t| t.cpu_data()),
                beta.and_then(|t| t.cpu_data()),
            );
            // With a residual: BN, then the sum, then the ReLU (the unfused ops' order).
            let relu_now = relu && residual.is_none();
            let mut y = if reference {
                let mut y = apply_ref(xv, &mean, &invstd, g, b, n, c, s);
                if relu_now {
                    y.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                y
            } else {
                apply_fast(xv, &mean, &invstd, g, b, c, s, relu_now)
            };
            if let Some(r) = residual.and_then(|r| r.cpu_data()) {
                for (v, r) in y.iter_mut().zip(r) {
                    let sum = *v + r;
                    *v = if relu { sum.max(0.0) } else { sum };
                }
            }
            let saved = [mean, invstd].concat();
            Ok(BnForward {
                y: cpu(y, x.shape()),
                saved: cpu(saved, &[2 * c]),
            })
        }
        Device::Gpu(g) => {
            let stats = g.alloc(2 * c);
            let flags = if update_running && train {
                UPDATE_RUNNING
            } else {
                0
            } | if relu { FUSED_RELU } else { 0 }
                | if residual.is_some() { RESIDUAL } else { 0 };
            let p = gpu_params((n, c, s), gamma.is_some(), cfg, flags);
            let (rm, rv) = (buf(running_mean), buf(running_var));
            if train {
                let (k, _) = chunks(n * s);
                let partial = g.alloc(3 * c * k);
                g.dispatch(
                    STATS_PARTIAL,
                    &[],
                    &[buf(x), &partial],
                    &p,
                    [k as u32, c as u32, 1],
                );
                g.dispatch(
                    STATS_MERGE,
                    &[],
                    &[&stats, rm, rv, &partial],
                    &p,
                    grid_1d(c, 64),
                );
            } else {
                g.dispatch(EVAL_STATS, &[], &[&stats, rm, rv], &p, grid_1d(c, 256));
            }
            let out = g.alloc(x.numel());
            let gb = gamma.map(buf).unwrap_or(&stats);
            let bb = beta.map(buf).unwrap_or(&stats);
            let res = residual.map(buf).unwrap_or(buf(x));
            g.dispatch(
                APPLY,
                &[],
                &[buf(x), gb, bb, &out, &stats, res],
                &p,
                grid_1d(x.numel(), 256),
            );
            Ok(BnForward {
                y: Tensor::from_gpu(&g, out, x.shape()),
                saved: Tensor::from_gpu(&g, stats, &[2 * c]),
            })
        }
    }
}

/// (gx, gγ, gβ) given the forward's saved statistics.
pub fn backward(
    x: &Tensor,
    gy: &Tensor,
    saved: &Tensor,
    gamma: Option<&Tensor>,
    train: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    backward_masked(x, gy, saved, gamma, train, None)
}

/// [`backward`] of a BN with a fused ReLU: `relu_out` is the forward's output y, and gy is
/// taken where y > 0 only (masked inside the GPU kernels; an elementwise pass on the CPU).
pub fn backward_masked(
    x: &Tensor,
    gy: &Tensor,
    saved: &Tensor,
    gamma: Option<&Tensor>,
    train: bool,
    relu_out: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, s) = dims(x.shape())?;
    let masked;
    let gy = match (relu_out, gy.device()) {
        (Some(y), Device::Cpu) => {
            masked = crate::ops::elementwise::relu_backward(y, gy)?;
            &masked
        }
        _ => gy,
    };
    match same_device("batch_norm_backward", &[x, gy, saved])? {
        Device::Cpu => {
            let sv = saved.cpu_data().unwrap_or_default();
            let shape = x.shape().to_vec();
            let (x, gy) = (
                x.cpu_data().unwrap_or_default(),
                gy.cpu_data().unwrap_or_default(),
            );
            let gamma = gamma.and_then(|t| t.cpu_data());
            let (gx, gg, gb) = if super::reference_kernels() {
                backward_ref(x, gy, &sv[..c], &sv[c..], gamma, n, c, s, train)
            } else {
                backward_fast(x, gy, &sv[..c], &sv[c..], gamma, n, c, s, train)
            };
            Ok((cpu(gx, &shape), cpu(gg, &[c]), cpu(gb, &[c])))
        }
        Device::Gpu(g) => {
            let red = g.alloc(2 * c);
            let flags = if train { 0 } else { EVAL_BACKWARD }
                | if relu_out.is_some() { FUSED_RELU } else { 0 };
            let p = gpu_params((n, c, s), gamma.is_some(), BatchNorm::default(), flags);
            let (k, _) = chunks(n * s);
            let partial = g.alloc(2 * c * k);
            let aux = relu_out.map(buf).unwrap_or(buf(x));
            g.dispatch(
                BWD_PARTIAL,
                &[],
                &[buf(x), buf(gy), buf(saved), &partial, aux],
                &p,
                [k as u32, c as u32, 1],
            );
            g.dispatch(BWD_MERGE, &[], &[&red, &partial], &p, grid_1d(c, 64));
            let out = g.alloc(x.numel());
            let gam = gamma.map(buf).unwrap_or(buf(saved));
            g.dispatch(
                BWD_INPUT,
                &[],
                &[buf(x), buf(gy), gam, &red, &out, buf(saved), aux],
                &p,
                grid_1d(x.numel(), 256),
            );
            let red = Tensor::from_gpu(&g, red, &[2 * c]);
            let gb = crate::ops::shape_ops::slice_batch(&red, 0, c)?;
            let gg = crate::ops::shape_ops::slice_batch(&red, c, c)?;
            Ok((Tensor::from_gpu(&g, out, x.shape()), gg, gb))
        }
    }
}

// Synchronised BatchNorm (data parallelism, `train.sync_bn`): the training statistics over
// every rank's batch. Each rank's per-channel count, mean and centred sum of squares are
// gathered and merged in rank order (Chan et al.'s pairwise update, in f64), so every rank
// gets the same statistics; the backward gathers Σgy and Σgy·x̂ the same way:
//   gx = γ·s/M·(M·gy − Σ_all gy − x̂·Σ_all gy·x̂) with M the global count,
//   gγ, gβ this rank's sums (the trainer averages gradients over the ranks).
// It runs on the host (a GPU tensor is read back per layer: slow on a GPU, exact). One rank:
// plain batch statistics.

/// (mean, biased variance, count) over every rank's [n, c, s] batch.
fn sync_stats(x: &[f32], n: usize, c: usize, s: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let (mean, var) = stats_ref(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), n, c, s);
    let m = (n * s) as f64;
    let mut local = vec![m as f32];
    local.extend(mean.iter().map(|&v| v as f32));
    local.extend(var.iter().map(|&v| (v * m) as f32));
    let all = crate::dist::all_gather(&local);
    let (mut count, mut mu, mut m2) = (0f64, vec![0f64; c], vec![0f64; c]);
    for r in all.chunks(1 + 2 * c) {
        let nb = r[0] as f64;
        for ch in 0..c {
            let (mb, qb) = (r[1 + ch] as f64, r[1 + c + ch] as f64);
            let delta = mb - mu[ch];
            let tot = count + nb;
            mu[ch] += delta * nb / tot;
            m2[ch] += qb + delta * delta * count * nb / tot;
        }
        count += nb;
    }
    (mu, m2.iter().map(|q| q / count).collect(), count)
}

/// Training-mode forward with statistics over every rank's batch (see above).
#[allow(clippy::too_many_arguments)]
pub fn forward_sync(
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    cfg: BatchNorm,
    update_running: bool,
) -> Result<BnForward> {
    let (n, c, s) = dims(x.shape())?;
    let dev = x.device();
    let xv = x.to_vec()?;
    let (mean, var, count) = sync_stats(&xv, n, c, s);
    if update_running {
        let m = cfg.momentum as f64;
        let unb = count / (count - 1.0).max(1.0);
        let rm: Vec<f32> = running_mean
            .to_vec()?
            .iter()
            .zip(&mean)
            .map(|(&r, &v)| ((1.0 - m) * r as f64 + m * v) as f32)
            .collect();
        let rv: Vec<f32> = running_var
            .to_vec()?
            .iter()
            .zip(&var)
            .map(|(&r, &v)| ((1.0 - m) * r as f64 + m * v * unb) as f32)
            .collect();
        *running_mean = Tensor::from_vec(rm, &[c], &dev)?;
        *running_var = Tensor::from_vec(rv, &[c], &dev)?;
    }
    let mean: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    let invstd: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / (v + cfg.eps as f64).sqrt()) as f32)
        .collect();
    let (g, b) = (
        gamma.map(Tensor::to_vec).transpose()?,
        beta.map(Tensor::to_vec).transpose()?,
    );
    let y = apply_ref(&xv, &mean, &invstd, g.as_deref(), b.as_deref(), n, c, s);
    Ok(BnForward {
        y: Tensor::from_vec(y, x.shape(), &dev)?,
        saved: Tensor::from_vec([mean, invstd].concat(), &[2 * c], &dev)?,
    })
}

/// (gx, gγ, gβ) of [`forward_sync`].
pub fn backward_sync(
    x: &Tensor,
    gy: &Tensor,
    saved: &Tensor,
    gamma: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, s) = dims(x.shape())?;
    let dev = x.device();
    let (xv, gv, sv) = (x.to_vec()?, gy.to_vec()?, saved.to_vec()?);
    let (mean, invstd) = (&sv[..c], &sv[c..]);
    let gam = gamma.map(Tensor::to_vec).transpose()?;
    let (mut gb, mut gg) = (vec![0f64; c], vec![0f64; c]);
    for i in 0..n {
        for ch in 0..c {
            for k in 0..s {
                let e = (i * c + ch) * s + k;
                gb[ch] += gv[e] as f64;
                gg[ch] += gv[e] as f64 * ((xv[e] - mean[ch]) * invstd[ch]) as f64;
            }
        }
    }
    let mut local = vec![(n * s) as f32];
    local.extend(gb.iter().map(|&v| v as f32));
    local.extend(gg.iter().map(|&v| v as f32));
    let all = crate::dist::all_gather(&local);
    let (mut m, mut sgb, mut sgg) = (0f64, vec![0f64; c], vec![0f64; c]);
    for r in all.chunks(1 + 2 * c) {
        m += r[0] as f64;
        for ch in 0..c {
            sgb[ch] += r[1 + ch] as f64;
            sgg[ch] += r[1 + c + ch] as f64;
        }
    }
    let mut gx = vec![0f32; xv.len()];
    for i in 0..n {
        for ch in 0..c {
            let kk = invstd[ch] as f64 * gam.as_ref().map_or(1.0, |g| g[ch] as f64);
            for k in 0..s {
                let e = (i * c + ch) * s + k;
                let xhat = ((xv[e] - mean[ch]) * invstd[ch]) as f64;
                gx[e] = (kk / m * (m * gv[e] as f64 - sgb[ch] - xhat * sgg[ch])) as f32;
            }
        }
    }
    let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
    Ok((
        Tensor::from_vec(gx, x.shape(), &dev)?,
        Tensor::from_vec(f32s(gg), &[c], &dev)?,
        Tensor::from_vec(f32s(gb), &[c], &dev)?,
    ))
}

impl Tape {
    /// Training-mode batch norm with statistics over every rank's batch ([`forward_sync`]).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_sync(
        &mut self,
        x: Var,
        gamma: Option<Var>,
        beta: Option<Var>,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
        cfg: BatchNorm,
        update_running: bool,
    ) -> Result<Var> {
        let xv = self.value(x).clone();
        let gv = gamma.map(|v| self.value(v).clone());
        let bv = beta.map(|v| self.value(v).clone());
        let fw = forward_sync(
            &xv,
            gv.as_ref(),
            bv.as_ref(),
            running_mean,
            running_var,
            cfg,
            update_running,
        )?;
        let saved = fw.saved;
        Ok(
            self.record_bn("batch_norm_sync", fw.y, x, [gamma, beta, None], move |gy| {
                let (gx, gg, gb) = backward_sync(&xv, gy, &saved, gv.as_ref())?;
                Ok((gx, gg, gb, None))
            }),
        )
    }

    /// Record a BN forward `y` of `x` (and γ, β, and a fused residual when given) whose
    /// backward `back` returns (gx, gγ, gβ, the residual's gradient) in one pass (the input's
    /// gradient needs the parameters' sums anyway).
    #[allow(clippy::type_complexity)]
    fn record_bn(
        &mut self,
        name: &'static str,
        y: Tensor,
        x: Var,
        [gamma, beta, residual]: [Option<Var>; 3],
        back: impl Fn(&Tensor) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)>
            + Send
            + Sync
            + 'static,
    ) -> Var {
        let mut inputs = vec![x];
        inputs.extend([gamma, beta, residual].into_iter().flatten());
        let (has_g, has_b) = (gamma.is_some(), beta.is_some());
        self.record(name, y, &inputs, move |gy, _| {
            let (gx, gg, gb, gr) = back(gy)?;
            let mut out = vec![Some(gx)];
            if has_g {
                out.push(Some(gg));
            }
            if has_b {
                out.push(Some(gb));
            }
            out.extend(gr.map(Some));
            Ok(out)
        })
    }
}

impl Tape {
    /// Batch norm of `x` with optional affine parameters and the layer's running statistics
    /// (updated in place in training mode).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &mut self,
        x: Var,
        gamma: Option<Var>,
        beta: Option<Var>,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
        cfg: BatchNorm,
        train: bool,
    ) -> Result<Var> {
        self.batch_norm_with(x, gamma, beta, running_mean, running_var, cfg, train, train)
    }

    /// relu(BN(x) [+ residual]) as one op: one pass over the activations forward (on the
    /// GPU), the ReLU's mask applied inside BN's backward kernels (without a residual) or once
    /// for both branches (with one).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_relu(
        &mut self,
        x: Var,
        gamma: Option<Var>,
        beta: Option<Var>,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
        cfg: BatchNorm,
        (train, update_running): (bool, bool),
        residual: Option<Var>,
    ) -> Result<Var> {
        let xv = self.value(x).clone();
        let gv = gamma.map(|v| self.value(v).clone());
        let bv = beta.map(|v| self.value(v).clone());
        let rv = residual.map(|v| self.value(v).clone());
        let fw = forward_fused(
            &xv,
            gv.as_ref(),
            bv.as_ref(),
            running_mean,
            running_var,
            cfg,
            (train, update_running),
            true,
            rv.as_ref(),
        )?;
        let (saved, y) = (fw.saved, fw.y.clone());
        let inputs = [gamma, beta, residual];
        Ok(
            self.record_bn("batch_norm_relu", fw.y, x, inputs, move |gy| {
                if residual.is_some() {
                    // The residual's gradient is the masked gy itself: mask once, share it.
                    let gm = crate::ops::elementwise::relu_backward(&y, gy)?;
                    let (gx, gg, gb) = backward(&xv, &gm, &saved, gv.as_ref(), train)?;
                    Ok((gx, gg, gb, Some(gm)))
                } else {
                    let (gx, gg, gb) =
                        backward_masked(&xv, gy, &saved, gv.as_ref(), train, Some(&y))?;
                    Ok((gx, gg, gb, None))
                }
            }),
        )
    }

    /// [`Tape::batch_norm`] with the running-statistics update chosen separately (a
    /// train-mode forward that must not touch the buffers).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_with(
        &mut self,
        x: Var,
        gamma: Option<Var>,
        beta: Option<Var>,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
        cfg: BatchNorm,
        train: bool,
        update_running: bool,
    ) -> Result<Var> {
        let xv = self.value(x).clone();
        let gv = gamma.map(|v| self.value(v).clone());
        let bv = beta.map(|v| self.value(v).clone());
        let fw = forward(
            &xv,
            gv.as_ref(),
            bv.as_ref(),
            running_mean,
            running_var,
            cfg,
            train,
            update_running,
            false,
        )?;
        let saved = fw.saved;
        Ok(
            self.record_bn("batch_norm", fw.y, x, [gamma, beta, None], move |gy| {
                let (gx, gg, gb) = backward(&xv, gy, &saved, gv.as_ref(), train)?;
                Ok((gx, gg, gb, None))
            }),
        )
    }
}
