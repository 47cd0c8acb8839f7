//! The matrix-product engine under `linear` and `conv2d`: the CPU products (the reference
//! `matmul_ref`, and `gemm_f32` through the `gemm` crate for the CPU path) and the GPU's two
//! kernel families — `matmul_reg` (register tiles, no workgroup memory: CPU-type adapters) and
//! `gemm.wgsl` (workgroup-memory tiles: hardware GPUs), which runs matrix products and the
//! three convolution passes as implicit GEMMs.

use super::{u, Real};
use crate::gpu::{Gpu, GpuBuffer, Kernel};
use rayon::prelude::*;

const MATMUL_REG: Kernel = Kernel::new("matmul", "matmul_reg");
/// The workgroup GEMM's entry points, by mode (index = the shader's MODE).
const GEMM: [Kernel; 4] = [
    Kernel::new("gemm", "matmul"),
    Kernel::new("gemm", "conv_forward"),
    Kernel::new("gemm", "conv_input_grad"),
    Kernel::new("gemm", "conv_weight_grad"),
];

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

/// The tile of the workgroup GEMM: `wg` invocations, each accumulating `tm` rows × 4 columns,
/// over a `bm` × `bn` output block staged `bk` reduction steps at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Tiles {
    pub wg: u32,
    pub bn: u32,
    pub tm: u32,
    pub bk: u32,
}

impl Tiles {
    /// The tiles `for_adapter` chooses from, largest first.
    pub const ALL: [Tiles; 3] = [
        Tiles {
            wg: 256,
            bn: 64,
            tm: 8,
            bk: 16,
        },
        Tiles {
            wg: 256,
            bn: 64,
            tm: 4,
            bk: 16,
        },
        Tiles {
            wg: 64,
            bn: 32,
            tm: 4,
            bk: 16,
        },
    ];

    /// B vec4s each invocation stages per slice (the shader decodes at most 2 units' columns).
    pub fn b_units(&self) -> u32 {
        self.bk * self.bn / 4 / self.wg
    }

    pub fn bm(&self) -> u32 {
        self.tm * self.wg * 4 / self.bn
    }

    /// Workgroup memory the tile stages (both operands, f32).
    pub fn storage_bytes(&self) -> u32 {
        (self.bm() + self.bn) * self.bk * 4
    }

    /// "BMxBNxBK" (what benchmarks report).
    pub fn label(&self) -> String {
        format!("{}x{}x{}", self.bm(), self.bn, self.bk)
    }

    /// The largest tile the adapter's limits allow for a product of `m` rows: 128×64 (8×4
    /// per invocation, 12 KiB) where there are more than 64 rows, 64×64 (4×4, 8 KiB) for
    /// 64 rows or fewer (ResNet's first stage) or when 12 KiB of workgroup memory is not
    /// available, 32×32 (64 invocations, 4 KiB) on adapters below WebGPU's default limits.
    pub fn for_adapter(limits: &wgpu::Limits, m: usize) -> Tiles {
        let [large, medium, small] = Self::ALL;
        let fits = |t: &Tiles| {
            t.wg <= limits.max_compute_invocations_per_workgroup
                && t.wg <= limits.max_compute_workgroup_size_x
                && t.storage_bytes() <= limits.max_compute_workgroup_storage_size
        };
        [large, medium, small]
            .into_iter()
            .filter(|t| m > 64 || t.tm == 4)
            .find(fits)
            .unwrap_or(small)
    }
}

thread_local! {
    static FORCED_TILES: std::cell::Cell<Option<Tiles>> = const { std::cell::Cell::new(None) };
    static GRID_X_LIMIT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Run `f` with the workgroup GEMM's grid limited to `columns` workgroups along x on this
/// thread (the adapter's limit is 65,535: tests reach the column tiles carried by grid z
/// without products of millions of columns).
pub fn with_grid_x_limit<R>(columns: usize, f: impl FnOnce() -> R) -> R {
    let prev = GRID_X_LIMIT.with(|c| c.replace(Some(columns.max(1))));
    let r = f();
    GRID_X_LIMIT.with(|c| c.set(prev));
    r
}

/// Run `f` with every workgroup GEMM it records on this thread using `tiles` instead of the
/// adapter's choice (tests cover each tile on one adapter; benchmarks compare them). The
/// tile must fit the adapter's limits.
pub fn with_tiles<R>(tiles: Tiles, f: impl FnOnce() -> R) -> R {
    let prev = FORCED_TILES.with(|c| c.replace(Some(tiles)));
    let r = f();
    FORCED_TILES.with(|c| c.set(prev));
    r
}

/// The tile a workgroup GEMM of `m` rows uses on `g` (what `with_tiles` forces, if anything).
pub fn tiles_for(g: &Gpu, m: usize) -> Tiles {
    FORCED_TILES
        .with(|c| c.get())
        .unwrap_or_else(|| Tiles::for_adapter(&g.limits, m))
}

/// What one dispatch of the workgroup GEMM computes (see `shaders/gemm.wgsl`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum GemmMode {
    Matmul {
        ta: bool,
        tb: bool,
        bias: bool,
    },
    ConvForward,
    /// The input gradient: one grid slice per stride phase (stride²).
    ConvInput,
    /// The weight gradient, its reduction split into slices of `split` steps.
    ConvWeight {
        split: usize,
    },
}

