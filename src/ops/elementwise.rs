//! Elementwise ops (same shapes, no broadcasting: the broadcasts a ResNet needs are fused into
//! the ops that need them).
//!
//! - ReLU: y = max(x, 0); dy/dx = 1 for x > 0, else 0 (PyTorch's choice at exactly 0).
//! - add: y = a + b; both gradients are gy.
//! - mul: y = a * b; ga = gy * b, gb = gy * a.
//! - affine (scalar ops): y = x * s + t; gx = gy * s.
//!
//! Tolerance GPU vs CPU: exact up to one rounding (atol 1e-6, rtol 1e-6; `fma` may differ
//! from mul+add by one ulp).

use super::{buf, cpu, f, map_kernel, u, Real, TResult};
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::gpu::{grid_1d, Kernel};
use crate::tensor::{numel, same_device, same_shape, Device, Storage, Tensor};
use rayon::prelude::*;

const RELU_FWD: Kernel = Kernel::new("elementwise", "relu_forward");
const RELU_BWD: Kernel = Kernel::new("elementwise", "relu_backward");
const ADD: Kernel = Kernel::new("elementwise", "add");
const MUL: Kernel = Kernel::new("elementwise", "mul");
const AFFINE: Kernel = Kernel::new("elementwise", "affine");
const FILL: Kernel = Kernel::new("elementwise", "fill");
const BROADCAST: Kernel = Kernel::new("elementwise", "broadcast_scalar");

// ---- CPU references -------------------------------------------------------------------

pub fn relu_ref<T: Real>(x: &[T]) -> Vec<T> {
    x.iter()
        .map(|&v| if v > T::zero() { v } else { T::zero() })
        .collect()
}

pub fn relu_backward_ref<T: Real>(x: &[T], gy: &[T]) -> Vec<T> {
    x.iter()
        .zip(gy)
        .map(|(&v, &g)| if v > T::zero() { g } else { T::zero() })
        .collect()
}

pub fn add_ref<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter().zip(b).map(|(&x, &y)| x + y).collect()
}

pub fn mul_ref<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter().zip(b).map(|(&x, &y)| x * y).collect()
}

pub fn affine_ref<T: Real>(x: &[T], s: T, t: T) -> Vec<T> {
    x.iter().map(|&v| v * s + t).collect()
}

// ---- tensor-level ops (device dispatch) ------------------------------------------------

/// Elements per parallel chunk of the fast CPU path (64 KB: each chunk's temporary stays in
/// the cache), and the size below which one thread does it all.
const CHUNK: usize = 1 << 14;
const PARALLEL_MIN: usize = 1 << 16;

/// The fast CPU path of an elementwise op: the reference function on chunks in parallel
/// (exact: every element is computed alone, as by the reference).
fn chunked(n: usize, f: impl Fn(std::ops::Range<usize>) -> Vec<f32> + Sync) -> Vec<f32> {
    if n < PARALLEL_MIN || super::reference_kernels() {
        return f(0..n);
    }
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        o.copy_from_slice(&f(i * CHUNK..i * CHUNK + o.len()));
    });
    out
}

fn unary(
    x: &Tensor,
    kernel: Kernel,
    params: &[u32],
    cpu_fn: impl Fn(&[f32]) -> Vec<f32> + Sync,
) -> TResult {
    match x.storage() {
        Storage::Cpu(v) => Ok(cpu(chunked(v.len(), |r| cpu_fn(&v[r])), x.shape())),
        Storage::Gpu(g, _) => Ok(map_kernel(g, kernel, &[x], params, x.numel(), x.shape())),
    }
}

fn binary(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    kernel: Kernel,
    cpu_fn: impl Fn(&[f32], &[f32]) -> Vec<f32> + Sync,
) -> TResult {
    same_shape(op, a, b)?;
    match same_device(op, &[a, b])? {
        Device::Cpu => {
            let (a_, b_) = (
                a.cpu_data().unwrap_or_default(),
                b.cpu_data().unwrap_or_default(),
            );
            let n = a_.len();
            Ok(cpu(
                chunked(n, |r| cpu_fn(&a_[r.clone()], &b_[r])),
                a.shape(),
            ))
        }
        Device::Gpu(g) => Ok(map_kernel(
            &g,
            kernel,
            &[a, b],
            &[u(a.numel()), 0, 0, 0],
            a.numel(),
            a.shape(),
        )),
    }
}

