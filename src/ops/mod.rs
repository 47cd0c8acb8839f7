//! The op set. One file per op (or per family of tiny elementwise ops): the shape rule, the
//! CPU reference (generic over f32/f64 so gradients can be checked by finite differences in
//! f64), its backward right after it, the GPU dispatch, and the tape method that ties them.
//!
//! Tolerances (GPU vs CPU, `|gpu - cpu| <= atol + rtol * |cpu|`) are stated in each file.

pub mod batchnorm;
pub mod conv2d;
pub mod cross_entropy;
pub mod ddm;
pub mod elementwise;
pub mod gather;
pub mod gemm;
pub mod l2norm;
pub mod linear;
pub mod pool;
pub mod reduce;
pub mod saliency_mask;
pub mod shape_ops;

use crate::error::Result;
use crate::gpu::{grid_1d, Gpu, GpuBuffer, Kernel};
use crate::tensor::{numel, Device, Tensor};
use std::sync::Arc;

/// Whether the CPU path runs the plain reference kernels (`--device reference`) instead of
/// the fast ones (`--device cpu`, the default without a hardware adapter). One switch for
/// the process: the reference path exists to check a whole run end to end against the
/// oracle, not to be mixed with the fast one. Tests compare the kernels by calling the
/// `_fast` and `_ref` functions directly.
static REFERENCE_KERNELS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_reference_kernels(on: bool) {
    REFERENCE_KERNELS.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn reference_kernels() -> bool {
    REFERENCE_KERNELS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Run `f` with the reference kernels on the CPU path, then restore the previous choice: how
/// `bench` and `smoke` validate whatever they run (the fast CPU kernels included) against
/// the oracle. For the CLI's single-threaded checks, not for code running beside others.
pub fn with_reference_kernels<R>(f: impl FnOnce() -> R) -> R {
    let prev = reference_kernels();
    set_reference_kernels(true);
    let r = f();
    set_reference_kernels(prev);
    r
}

/// The float type of a CPU reference: f32 for the CPU path, f64 for gradient checks.
pub trait Real:
    num_traits::Float
    + num_traits::FromPrimitive
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    fn of(x: f64) -> Self;
    fn to64(self) -> f64;
}
impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn to64(self) -> f64 {
        self as f64
    }
}
impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn to64(self) -> f64 {
        self
    }
}

/// A CPU tensor from reference output.
pub(crate) fn cpu(data: Vec<f32>, shape: &[usize]) -> Tensor {
    debug_assert_eq!(data.len(), numel(shape));
    Tensor::from_vec(data, shape, &Device::Cpu).expect("reference output matches its shape")
}

/// The buffer of a GPU tensor (callers have checked the device).
pub(crate) fn buf(t: &Tensor) -> &GpuBuffer {
    t.gpu_buffer().expect("GPU tensor").1
}

/// Dispatch a one-invocation-per-element kernel of workgroup size 256 writing a fresh output.
pub(crate) fn map_kernel(
    g: &Arc<Gpu>,
    kernel: Kernel,
    inputs: &[&Tensor],
    params: &[u32],
    n_threads: usize,
    out_shape: &[usize],
) -> Tensor {
    launch(
        g,
        kernel,
        inputs,
        params,
        grid_1d(n_threads, 256),
        out_shape,
    )
}

/// Dispatch a row kernel (one 256-invocation workgroup per row, reducing in workgroup memory)
/// over `rows` rows, writing a fresh output.
pub(crate) fn row_kernel(
    g: &Arc<Gpu>,
    kernel: Kernel,
    inputs: &[&Tensor],
    params: &[u32],
    rows: usize,
    out_shape: &[usize],
) -> Tensor {
    launch(
        g,
        kernel,
        inputs,
        params,
        grid_1d(rows * 256, 256),
        out_shape,
    )
}

fn launch(
    g: &Arc<Gpu>,
    kernel: Kernel,
    inputs: &[&Tensor],
    params: &[u32],
    grid: [u32; 3],
    out_shape: &[usize],
) -> Tensor {
    let out = g.alloc(numel(out_shape));
    let mut bufs: Vec<&GpuBuffer> = inputs.iter().map(|t| buf(t)).collect();
    bufs.push(&out);
    g.dispatch(kernel, &[], &bufs, params, grid);
    Tensor::from_gpu(g, out, out_shape)
}

pub(crate) fn u(x: usize) -> u32 {
    x as u32
}
pub(crate) fn f(x: f32) -> u32 {
    x.to_bits()
}

/// Shorthand used by every op for `Result<Tensor>`.
pub type TResult = Result<Tensor>;
