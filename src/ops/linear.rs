//! Matrix products.
//!
//! - matmul: C = op(A)·op(B) with optional transposes; gA = gC·op(B)ᵀ, gB = op(A)ᵀ·gC (mapped
//!   back through the transposes).
//! - linear: y = x·Wᵀ + b with PyTorch's weight layout W [out, in]; gx = gy·W,
//!   gW = gyᵀ·x, gb = Σ_rows gy.
//!
//! Tolerance GPU vs CPU: f32 dot products of length K in another order:
//! atol 1e-5·√K·(typical |a||b|), rtol 1e-4.

use super::{buf, cpu, TResult};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::gemm::{matmul_fast, matmul_ref};
use crate::ops::reduce::col_sum;
use crate::tensor::{same_device, Device, Tensor};

/// (m, n, k) of op(A)·op(B), or a shape error naming both shapes.
fn dims(
    op: &'static str,
    a: &[usize],
    b: &[usize],
    ta: bool,
    tb: bool,
) -> Result<(usize, usize, usize)> {
    let (&[a0, a1], &[b0, b1]) = (a, b) else {
        return Err(Error::shape(
            op,
            format!("expects matrices, got {a:?} and {b:?}"),
        ));
    };
    let (m, ka) = if ta { (a1, a0) } else { (a0, a1) };
    let (kb, n) = if tb { (b1, b0) } else { (b0, b1) };
    if ka != kb {
        return Err(Error::shape(
            op,
            format!(
                "inner dimensions differ: {a:?}{} · {b:?}{}",
                if ta { "ᵀ" } else { "" },
                if tb { "ᵀ" } else { "" }
            ),
        ));
    }
    Ok((m, n, ka))
}

/// op(A)·op(B) (+ bias[n]).
pub fn matmul_t(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, ta: bool, tb: bool) -> TResult {
    let (m, n, k) = dims("matmul", a.shape(), b.shape(), ta, tb)?;
    let mut ts = vec![a, b];
    if let Some(bias) = bias {
        if bias.shape() != [n] {
            return Err(Error::shape(
                "matmul",
                format!("bias of shape {:?} for {n} columns", bias.shape()),
            ));
        }
        ts.push(bias);
    }
    match same_device("matmul", &ts)? {
        Device::Cpu => {
            let (a, b) = (
                a.cpu_data().unwrap_or_default(),
                b.cpu_data().unwrap_or_default(),
            );
            let bias = bias.and_then(|t| t.cpu_data());
            Ok(cpu(
                if super::reference_kernels() {
                    matmul_ref(a, b, bias, m, n, k, ta, tb)
                } else {
                    matmul_fast(a, b, bias, m, n, k, ta, tb)
                },
                &[m, n],
            ))
        }
        Device::Gpu(g) => {
            if m * n == 0 {
                return Ok(Tensor::from_gpu(&g, g.alloc(0), &[m, n]));
            }
            if k == 0 {
                return crate::ops::elementwise::fill(0.0, &[m, n], &Device::Gpu(g));
            }
            let out = g.alloc(m * n);
            crate::ops::gemm::matmul_gpu(
                &g,
                buf(a),
                buf(b),
                bias.map(buf),
                [m, n, k],
                ta,
                tb,
                &out,
            );
            Ok(Tensor::from_gpu(&g, out, &[m, n]))
        }
    }
}

pub fn matmul(a: &Tensor, b: &Tensor) -> TResult {
    matmul_t(a, b, None, false, false)
}

/// y = x·Wᵀ + b.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> TResult {
    matmul_t(x, w, b, false, true).map_err(|e| match e {
        Error::Shape { msg, .. } => Error::shape(
            "linear",
            format!("input {:?}, weight {:?}: {msg}", x.shape(), w.shape()),
        ),
        e => e,
    })
}

/// An operand of a product's gradient: A, B, or G (the output gradient).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    A,
    B,
    G,
}

/// For C = op(A)·op(B), the products giving gA and gB: (lhs, rhs, transpose lhs, transpose
/// rhs). With A' = op(A), B' = op(B): gA' = gC·B'ᵀ and gB' = A'ᵀ·gC, mapped back through the
/// transposes. Shared by the tape and the f64 gradient check.
pub fn matmul_grad_plan(ta: bool, tb: bool) -> [(Operand, Operand, bool, bool); 2] {
    use Operand::*;
    let ga = if ta {
        (B, G, tb, true)
    } else {
        (G, B, false, !tb)
    };
    let gb = if tb {
        (G, A, true, ta)
    } else {
        (A, G, !ta, false)
    };
    [ga, gb]
}

/// The gradients of op(A)·op(B) for the operands in `needs` (each a product of two).
fn grads(
    a: &Tensor,
    b: &Tensor,
    gc: &Tensor,
    ta: bool,
    tb: bool,
    needs: &[bool],
) -> Result<[Option<Tensor>; 2]> {
    let pick = |o: Operand| match o {
        Operand::A => a,
        Operand::B => b,
        Operand::G => gc,
    };
    let [p, q] = matmul_grad_plan(ta, tb);
    let need = |i: usize| needs.get(i).copied().unwrap_or(true);
    Ok([
        need(0)
            .then(|| matmul_t(pick(p.0), pick(p.1), None, p.2, p.3))
            .transpose()?,
        need(1)
            .then(|| matmul_t(pick(q.0), pick(q.1), None, q.2, q.3))
            .transpose()?,
    ])
}

impl Tape {
    /// op(A)·op(B).
    pub fn matmul_t(&mut self, a: Var, b: Var, ta: bool, tb: bool) -> Result<Var> {
        let (av, bv) = (self.value(a).clone(), self.value(b).clone());
        let y = matmul_t(&av, &bv, None, ta, tb)?;
        Ok(self.record("matmul", y, &[a, b], move |gc, needs| {
            Ok(grads(&av, &bv, gc, ta, tb, needs)?.into())
        }))
    }

    pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.matmul_t(a, b, false, false)
    }

    /// y = x·Wᵀ + b (W [out, in], PyTorch layout).
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let (xv, wv) = (self.value(x).clone(), self.value(w).clone());
        let bv = b.map(|b| self.value(b).clone());
        let y = linear(&xv, &wv, bv.as_ref())?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        let has_bias = b.is_some();
        Ok(self.record("linear", y, &inputs, move |gy, needs| {
            // y = x·Wᵀ is the product with tb = true.
            let mut out: Vec<Option<Tensor>> = grads(&xv, &wv, gy, false, true, needs)?.into();
            if has_bias {
                out.push(needs[2].then(|| col_sum(gy, 1.0)).transpose()?);
            }
            Ok(out)
        }))
    }
}
