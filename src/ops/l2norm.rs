//! Row-wise L2 normalisation and cosine similarity.
//!
//! - l2_normalize: y = x / max(‖x‖, ε), ε = 1e-12 (F.normalize);
//!   gx = (gy − y·⟨gy, y⟩)/‖x‖ for ‖x‖ > ε, gy/ε otherwise.
//! - cosine_similarity(a, b) = row_sum(normalize(a) ⊙ normalize(b)): composed, so its
//!   gradient comes from the pieces.
//!
//! Tolerance GPU vs CPU: sums of D squares: atol 1e-6, rtol 1e-5.

use super::{cpu, f, u, Real, TResult};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::gpu::Kernel;
use crate::tensor::{same_device, same_shape, Device, Tensor};

const FWD: Kernel = Kernel::new("l2norm", "l2_normalize_forward");
const BWD: Kernel = Kernel::new("l2norm", "l2_normalize_backward");
pub const EPS: f32 = 1e-12;

pub fn forward_ref<T: Real>(x: &[T], n: usize, d: usize, eps: T) -> Vec<T> {
    let mut y = vec![T::zero(); n * d];
    for r in 0..n {
        let row = &x[r * d..(r + 1) * d];
        let norm = row.iter().map(|&v| v * v).sum::<T>().sqrt().max(eps);
        for j in 0..d {
            y[r * d + j] = row[j] / norm;
        }
    }
    y
}

pub fn backward_ref<T: Real>(x: &[T], gy: &[T], n: usize, d: usize, eps: T) -> Vec<T> {
    let mut gx = vec![T::zero(); n * d];
    for r in 0..n {
        let (row, g) = (&x[r * d..(r + 1) * d], &gy[r * d..(r + 1) * d]);
        let norm = row.iter().map(|&v| v * v).sum::<T>().sqrt();
        if norm > eps {
            let dot: T = row.iter().zip(g).map(|(&a, &b)| a * b).sum();
            for j in 0..d {
                gx[r * d + j] = g[j] / norm - row[j] * dot / (norm * norm * norm);
            }
        } else {
            for j in 0..d {
                gx[r * d + j] = g[j] / eps;
            }
        }
    }
    gx
}

fn dims(x: &[usize]) -> Result<(usize, usize)> {
    match *x {
        [n, d] => Ok((n, d)),
        _ => Err(Error::shape(
            "l2_normalize",
            format!("expects [N, D], got {x:?}"),
        )),
    }
}

pub fn l2_normalize(x: &Tensor) -> TResult {
    let (n, d) = dims(x.shape())?;
    match x.device() {
        Device::Cpu => Ok(cpu(
            forward_ref(x.cpu_data().unwrap_or_default(), n, d, EPS),
            x.shape(),
        )),
        Device::Gpu(g) => Ok(super::row_kernel(
            &g,
            FWD,
            &[x],
            &[u(n), u(d), f(EPS), 0],
            n,
            x.shape(),
        )),
    }
}

pub fn l2_normalize_backward(x: &Tensor, gy: &Tensor) -> TResult {
    let (n, d) = dims(x.shape())?;
    same_shape("l2_normalize_backward", x, gy)?;
    match same_device("l2_normalize_backward", &[x, gy])? {
        Device::Cpu => Ok(cpu(
            backward_ref(
                x.cpu_data().unwrap_or_default(),
                gy.cpu_data().unwrap_or_default(),
                n,
                d,
                EPS,
            ),
            x.shape(),
        )),
        Device::Gpu(g) => Ok(super::row_kernel(
            &g,
            BWD,
            &[x, gy],
            &[u(n), u(d), f(EPS), 0],
            n,
            x.shape(),
        )),
    }
}

impl Tape {
    pub fn l2_normalize(&mut self, x: Var) -> Result<Var> {
        let xv = self.value(x).clone();
        let y = l2_normalize(&xv)?;
        Ok(self.record("l2_normalize", y, &[x], move |gy, _| {
            Ok(vec![Some(l2_normalize_backward(&xv, gy)?)])
        }))
    }

    /// Row-wise cosine similarity of two [N, D] matrices: [N].
    pub fn cosine_similarity(&mut self, a: Var, b: Var) -> Result<Var> {
        same_shape("cosine_similarity", self.value(a), self.value(b))?;
        let an = self.l2_normalize(a)?;
        let bn = self.l2_normalize(b)?;
        let p = self.mul(an, bn)?;
        self.row_sum(p)
    }
}
