//! Fused log-softmax + cross-entropy over rows of logits [N, K] with integer labels (stored
//! as f32 class indices).
//!
//! loss_i = logsumexp(x_i) − x_i,y_i; mean over rows for `cross_entropy` (PyTorch's default).
//! gx_ij = (softmax(x_i)_j − [j = y_i])·g_i.
//!
//! Tolerance GPU vs CPU: exp/log of O(10) logits over K terms: atol 1e-5, rtol 1e-5.

use super::{buf, cpu, u, Real, TResult};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, Kernel};
use crate::tensor::{same_device, Device, Tensor};

const FWD: Kernel = Kernel::new("cross_entropy", "cross_entropy_forward");
const BWD: Kernel = Kernel::new("cross_entropy", "cross_entropy_backward");

fn lse<T: Real>(row: &[T]) -> T {
    let m = row.iter().copied().fold(T::neg_infinity(), T::max);
    row.iter().map(|&v| (v - m).exp()).sum::<T>().ln() + m
}

/// Per-row losses.
pub fn forward_ref<T: Real>(x: &[T], labels: &[usize], n: usize, k: usize) -> Vec<T> {
    (0..n)
        .map(|i| lse(&x[i * k..(i + 1) * k]) - x[i * k + labels[i]])
        .collect()
}

/// Gradient of Σ_i g_i·loss_i.
pub fn backward_ref<T: Real>(x: &[T], labels: &[usize], g: &[T], n: usize, k: usize) -> Vec<T> {
    let mut gx = vec![T::zero(); n * k];
    for i in 0..n {
        let row = &x[i * k..(i + 1) * k];
        let l = lse(row);
        for j in 0..k {
            let onehot = if j == labels[i] { T::one() } else { T::zero() };
            gx[i * k + j] = ((row[j] - l).exp() - onehot) * g[i];
        }
    }
    gx
}

/// Validate shapes and label values; returns (N, K).
fn check(logits: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
    let &[n, k] = logits.shape() else {
        return Err(Error::shape(
            "cross_entropy",
            format!("expects logits [N, K], got {:?}", logits.shape()),
        ));
    };
    if labels.shape() != [n] {
        return Err(Error::shape(
            "cross_entropy",
            format!(
                "labels of shape {:?} for logits {:?}",
                labels.shape(),
                logits.shape()
            ),
        ));
    }
    if let Some(l) = labels.cpu_data() {
        if let Some(bad) = l
            .iter()
            .find(|&&v| v < 0.0 || v as usize >= k || v.fract() != 0.0)
        {
            return Err(Error::shape(
                "cross_entropy",
                format!("label {bad} outside 0..{k}"),
            ));
        }
    }
    Ok((n, k))
}

fn labels_usize(labels: &Tensor) -> Result<Vec<usize>> {
    Ok(labels.to_vec()?.into_iter().map(|v| v as usize).collect())
}

/// Per-row losses [N].
pub fn cross_entropy_rows(logits: &Tensor, labels: &Tensor) -> TResult {
    let (n, k) = check(logits, labels)?;
    match same_device("cross_entropy", &[logits, labels])? {
        Device::Cpu => Ok(cpu(
            forward_ref(
                logits.cpu_data().unwrap_or_default(),
                &labels_usize(labels)?,
                n,
                k,
            ),
            &[n],
        )),
        Device::Gpu(g) => {
            let out = g.alloc(n);
            g.dispatch(
                FWD,
                &[],
                &[buf(logits), buf(labels), &out],
                &[u(n), u(k), 0, 0],
                grid_1d(n, 64),
            );
            Ok(Tensor::from_gpu(&g, out, &[n]))
        }
    }
}

/// Gradient of Σ_i g_i·loss_i with respect to the logits.
pub fn cross_entropy_rows_backward(logits: &Tensor, labels: &Tensor, g: &Tensor) -> TResult {
    let (n, k) = check(logits, labels)?;
    match same_device("cross_entropy_backward", &[logits, labels, g])? {
        Device::Cpu => Ok(cpu(
            backward_ref(
                logits.cpu_data().unwrap_or_default(),
                &labels_usize(labels)?,
                g.cpu_data().unwrap_or_default(),
                n,
                k,
            ),
            &[n, k],
        )),
        Device::Gpu(gpu) => {
            let out = gpu.alloc(n * k);
            gpu.dispatch(
                BWD,
                &[],
                &[buf(logits), buf(labels), buf(g), &out],
                &[u(n), u(k), 0, 0],
                grid_1d(n, 64),
            );
            Ok(Tensor::from_gpu(&gpu, out, &[n, k]))
        }
    }
}

impl Tape {
    /// Per-row cross-entropy [N]; `labels` is a constant tensor of class indices.
    pub fn cross_entropy_rows(&mut self, logits: Var, labels: &Tensor) -> Result<Var> {
        let (lv, lab) = (self.value(logits).clone(), labels.clone());
        let y = cross_entropy_rows(&lv, &lab)?;
        Ok(self.record("cross_entropy", y, &[logits], move |g, _| {
            Ok(vec![Some(cross_entropy_rows_backward(&lv, &lab, g)?)])
        }))
    }

    /// Mean cross-entropy (a one-element tensor).
    pub fn cross_entropy(&mut self, logits: Var, labels: &Tensor) -> Result<Var> {
        let rows = self.cross_entropy_rows(logits, labels)?;
        self.mean(rows)
    }
}

/// Which entries of a contrastive similarity matrix take part, and which is the positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NceMode {
    /// NT-Xent over 2B embeddings (sim [2B, 2B]): the self-similarity is removed, the positive
    /// of row i is its other view (i + B) mod 2B.
    NtXent,
    /// MoCo (sim [B, B + K], columns = [in-batch keys | queue]): other rows' keys are removed,
    /// the positive of row i is column i.
    Moco { in_batch: usize },
}

