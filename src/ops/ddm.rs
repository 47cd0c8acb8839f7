//! CLSA's distribution divergence (SPEC B.4, D.10): the strong query's distribution over the
//! keys and the queue learns to match the weak query's, fused over the similarity rows.
//!
//! With scale = 1/T₂, weak sim w [N, M] (detached) and strong sim s [N, M]:
//!   p_w = softmax(scale·w_i), log p_s = scale·s_i − lse(scale·s_i),
//!   loss_i = −Σ_j p_w,ij·log p_s,ij = lse(scale·s_i) − scale·Σ_j p_w,ij·s_ij;
//!   ∂loss_i/∂s_ij = scale·(p_s,ij − p_w,ij) (Σ_j p_w = 1); nothing flows to w.
//! The reference computes p_w from the weak logits at T and rescales them by T/T₂, which is
//! softmax(w/T₂): the same thing.
//!
//! The kernels take a workgroup per row (rows are B + K long) with tree reductions.
//! Tolerance GPU vs CPU: exp/log over M terms in f32, reduced in another order: atol 1e-5,
//! rtol 1e-4.

use super::{cpu, u, Real, TResult};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::gpu::Kernel;
use crate::tensor::{same_device, Device, Tensor};

const FWD: Kernel = Kernel::new("ddm", "ddm_forward");
const BWD: Kernel = Kernel::new("ddm", "ddm_backward");

/// (lse of scale·row, its max) of one row.
fn lse<T: Real>(row: &[T], scale: T) -> T {
    let m = row
        .iter()
        .map(|&v| v * scale)
        .fold(T::neg_infinity(), T::max);
    row.iter().map(|&v| (v * scale - m).exp()).sum::<T>().ln() + m
}

/// Per-row losses of weak / strong similarity rows [N, M].
pub fn forward_ref<T: Real>(weak: &[T], strong: &[T], n: usize, m: usize, scale: T) -> Vec<T> {
    (0..n)
        .map(|i| {
            let (w, s) = (&weak[i * m..(i + 1) * m], &strong[i * m..(i + 1) * m]);
            let (lw, ls) = (lse(w, scale), lse(s, scale));
            let cross: T = w
                .iter()
                .zip(s)
                .map(|(&a, &b)| (a * scale - lw).exp() * (b * scale - ls))
                .sum();
            -cross
        })
        .collect()
}

/// Gradient of Σ_i g_i·loss_i with respect to the strong rows.
pub fn backward_ref<T: Real>(
    weak: &[T],
    strong: &[T],
    g: &[T],
    n: usize,
    m: usize,
    scale: T,
) -> Vec<T> {
    let mut out = vec![T::zero(); n * m];
    for i in 0..n {
        let (w, s) = (&weak[i * m..(i + 1) * m], &strong[i * m..(i + 1) * m]);
        let (lw, ls) = (lse(w, scale), lse(s, scale));
        for j in 0..m {
            let (pw, ps) = ((w[j] * scale - lw).exp(), (s[j] * scale - ls).exp());
            out[i * m + j] = (ps - pw) * scale * g[i];
        }
    }
    out
}

fn check(weak: &Tensor, strong: &Tensor) -> Result<(usize, usize)> {
    match (weak.shape(), strong.shape()) {
        (&[n, m], b) if b == [n, m] && m > 0 => Ok((n, m)),
        (a, b) => Err(Error::shape(
            "ddm",
            format!("weak {a:?} and strong {b:?} similarities must both be [N, M]"),
        )),
    }
}

/// Per-row DDM losses [N].
pub fn ddm(weak: &Tensor, strong: &Tensor, scale: f32) -> TResult {
    let (n, m) = check(weak, strong)?;
    match same_device("ddm", &[weak, strong])? {
        Device::Cpu => Ok(cpu(
            forward_ref(
                weak.cpu_data().unwrap_or_default(),
                strong.cpu_data().unwrap_or_default(),
                n,
                m,
                scale,
            ),
            &[n],
        )),
        Device::Gpu(g) => Ok(super::row_kernel(
            &g,
            FWD,
            &[weak, strong],
            &[u(n), u(m), scale.to_bits(), 0],
            n,
            &[n],
        )),
    }
}

/// Gradient of Σ_i g_i·loss_i with respect to the strong similarities.
pub fn ddm_backward(weak: &Tensor, strong: &Tensor, grad: &Tensor, scale: f32) -> TResult {
    let (n, m) = check(weak, strong)?;
    match same_device("ddm_backward", &[weak, strong, grad])? {
        Device::Cpu => Ok(cpu(
            backward_ref(
                weak.cpu_data().unwrap_or_default(),
                strong.cpu_data().unwrap_or_default(),
                grad.cpu_data().unwrap_or_default(),
                n,
                m,
                scale,
            ),
            &[n, m],
        )),
        Device::Gpu(g) => Ok(super::row_kernel(
            &g,
            BWD,
            &[weak, strong, grad],
            &[u(n), u(m), scale.to_bits(), 0],
            n,
            &[n, m],
        )),
    }
}

impl Tape {
    /// Per-row DDM [N] of the strong similarities against the weak ones (`scale` = 1/T₂). The
    /// weak side is a constant here: no gradient reaches it.
    pub fn ddm(&mut self, weak: Var, strong: Var, scale: f32) -> Result<Var> {
        let (w, s) = (self.value(weak).clone(), self.value(strong).clone());
        let y = ddm(&w, &s, scale)?;
        Ok(self.record("ddm", y, &[strong], move |g, _| {
            Ok(vec![Some(ddm_backward(&w, &s, g, scale)?)])
        }))
    }
}