pub fn relu(x: &Tensor) -> TResult {
    unary(x, RELU_FWD, &[u(x.numel()), 0, 0, 0], relu_ref)
}

pub fn relu_backward(x: &Tensor, gy: &Tensor) -> TResult {
    binary("relu_backward", x, gy, RELU_BWD, relu_backward_ref)
}

pub fn add(a: &Tensor, b: &Tensor) -> TResult {
    binary("add", a, b, ADD, add_ref)
}

pub fn mul(a: &Tensor, b: &Tensor) -> TResult {
    binary("mul", a, b, MUL, mul_ref)
}

/// x * s + t with host scalars.
pub fn affine(x: &Tensor, s: f32, t: f32) -> TResult {
    unary(x, AFFINE, &[u(x.numel()), f(s), f(t), 0], |v| {
        affine_ref(v, s, t)
    })
}

pub fn fill(value: f32, shape: &[usize], device: &Device) -> TResult {
    match device {
        Device::Cpu => Ok(cpu(vec![value; numel(shape)], shape)),
        Device::Gpu(g) => {
            let out = g.alloc(numel(shape));
            g.dispatch(
                FILL,
                &[],
                &[&out],
                &[u(numel(shape)), f(value), 0, 0],
                grid_1d(numel(shape), 256),
            );
            Ok(Tensor::from_gpu(g, out, shape))
        }
    }
}

/// `shape` filled with `scalar[0] * s`, where `scalar` is a one-element tensor that stays on
/// its device (no readback).
pub fn broadcast_scalar(scalar: &Tensor, s: f32, shape: &[usize]) -> TResult {
    if scalar.numel() != 1 {
        return Err(crate::Error::shape(
            "broadcast_scalar",
            format!("expects one value, got shape {:?}", scalar.shape()),
        ));
    }
    match scalar.storage() {
        Storage::Cpu(v) => Ok(cpu(vec![v[0] * s; numel(shape)], shape)),
        Storage::Gpu(g, _) => {
            let out = g.alloc(numel(shape));
            g.dispatch(
                BROADCAST,
                &[],
                &[buf(scalar), &out],
                &[u(numel(shape)), f(s), 0, 0],
                grid_1d(numel(shape), 256),
            );
            Ok(Tensor::from_gpu(g, out, shape))
        }
    }
}

// ---- tape ------------------------------------------------------------------------------

impl Tape {
    pub fn relu(&mut self, x: Var) -> Result<Var> {
        let xv = self.value(x).clone();
        let y = relu(&xv)?;
        Ok(self.record("relu", y, &[x], move |gy, _| {
            Ok(vec![Some(relu_backward(&xv, gy)?)])
        }))
    }

    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let y = add(self.value(a), self.value(b))?;
        Ok(self.record("add", y, &[a, b], |gy, needs| {
            Ok(needs.iter().map(|&n| n.then(|| gy.clone())).collect())
        }))
    }

    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        let (av, bv) = (self.value(a).clone(), self.value(b).clone());
        let y = mul(&av, &bv)?;
        Ok(self.record("mul", y, &[a, b], move |gy, needs| {
            Ok(vec![
                needs[0].then(|| mul(gy, &bv)).transpose()?,
                needs[1].then(|| mul(gy, &av)).transpose()?,
            ])
        }))
    }

    /// x * s + t for host scalars (scale, shift, negate).
    pub fn affine(&mut self, x: Var, s: f32, t: f32) -> Result<Var> {
        let y = affine(self.value(x), s, t)?;
        Ok(self.record("affine", y, &[x], move |gy, _| {
            Ok(vec![Some(affine(gy, s, 0.0)?)])
        }))
    }

    pub fn scale(&mut self, x: Var, s: f32) -> Result<Var> {
        self.affine(x, s, 0.0)
    }
}
