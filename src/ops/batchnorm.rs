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

const STATS: Kernel = Kernel::new("batchnorm", "bn_stats");
const EVAL_STATS: Kernel = Kernel::new("batchnorm", "bn_eval_stats");
const APPLY: Kernel = Kernel::new("batchnorm", "bn_apply");
const BWD_REDUCE: Kernel = Kernel::new("batchnorm", "bn_backward_reduce");
const BWD_INPUT: Kernel = Kernel::new("batchnorm", "bn_backward_input");

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
    let (n, c, s) = dims(x.shape())?;
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
    match same_device("batch_norm", &all)? {
        Device::Cpu => {
            let xv = x.cpu_data().unwrap_or_default();
            let (mean, invstd) = if train {
                let (mean, var) = stats_ref(xv, n, c, s);
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
            let mut y = apply_ref(
                xv,
                &mean,
                &invstd,
                gamma.and_then(|t| t.cpu_data()),
                beta.and_then(|t| t.cpu_data()),
                n,
                c,
                s,
            );
            if relu {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            let saved = [mean, invstd].concat();
            Ok(BnForward {
                y: cpu(y, x.shape()),
                saved: cpu(saved, &[2 * c]),
            })
        }
        Device::Gpu(g) => {
            let stats = g.alloc(2 * c);
            let flags = (update_running && train) as u32 | (relu as u32) << 1;
            let p = [
                u(n),
                u(c),
                u(s),
                gamma.is_some() as u32,
                f(cfg.eps),
                f(cfg.momentum),
                flags,
                0,
            ];
            let (rm, rv) = (buf(running_mean), buf(running_var));
            if train {
                g.dispatch(STATS, &[], &[buf(x), &stats, rm, rv], &p, [c as u32, 1, 1]);
            } else {
                g.dispatch(EVAL_STATS, &[], &[&stats, rm, rv], &p, grid_1d(c, 256));
            }
            let out = g.alloc(x.numel());
            let gb = gamma.map(buf).unwrap_or(&stats);
            let bb = beta.map(buf).unwrap_or(&stats);
            g.dispatch(
                APPLY,
                &[],
                &[buf(x), gb, bb, &out, &stats],
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
    let (n, c, s) = dims(x.shape())?;
    match same_device("batch_norm_backward", &[x, gy, saved])? {
        Device::Cpu => {
            let sv = saved.cpu_data().unwrap_or_default();
            let (gx, gg, gb) = backward_ref(
                x.cpu_data().unwrap_or_default(),
                gy.cpu_data().unwrap_or_default(),
                &sv[..c],
                &sv[c..],
                gamma.and_then(|t| t.cpu_data()),
                n,
                c,
                s,
                train,
            );
            Ok((cpu(gx, x.shape()), cpu(gg, &[c]), cpu(gb, &[c])))
        }
        Device::Gpu(g) => {
            let red = g.alloc(2 * c);
            let flags = if train { 0 } else { 4 };
            let p = [u(n), u(c), u(s), gamma.is_some() as u32, 0, 0, flags, 0];
            g.dispatch(
                BWD_REDUCE,
                &[],
                &[buf(x), buf(gy), &red, buf(saved)],
                &p,
                [c as u32, 1, 1],
            );
            let out = g.alloc(x.numel());
            let gam = gamma.map(buf).unwrap_or(buf(saved));
            g.dispatch(
                BWD_INPUT,
                &[],
                &[buf(x), buf(gy), gam, &red, &out, buf(saved)],
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
        let mut inputs = vec![x];
        inputs.extend(gamma);
        inputs.extend(beta);
        let (has_g, has_b) = (gamma.is_some(), beta.is_some());
        let saved = fw.saved;
        // The input's gradient needs the parameters' sums anyway: one backward for all.
        Ok(self.record("batch_norm", fw.y, &inputs, move |gy, _| {
            let (gx, gg, gb) = backward(&xv, gy, &saved, gv.as_ref(), train)?;
            let mut out = vec![Some(gx)];
            if has_g {
                out.push(Some(gg));
            }
            if has_b {
                out.push(Some(gb));
            }
            Ok(out)
        }))
    }
}
