//! Reductions.
//!
//! - sum: y = Σ x (a one-element tensor); gx = gy broadcast. mean = sum / n.
//! - row_sum: [M, N] → [M], y_i = Σ_j x_ij; gx_ij = gy_i.
//! - col_sum: [M, N] → [N] (bias gradients and split-K partial sums; no tape method needed).
//!
//! Tolerance GPU vs CPU: the GPU sums in a different order; atol 1e-5·√n·max|x|, rtol 1e-5.

use super::{buf, cpu, f, u, Real, TResult};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, Kernel};
use crate::ops::elementwise::broadcast_scalar;
use crate::tensor::{Storage, Tensor};

const SUM_ALL: Kernel = Kernel::new("reduce", "sum_all");
const COL_SUM: Kernel = Kernel::new("reduce", "col_sum");
const ROW_SUM: Kernel = Kernel::new("reduce", "row_sum");
const ROW_BROADCAST: Kernel = Kernel::new("reduce", "row_broadcast");

pub fn sum_ref<T: Real>(x: &[T]) -> T {
    x.iter().copied().sum()
}

pub fn row_sum_ref<T: Real>(x: &[T], m: usize, n: usize) -> Vec<T> {
    (0..m)
        .map(|i| x[i * n..(i + 1) * n].iter().copied().sum())
        .collect()
}

pub fn col_sum_ref<T: Real>(x: &[T], m: usize, n: usize) -> Vec<T> {
    let mut out = vec![T::zero(); n];
    for i in 0..m {
        for j in 0..n {
            out[j] += x[i * n + j];
        }
    }
    out
}

pub fn row_broadcast_ref<T: Real>(g: &[T], n: usize) -> Vec<T> {
    g.iter().flat_map(|&v| std::iter::repeat_n(v, n)).collect()
}

fn matrix(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape() {
        [m, n] => Ok((*m, *n)),
        s => Err(Error::shape(
            op,
            format!("expects a matrix [M, N], got {s:?}"),
        )),
    }
}

/// scale · Σ x, as a tensor of shape [1].
pub fn sum_scaled(x: &Tensor, scale: f32) -> TResult {
    match x.storage() {
        Storage::Cpu(v) => Ok(cpu(vec![sum_ref(v) * scale], &[1])),
        Storage::Gpu(g, b) => {
            let out = g.alloc(1);
            g.dispatch(
                SUM_ALL,
                &[],
                &[b, &out],
                &[u(x.numel()), 0, f(scale), 0],
                [1, 1, 1],
            );
            Ok(Tensor::from_gpu(g, out, &[1]))
        }
    }
}

pub fn sum(x: &Tensor) -> TResult {
    sum_scaled(x, 1.0)
}

pub fn mean(x: &Tensor) -> TResult {
    sum_scaled(x, 1.0 / x.numel() as f32)
}

/// Column sums of [M, N], scaled: [N].
pub fn col_sum(x: &Tensor, scale: f32) -> TResult {
    let (m, n) = matrix("col_sum", x)?;
    match x.storage() {
        Storage::Cpu(v) => Ok(cpu(
            col_sum_ref(v, m, n)
                .into_iter()
                .map(|s| s * scale)
                .collect(),
            &[n],
        )),
        Storage::Gpu(g, b) => {
            let out = g.alloc(n);
            g.dispatch(
                COL_SUM,
                &[],
                &[b, &out],
                &[u(m), u(n), f(scale), 0],
                grid_1d(n, 256),
            );
            Ok(Tensor::from_gpu(g, out, &[n]))
        }
    }
}

pub fn row_sum(x: &Tensor) -> TResult {
    let (m, n) = matrix("row_sum", x)?;
    match x.storage() {
        Storage::Cpu(v) => Ok(cpu(row_sum_ref(v, m, n), &[m])),
        Storage::Gpu(g, b) => {
            let out = g.alloc(m);
            g.dispatch(
                ROW_SUM,
                &[],
                &[b, &out],
                &[u(m), u(n), f(1.0), 0],
                grid_1d(m, 256),
            );
            Ok(Tensor::from_gpu(g, out, &[m]))
        }
    }
}

/// [M] → [M, N] with out_ij = g_i · scale.
pub fn row_broadcast(g: &Tensor, n: usize, scale: f32) -> TResult {
    let m = g.numel();
    match g.storage() {
        Storage::Cpu(v) => Ok(cpu(
            row_broadcast_ref(v, n)
                .into_iter()
                .map(|s| s * scale)
                .collect(),
            &[m, n],
        )),
        Storage::Gpu(gpu, _) => {
            let out = gpu.alloc(m * n);
            gpu.dispatch(
                ROW_BROADCAST,
                &[],
                &[buf(g), &out],
                &[u(m), u(n), f(scale), 0],
                grid_1d(m * n, 256),
            );
            Ok(Tensor::from_gpu(gpu, out, &[m, n]))
        }
    }
}

impl Tape {
    pub fn sum(&mut self, x: Var) -> Result<Var> {
        let shape = self.value(x).shape().to_vec();
        let y = sum(self.value(x))?;
        Ok(self.record("sum", y, &[x], move |gy, _| {
            Ok(vec![Some(broadcast_scalar(gy, 1.0, &shape)?)])
        }))
    }

    pub fn mean(&mut self, x: Var) -> Result<Var> {
        let shape = self.value(x).shape().to_vec();
        let n = self.value(x).numel() as f32;
        let y = mean(self.value(x))?;
        Ok(self.record("mean", y, &[x], move |gy, _| {
            Ok(vec![Some(broadcast_scalar(gy, 1.0 / n, &shape)?)])
        }))
    }

    /// [M, N] → [M], summing each row.
    pub fn row_sum(&mut self, x: Var) -> Result<Var> {
        let n = matrix("row_sum", self.value(x))?.1;
        let y = row_sum(self.value(x))?;
        Ok(self.record("row_sum", y, &[x], move |gy, _| {
            Ok(vec![Some(row_broadcast(gy, n, 1.0)?)])
        }))
    }
}