impl NceMode {
    fn masked(self, i: usize, j: usize) -> bool {
        match self {
            NceMode::NtXent => j == i,
            NceMode::Moco { in_batch } => j < in_batch && j != i,
        }
    }
    fn label(self, i: usize, n: usize) -> usize {
        match self {
            NceMode::NtXent => (i + n / 2) % n,
            NceMode::Moco { .. } => i,
        }
    }
    fn code(self) -> (u32, u32) {
        match self {
            NceMode::NtXent => (0, 0),
            NceMode::Moco { in_batch } => (1, in_batch as u32),
        }
    }
}

fn nce_lse<T: Real>(row: &[T], i: usize, mode: NceMode, scale: T) -> T {
    let vals = || {
        row.iter()
            .enumerate()
            .filter(|(j, _)| !mode.masked(i, *j))
            .map(|(_, &v)| v * scale)
    };
    let m = vals().fold(T::neg_infinity(), T::max);
    vals().map(|v| (v - m).exp()).sum::<T>().ln() + m
}

/// Per-row contrastive losses of `sim` [N, M].
pub fn info_nce_ref<T: Real>(sim: &[T], n: usize, m: usize, mode: NceMode, scale: T) -> Vec<T> {
    (0..n)
        .map(|i| {
            nce_lse(&sim[i * m..(i + 1) * m], i, mode, scale)
                - scale * sim[i * m + mode.label(i, n)]
        })
        .collect()
}

/// Gradient of Σ_i g_i·loss_i with respect to `sim`.
pub fn info_nce_backward_ref<T: Real>(
    sim: &[T],
    g: &[T],
    n: usize,
    m: usize,
    mode: NceMode,
    scale: T,
) -> Vec<T> {
    let mut out = vec![T::zero(); n * m];
    for i in 0..n {
        let row = &sim[i * m..(i + 1) * m];
        let lse = nce_lse(row, i, mode, scale);
        for j in 0..m {
            if !mode.masked(i, j) {
                let onehot = if j == mode.label(i, n) {
                    T::one()
                } else {
                    T::zero()
                };
                out[i * m + j] = ((scale * row[j] - lse).exp() - onehot) * g[i] * scale;
            }
        }
    }
    out
}

const NCE_FWD: Kernel = Kernel::new("info_nce", "info_nce_forward");
const NCE_BWD: Kernel = Kernel::new("info_nce", "info_nce_backward");

fn nce_check(sim: &Tensor, mode: NceMode) -> Result<(usize, usize)> {
    let &[n, m] = sim.shape() else {
        return Err(Error::shape(
            "info_nce",
            format!("expects a similarity matrix [N, M], got {:?}", sim.shape()),
        ));
    };
    let ok = match mode {
        NceMode::NtXent => n == m && n % 2 == 0,
        NceMode::Moco { in_batch } => in_batch == n && m > n,
    };
    if !ok {
        return Err(Error::shape(
            "info_nce",
            format!("similarity {:?} does not fit {mode:?}", sim.shape()),
        ));
    }
    Ok((n, m))
}

/// Per-row losses [N] of the scaled, masked similarity matrix.
pub fn info_nce(sim: &Tensor, mode: NceMode, scale: f32) -> TResult {
    let (n, m) = nce_check(sim, mode)?;
    match sim.device() {
        Device::Cpu => Ok(cpu(
            info_nce_ref(sim.cpu_data().unwrap_or_default(), n, m, mode, scale),
            &[n],
        )),
        Device::Gpu(g) => {
            let (code, nb) = mode.code();
            let out = g.alloc(n);
            g.dispatch(
                NCE_FWD,
                &[],
                &[buf(sim), &out],
                &[u(n), u(m), scale.to_bits(), code, nb, 0, 0, 0],
                grid_1d(n, 64),
            );
            Ok(Tensor::from_gpu(&g, out, &[n]))
        }
    }
}

pub fn info_nce_backward(sim: &Tensor, grad: &Tensor, mode: NceMode, scale: f32) -> TResult {
    let (n, m) = nce_check(sim, mode)?;
    match same_device("info_nce_backward", &[sim, grad])? {
        Device::Cpu => Ok(cpu(
            info_nce_backward_ref(
                sim.cpu_data().unwrap_or_default(),
                grad.cpu_data().unwrap_or_default(),
                n,
                m,
                mode,
                scale,
            ),
            &[n, m],
        )),
        Device::Gpu(g) => {
            let (code, nb) = mode.code();
            let out = g.alloc(n * m);
            g.dispatch(
                NCE_BWD,
                &[],
                &[buf(sim), buf(grad), &out],
                &[u(n), u(m), scale.to_bits(), code, nb, 0, 0, 0],
                grid_1d(n, 64),
            );
            Ok(Tensor::from_gpu(&g, out, &[n, m]))
        }
    }
}

impl Tape {
    /// Per-row InfoNCE / NT-Xent losses of a similarity matrix, fused: the masking, the
    /// temperature (`scale` = 1/τ) and the softmax happen inside one kernel each way, so the
    /// similarity matrix and its gradient are the only N×M matrices.
    pub fn info_nce(&mut self, sim: Var, mode: NceMode, scale: f32) -> Result<Var> {
        let sv = self.value(sim).clone();
        let y = info_nce(&sv, mode, scale)?;
        Ok(self.record("info_nce", y, &[sim], move |g, _| {
            Ok(vec![Some(info_nce_backward(&sv, g, mode, scale)?)])
        }))
    }
}