/// The sizes of a convolution as the GEMM kernel reads them: n, c, h, w, o, oh, ow, kh, kw,
/// stride, pad.
pub(crate) type ConvSizes = [usize; 11];

/// Record one workgroup-GEMM dispatch: `m` × `cols` outputs (for the input gradient, `cols`
/// is the largest phase's), a reduction of `kdim`, over `slices` grid slices (phases or
/// split-K slices; 1 otherwise). Returns the tile it used.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dispatch_gemm(
    g: &Gpu,
    mode: GemmMode,
    [m, cols, kdim]: [usize; 3],
    slices: usize,
    conv: ConvSizes,
    [lhs, rhs, bias]: [&GpuBuffer; 3],
    out: &GpuBuffer,
) -> Tiles {
    let t = tiles_for(g, m);
    assert!(
        (1..=2).contains(&t.b_units()) && (t.bk * t.bm() / 4).is_multiple_of(t.wg),
        "tile {t:?} does not fit gemm.wgsl's staging"
    );
    let (code, a_kfast, b_kfast, ta, tb, has_bias, split) = match mode {
        GemmMode::Matmul { ta, tb, bias } => (0, !ta, tb, ta, tb, bias, 0),
        GemmMode::ConvForward => (1, true, false, false, false, false, 0),
        GemmMode::ConvInput => (2, true, false, false, false, false, 0),
        GemmMode::ConvWeight { split } => (3, true, true, false, false, false, split),
    };
    let col_tiles = cols.div_ceil(t.bn as usize).max(1);
    let max_x = GRID_X_LIMIT
        .with(|c| c.get())
        .unwrap_or(g.limits.max_compute_workgroups_per_dimension as usize)
        .max(1);
    let x = col_tiles.min(max_x);
    let col_groups = col_tiles.div_ceil(x);
    let params = [
        u(m),
        u(cols),
        u(kdim),
        u(split),
        ta as u32,
        tb as u32,
        has_bias as u32,
        u(col_groups),
        u(conv[0]),
        u(conv[1]),
        u(conv[2]),
        u(conv[3]),
        u(conv[4]),
        u(conv[5]),
        u(conv[6]),
        u(conv[7]),
        u(conv[8]),
        u(conv[9]),
        u(conv[10]),
        0,
    ];
    let constants = [
        ("MODE", code as f64),
        ("WG", t.wg as f64),
        ("BN", t.bn as f64),
        ("TM", t.tm as f64),
        ("BK", t.bk as f64),
        ("A_VECS", (t.bk * t.bm() / 4) as f64),
        ("B_VECS", (t.bk * t.bn / 4) as f64),
        ("A_KFAST", a_kfast as u8 as f64),
        ("B_KFAST", b_kfast as u8 as f64),
    ];
    let grid = [
        u(x),
        u(m.div_ceil(t.bm() as usize).max(1)),
        u(col_groups * slices.max(1)),
    ];
    g.dispatch(
        GEMM[code],
        &constants,
        &[lhs, rhs, bias, out],
        &params,
        grid,
    );
    t
}

/// C = op(A)·op(B) (+ bias) on the GPU into `out` [m, n] (m, n, k ≥ 1), by the adapter's
/// kernel family.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_gpu(
    g: &Gpu,
    a: &GpuBuffer,
    b: &GpuBuffer,
    bias: Option<&GpuBuffer>,
    [m, n, k]: [usize; 3],
    ta: bool,
    tb: bool,
    out: &GpuBuffer,
) {
    // A bias binding is always needed; without bias, any buffer will do (never read).
    let bias_buf = bias.unwrap_or(a);
    match g.variant {
        crate::gpu::KernelVariant::RegisterTiled => {
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
            let grid = [n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1];
            g.dispatch(MATMUL_REG, &[], &[a, b, bias_buf, out], &params, grid);
        }
        crate::gpu::KernelVariant::WorkgroupTiled => {
            dispatch_gemm(
                g,
                GemmMode::Matmul {
                    ta,
                    tb,
                    bias: bias.is_some(),
                },
                [m, n, k],
                1,
                [0; 11],
                [a, b, bias_buf],
                out,
            );
        }
    }
}
