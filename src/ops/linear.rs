//! Matrix products.
//!
//! - matmul: C = op(A)·op(B) with optional transposes; gA = gC·op(B)ᵀ, gB = op(A)ᵀ·gC (mapped
//!   back through the transposes).
//! - linear: y = x·Wᵀ + b with PyTorch's weight layout W [out, in]; gx = gy·W,
//!   gW = gyᵀ·x, gb = Σ_rows gy.
//!
//! Tolerance GPU vs CPU: f32 dot products of length K in another order:
//! atol 1e-5·√K·(typical |a||b|), rtol 1e-4.

use super::{buf, cpu, u, Real, TResult};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::gpu::{Kernel, KernelVariant};
use crate::ops::conv2d_window;
use crate::ops::reduce::col_sum;
use crate::tensor::{same_device, Device, Tensor};
use rayon::prelude::*;

const MATMUL_REG: Kernel = Kernel::new("matmul", "matmul_reg");
const MATMUL_TILED: Kernel = Kernel::new("matmul", "matmul_tiled");

/// C[m, n] = op(A)·op(B) (+ bias). Rows of C are computed in parallel for the f32 path.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ref<T: Real>(
    a: &[T],
    b: &[T],
    bias: Option<&[T]>,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
) -> Vec<T> {
    let mut c = vec![T::zero(); m * n];
    c.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, row)| {
        for kk in 0..k {
            let av = if ta { a[kk * m + i] } else { a[i * k + kk] };
            if tb {
                for (j, cj) in row.iter_mut().enumerate() {
                    *cj += av * b[j * k + kk];
                }
            } else {
                let brow = &b[kk * n..(kk + 1) * n];
                for (cj, &bv) in row.iter_mut().zip(brow) {
                    *cj += av * bv;
                }
            }
        }
        if let Some(bias) = bias {
            for (cj, &bv) in row.iter_mut().zip(bias) {
                *cj += bv;
            }
        }
    });
    c
}

/// A matrix operand of the fast CPU kernels: element (i, j) of an r×c matrix at
/// `data[i·rs + j·cs]` (row-major: rs = c, cs = 1; its transpose swaps the strides).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// `data` as a row-major rows×cols matrix, or its transpose (`data` then holds cols×rows).
    pub fn new(data: &'a [f32], rows: usize, cols: usize, transposed: bool) -> Self {
        let (rs, cs) = if transposed { (1, rows) } else { (cols, 1) };
        MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }
    /// The largest index the matrix covers (`None` on overflow).
    fn last(&self) -> Option<usize> {
        let r = (self.rows.max(1) - 1).checked_mul(self.rs)?;
        let c = (self.cols.max(1) - 1).checked_mul(self.cs)?;
        r.checked_add(c)
    }
}

/// dst (m×n, row-major) = lhs·rhs, or += when `accumulate`, through the `gemm` crate;
/// `threads` > 1 splits the product over rayon's pool (each output element is still one
/// thread's ordered sum, so the result does not depend on the split).
pub(crate) fn gemm_f32(
    dst: &mut [f32],
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
    threads: usize,
) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    // The bounds the unsafe call relies on (internal invariants: callers pass sizes from
    // one shape rule).
    assert!(
        rhs.rows == k && m.checked_mul(n).is_some_and(|mn| dst.len() >= mn),
        "gemm_f32: {m}x{k} · {}x{n} into {}",
        rhs.rows,
        dst.len()
    );
    if m * n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(
        lhs.last().is_some_and(|l| l < lhs.data.len())
            && rhs.last().is_some_and(|l| l < rhs.data.len()),
        "gemm_f32: operand strides leave their slices"
    );
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the product reads or writes lies within the slices (checked
    // above: the largest index of each operand and m·n for the destination), and dst
    // does not alias the operands (a `&mut` borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// Threads for a product of `flops` on the CPU path: one below ~1 MFLOP (rayon's hand-off
/// costs more than it saves), rayon's pool above.
pub(crate) fn cpu_threads(flops: usize) -> usize {
    if flops < 1 << 20 {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// The CPU path's op(A)·op(B) (+ bias): the fast kernel, tested against `matmul_ref`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_fast(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    gemm_f32(
        &mut c,
        MatRef::new(a, m, k, ta),
        MatRef::new(b, k, n, tb),
        false,
        cpu_threads(2 * m * n * k),
    );
    if let Some(bias) = bias {
        for row in c.chunks_mut(n.max(1)) {
            row.iter_mut().zip(bias).for_each(|(c, b)| *c += b);
        }
    }
    c
}

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
            // CPU adapters: untransposed B through uniform windows, as a 1×1 convolution
            // (~20× the storage kernel on llvmpipe, see conv2d_window).
            if g.conv_windows() && bias.is_none() && !tb {
                if let Some(out) = conv2d_window::matmul(&g, buf(a), buf(b), [m, n, k], ta) {
                    return Ok(Tensor::from_gpu(&g, out, &[m, n]));
                }
            }
            let out = g.alloc(m * n);
            // A bias binding is always needed; without bias, any buffer will do (never read).
            let bias_buf = bias.map(buf).unwrap_or(buf(a));
            let params = [
                u(m),
                u(n),
                u(k),
                ta as u32,
                tb as u32,
                bias.is_some() as u32,
                0,
                0,
            ];
            let (kernel, grid) = match g.variant {
                KernelVariant::RegisterTiled => (
                    MATMUL_REG,
                    [n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1],
                ),
                KernelVariant::WorkgroupTiled => (
                    MATMUL_TILED,
                    [n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1],
                ),
            };
            g.dispatch(
                kernel,
                &[],
                &[buf(a), buf(b), bias_buf, &out],
                &params,
                grid,
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
