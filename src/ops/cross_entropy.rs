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
        Ok(self.record("cross_entropy", y, &[logits], move |g| {
            Ok(vec![Some(cross_entropy_rows_backward(&lv, &lab, g)?)])
        }))
    }

    /// Mean cross-entropy (a one-element tensor).
    pub fn cross_entropy(&mut self, logits: Var, labels: &Tensor) -> Result<Var> {
        let rows = self.cross_entropy_rows(logits, labels)?;
        self.mean(rows)
    }
}
