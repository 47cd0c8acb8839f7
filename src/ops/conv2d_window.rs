//! Convolution through uniform-buffer windows: the fast path on CPU adapters (llvmpipe).
//!
//! Why: Mesa 22.3's llvmpipe executes every storage-buffer load as a loop over the SIMD lanes
//! (~23 cycles per value), while uniform-buffer loads are vector gathers (~1.6 cycles), see
//! benches/RESULTS.md. A uniform binding sees at most 64 KiB, so the operands are first packed
//! into windows (`pack_input` / `Problem::pack_weight`: a fill for the zero padding, then a
//! generated `scatter` kernel that reads the source through uniform windows too): the input,
//! zero padded (and dilated for the transposed convolution of a strided one), as [image
//! group][channel segment] windows of [images][channels][rows][cols]; the weights as
//! [output-channel group][window] of [segment][invocation's channel blocks][channels]
//! [block][taps][4] (one channel's weights for an invocation are contiguous). One
//! dispatch computes one (image group, output-channel group) with every input channel:
//! segment `s` reads input window `Xs` and weight window `W(s / segments-per-window)`, and the
//! result is stored once (no partial sums).
//!
//! The kernel is generated for each plan (sizes are constants, the tap loops are unrolled):
//! each invocation computes a register tile of `TILES` (pixels × rows × blocks of 4 output
//! channels), loading each input row span once as aligned vec4s and one vec4 of weights per
//! tap and channel block. Where a subgroup's invocations share their output channels (llvmpipe:
//! 8 consecutive invocations), each lane loads a different weight vec4 and
//! `subgroupBroadcast` hands them round: uniform-buffer loads with an index that is not
//! provably uniform are per-lane gathers on llvmpipe, and the weights were half of them
//! (1.16× at 64ch 32×32, 1.3× at 512ch 4×4). Shapes that fit no plan (large images, channels
//! not a multiple of 4, ...) use the storage-buffer kernels instead.

use super::conv2d::Dims;
use crate::gpu::{grid_1d, BufferRange, Gpu, GpuBuffer, Kernel};
use crate::tensor::Tensor;
use std::fmt::Write;
use std::sync::Arc;

const PACK_INPUT: Kernel = Kernel::new("conv2d", "pack_input");
const PACK_WEIGHT: Kernel = Kernel::new("conv2d", "pack_weight");

/// Pixels per invocation along a row in the weight-gradient kernel, and the narrowest
/// register tile of the convolution kernels (vec4 aligned).
const P: usize = 4;
/// Register tiles of the convolution kernels, (pixels per row, rows, blocks of `KB` output
/// channels) per invocation, best first. Measured on llvmpipe with the generated kernels alone
/// (benches/RESULTS.md): every uniform load costs about as much as eight vec4 FMAs, so bigger
/// tiles pay until the accumulators spill. With the accumulator-major FMA order, 8×4×2 was
/// 1.1–1.3× faster than 8×4×1 at 64ch 32×32 and 128ch 16×16 (but 0.8× at 8×8, where the
/// unpadded 8×8×1 tile was 1.3× faster than 8×4×1); 4×4×2 1.08× the 4×4×1 at 4×4.
///
/// A tile as wide as the output (stride 1) reads unpadded rows: the kernel knows which columns
/// fall outside the image and leaves their taps out, so the packed input is smaller (more
/// images per window, fewer dispatches) and every vec4 load is useful. A tile as tall as the
/// output does the same for rows (8×8 and 4×4 images: no padding at all); such a tile is
/// preferred to the order below.
pub const TILES: [(usize, usize, usize); 8] = [
    (8, 4, 2),
    (8, 8, 1),
    (4, 4, 2),
    (8, 4, 1),
    (8, 2, 1),
    (4, 4, 1),
    (4, 2, 1),
    (4, 1, 1),
];
/// `TILES`, or the tiles listed in `VIEWCRAFT_TILES` (`PxRxM,...`; malformed entries are
/// ignored).
fn tiles() -> Vec<(usize, usize, usize)> {
    let parse = |t: &str| -> Option<(usize, usize, usize)> {
        let f: Vec<usize> = t
            .split('x')
            .map(|x| x.trim().parse().ok())
            .collect::<Option<_>>()?;
        match f[..] {
            [px, r, m] if px > 0 && px % 4 == 0 && r > 0 && m > 0 => Some((px, r, m)),
            _ => None,
        }
    };
    std::env::var("VIEWCRAFT_TILES")
        .ok()
        .map(|v| v.split(',').filter_map(parse).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .unwrap_or(TILES.to_vec())
}

/// Fewest invocations per dispatch for a bigger tile to be taken: one SIMD group of 8 for
/// each thread of a 2-core llvmpipe (at 512ch 4×4, 4×2 with 16 invocations beat 4×4 with 8
/// and 4×1 with 32).
const MIN_INVOCATIONS: usize = 16;
/// Output channels per invocation (one vec4 of weights per tap).
const KB: usize = 4;
/// Invocations per workgroup (measured best on llvmpipe among 8–64), halved to the SIMD
/// width for small dispatches so both threads get work.
fn workgroup(total: usize) -> usize {
    if total < 256 {
        8
    } else {
        16
    }
}
/// Most channel segments per kernel (code size grows with it).
const MAX_SEGMENTS: usize = 12;

/// One window convolution: `src` [n, c, hs, ws] → out [n, o, oh, ow] with a k×k kernel at
/// `stride` over the packed (padded by `pad`, dilated by `dil`) input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Problem {
    n: usize,
    c: usize,
    hs: usize,
    ws: usize,
    o: usize,
    oh: usize,
    ow: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    /// Weights are the transposed, flipped ones of the forward convolution.
    transpose: bool,
    /// This problem convolves channels `c0..c0 + c` of a source with `c_src` channels (a
    /// channel part, when all channels do not fit one dispatch's windows); `acc` adds the
    /// result to the output instead of storing it.
    c0: usize,
    c_src: usize,
    acc: bool,
}

/// How a problem is split into windows and dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// Output pixels per row and output rows per invocation.
    px: usize,
    r: usize,
    /// Blocks of `KB` output channels per invocation.
    m: usize,
    /// Subgroup size when every subgroup shares its weights (one output-channel group per
    /// subgroup, see `subgroup_size`), else 0.
    sg: usize,
    /// The tile spans every output column / row: that dimension is packed unpadded.
    full_w: bool,
    full_h: bool,
    /// Input channels per segment, segments.
    cs: usize,
    segs: usize,
    /// Images per dispatch, output channels per dispatch.
    ni: usize,
    og: usize,
    /// Packed input rows / cols (cols a multiple of 4), vec4 loads per row span.
    hp: usize,
    wp: usize,
    nv: usize,
    /// Floats per input window, segments per weight window, weight windows, floats per
    /// weight window.
    wx: usize,
    spw: usize,
    nww: usize,
    ww: usize,
}

/// For an (oh × ow) output at `stride` with a k×k kernel: vec4 loads per input row span of
/// `px` pixels, and the packed input's rows and (vec4-aligned) columns that the kernels read.
fn packed_geometry(
    oh: usize,
    ow: usize,
    stride: usize,
    k: usize,
    px: usize,
) -> (usize, usize, usize) {
    let nv = ((px - 1) * stride + k).div_ceil(4);
    let hp = (oh - 1) * stride + k;
    let wp = ((ow - px) * stride + 4 * nv).div_ceil(4) * 4;
    (nv, hp, wp)
}

/// Values one uniform window may hold on this adapter (64 KiB at most).
fn max_window(g: &Gpu) -> usize {
    (g.limits.max_uniform_buffer_binding_size as usize / 4).min(16384)
}

/// The subgroup size the window kernels may share weights across: llvmpipe's fixed SIMD
/// width (its subgroups are runs of consecutive invocations), unless
/// `VIEWCRAFT_SUBGROUP_WEIGHTS=0` or `Gpu::set_subgroup_weights(false)`.
pub fn subgroup_size(g: &Gpu) -> Option<usize> {
    let (lo, hi) = (g.info.subgroup_min_size, g.info.subgroup_max_size);
    (g.features.contains(wgpu::Features::SUBGROUP)
        && lo == hi
        && g.info.driver.contains("llvmpipe")
        && g.subgroup_weights())
    .then_some(lo as usize)
}

fn round64(x: usize) -> usize {
    x.div_ceil(64) * 64
}

impl Problem {
    fn forward(d: &Dims) -> Option<Self> {
        (d.kh == d.kw).then_some(Problem {
            n: d.n,
            c: d.c,
            hs: d.h,
            ws: d.w,
            o: d.o,
            oh: d.oh,
            ow: d.ow,
            k: d.kh,
            stride: d.stride,
            pad: d.pad,
            dil: 1,
            transpose: false,
            c0: 0,
            c_src: d.c,
            acc: false,
        })
    }

    /// gx = the stride-1 convolution of gy, dilated by the stride and padded by k−1−p, with
    /// the transposed, flipped weights.
    fn backward_input(d: &Dims) -> Option<Self> {
        (d.kh == d.kw && d.pad < d.kh).then_some(Problem {
            n: d.n,
            c: d.o,
            hs: d.oh,
            ws: d.ow,
            o: d.c,
            oh: d.h,
            ow: d.w,
            k: d.kh,
            stride: 1,
            pad: d.kh - 1 - d.pad,
            dil: d.stride,
            transpose: true,
            c0: 0,
            c_src: d.o,
            acc: false,
        })
    }

    /// The plan of the first register tile (an unpadded whole-image one, else in `TILES`
    /// order, or as `VIEWCRAFT_TILES` lists them, e.g. `8x4x2,4x4x1`, for tuning) that fits and
    /// keeps both threads busy, else of the last that fits.
    fn plan(&self, g: &Gpu) -> Option<Plan> {
        let plans: Vec<Plan> = tiles()
            .iter()
            .filter_map(|&(px, r, m)| self.plan_tile(g, px, r, m))
            .collect();
        let busy = |p: &&Plan| self.invocations(p) >= MIN_INVOCATIONS;
        plans
            .iter()
            .filter(busy)
            .find(|p| p.full_h)
            .or_else(|| plans.iter().find(busy))
            .or(plans.last())
            .copied()
    }

    /// Invocations of one dispatch: one per register tile of its images and channels.
    fn invocations(&self, p: &Plan) -> usize {
        p.ni * (p.og / (KB * p.m)) * (self.oh / p.r) * (self.ow / p.px)
    }

    fn plan_tile(&self, g: &Gpu, px: usize, r: usize, m: usize) -> Option<Plan> {
        if !self.o.is_multiple_of(KB * m)
            || !self.ow.is_multiple_of(px)
            || !self.oh.is_multiple_of(r)
            || self.n == 0
            || self.c == 0
        {
            return None;
        }
        let maxwin = max_window(g);
        let max_ubo = g.limits.max_uniform_buffers_per_shader_stage as usize;
        let ualign = g.limits.min_uniform_buffer_offset_alignment as usize;
        let salign = g.limits.min_storage_buffer_offset_alignment as usize;
        if 256 % ualign != 0 {
            return None;
        }
        let s = self.stride;
        let full_w = s == 1 && self.dil == 1 && px == self.ow && self.ws.is_multiple_of(4);
        let full_h = full_w && r == self.oh;
        let (mut nv, mut hp, mut wp) = packed_geometry(self.oh, self.ow, s, self.k, px);
        if full_w {
            (nv, wp) = (self.ws / 4, self.ws);
        }
        if full_h {
            hp = self.hs;
        }
        let kk = self.k * self.k;
        let ohw = self.oh * self.ow;
        let divisors = |x: usize| (1..=x).rev().filter(move |d| x.is_multiple_of(*d));
        let mut best: Option<(usize, usize, Plan)> = None;
        for cs in divisors(self.c) {
            let segs = self.c / cs;
            if segs > MAX_SEGMENTS {
                break;
            }
            for ni in divisors(self.n) {
                let wx = round64(ni * cs * hp * wp);
                if wx > maxwin {
                    continue;
                }
                for og in divisors(self.o).filter(|og| og % (KB * m) == 0) {
                    let wseg = og * cs * kk;
                    if wseg > maxwin {
                        continue;
                    }
                    let spw = segs.min(maxwin / wseg);
                    let nww = segs.div_ceil(spw);
                    if segs + nww > max_ubo
                        || !(og * ohw * 4).is_multiple_of(salign)
                        || !(ni * self.o * ohw * 4).is_multiple_of(salign)
                    {
                        continue;
                    }
                    let tiles = ni * (self.oh / r) * (self.ow / px);
                    let total = tiles * (og / (KB * m));
                    let plan = Plan {
                        px,
                        r,
                        m,
                        sg: subgroup_size(g)
                            .filter(|&z| {
                                tiles.is_multiple_of(z) && workgroup(total).is_multiple_of(z)
                            })
                            .unwrap_or(0),
                        full_w,
                        full_h,
                        cs,
                        segs,
                        ni,
                        og,
                        hp,
                        wp,
                        nv,
                        wx,
                        spw,
                        nww,
                        ww: round64(spw * wseg),
                    };
                    let packed = (self.n / ni) * segs * wx;
                    if packed * 4 > g.limits.max_storage_buffer_binding_size as usize {
                        continue;
                    }
                    let dispatches = (self.n / ni) * (self.o / og);
                    let score = (dispatches, segs);
                    if best.as_ref().is_none_or(|b| score < (b.0, b.1)) {
                        best = Some((dispatches, segs, plan));
                    }
                }
            }
        }
        best.map(|b| b.2)
    }

    fn key(&self, p: &Plan) -> String {
        let s = self;
        format!(
            "conv2d_window_n{}c{}o{}oh{}ow{}k{}s{}p{}a{}_p{}r{}m{}sg{}f{}{}cs{}g{}ni{}og{}hp{}wp{}wx{}spw{}nww{}ww{}",
            s.n,
            s.c,
            s.o,
            s.oh,
            s.ow,
            s.k,
            s.stride,
            s.pad,
            s.acc as u8,
            p.px,
            p.r,
            p.m,
            p.sg,
            p.full_w as u8,
            p.full_h as u8,
            p.cs,
            p.segs,
            p.ni,
            p.og,
            p.hp,
            p.wp,
            p.wx,
            p.spw,
            p.nww,
            p.ww
        )
    }

    /// The loaded row (relative to the tile's first) that output row `rr` of a tile reads at
    /// tap row `ky`; None where an unpadded row falls outside the image (a zero tap).
    fn packed_row(&self, p: &Plan, rr: usize, ky: usize) -> Option<usize> {
        if p.full_h {
            (rr + ky).checked_sub(self.pad).filter(|&iy| iy < self.hs)
        } else {
            Some(rr * self.stride + ky)
        }
    }

    /// The loaded column (relative to the tile's first) that output pixel `q` of a tile reads
    /// at tap column `kx`; None where an unpadded column falls outside the image.
    fn packed_col(&self, p: &Plan, q: usize, kx: usize) -> Option<usize> {
        if p.full_w {
            (q + kx).checked_sub(self.pad).filter(|&ix| ix < self.ws)
        } else {
            Some(q * self.stride + kx)
        }
    }

    /// The generated kernel (see the module comment).
    fn source(&self, p: &Plan) -> String {
        let (s, k, kk) = (self.stride, self.k, self.k * self.k);
        let (w4, m) = (p.wp / 4, p.m);
        let rows = (p.r - 1) * s + k;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "// generated by src/ops/conv2d_window.rs: {}",
            self.key(p)
        );
        let _ = writeln!(o, "struct WinX {{ v: array<vec4<f32>, {}> }}", p.wx / 4);
        let _ = writeln!(o, "struct WinW {{ v: array<vec4<f32>, {}> }}", p.ww / 4);
        for i in 0..p.segs {
            let _ = writeln!(o, "@group(0) @binding({i}) var<uniform> X{i}: WinX;");
        }
        for i in 0..p.nww {
            let _ = writeln!(
                o,
                "@group(0) @binding({}) var<uniform> W{i}: WinW;",
                p.segs + i
            );
        }
        let _ = writeln!(
            o,
            "@group(0) @binding({}) var<storage, read_write> y: array<vec4<f32>>;",
            p.segs + p.nww
        );
        let px = p.px;
        let total = self.invocations(p);
        let wg = workgroup(total);
        let _ = writeln!(o, "@compute @workgroup_size({wg})");
        entry_head(&mut o, "conv", wg, total, p.sg);
        // Tiles, then images, then channel blocks: a subgroup shares its channel block
        // (and so its weights) when an image group's tiles fill whole subgroups.
        let _ = writeln!(
            o,
            "  let xb = t % {}u; var r = t / {}u; let yb = r % {}u; r = r / {}u; let img = r % {ni}u; let ob = r / {ni}u;",
            self.ow / px,
            self.ow / px,
            self.oh / p.r,
            self.oh / p.r,
            ni = p.ni
        );
        let _ = writeln!(o, "  let x0 = xb * {px}u; let y0 = yb * {}u;", p.r);
        for rr in 0..p.r {
            for q in 0..px {
                for b in 0..m {
                    let _ = writeln!(o, "  var a{rr}_{q}_{b} = vec4<f32>();");
                }
            }
        }
        for seg in 0..p.segs {
            let (wi, segl) = (seg / p.spw, seg % p.spw);
            let _ = writeln!(o, "  for (var c = 0u; c < {}u; c++) {{", p.cs);
            let _ = writeln!(
                o,
                "    let xv = ((img * {}u + c) * {}u + y0 * {s}u) * {w4}u + x0 * {s}u / 4u;",
                p.cs, p.hp
            );
            // This channel's weights: m·kk vec4s from `wv`, [block][tap].
            let _ = writeln!(
                o,
                "    let wv = {}u + (ob * {}u + c) * {}u;",
                segl * p.og * p.cs * kk / 4,
                p.cs,
                m * kk
            );
            // With shared weights each lane loads a different vec4 and the subgroup
            // broadcasts them: one gather per subgroup-size vec4s instead of one each.
            if p.sg > 0 {
                for q in 0..(m * kk).div_ceil(p.sg) {
                    let _ = writeln!(
                        o,
                        "    let ws{q} = W{wi}.v[min(wv + {}u + sid, {}u)];",
                        q * p.sg,
                        p.ww / 4 - 1
                    );
                }
            }
            for ir in 0..(if p.full_h { self.hs } else { rows }) {
                for v in 0..p.nv {
                    let _ = writeln!(o, "    let v{ir}_{v} = X{seg}.v[xv + {}u];", ir * w4 + v);
                }
            }
            for ky in 0..k {
                for kx in 0..k {
                    for b in 0..m {
                        let j = b * kk + ky * k + kx;
                        if let Some(q) = j.checked_div(p.sg) {
                            let _ = writeln!(
                                o,
                                "    let w{ky}_{kx}_{b} = subgroupBroadcast(ws{q}, {}u);",
                                j % p.sg
                            );
                        } else {
                            let _ = writeln!(o, "    let w{ky}_{kx}_{b} = W{wi}.v[wv + {j}u];");
                        }
                    }
                }
            }
            // Every tap of one accumulator before the next: llvmpipe keeps the accumulator
            // in registers for its taps (the tile's accumulators cannot all stay there);
            // tap-major order reloaded and stored each accumulator per tap (1.2× slower).
            for rr in 0..p.r {
                for (q, b) in (0..px).flat_map(|q| (0..m).map(move |b| (q, b))) {
                    let mut terms = Vec::new();
                    for ky in 0..k {
                        let Some(ir) = self.packed_row(p, rr, ky) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(j) = self.packed_col(p, q, kx) else {
                                continue;
                            };
                            terms.push(format!("v{ir}_{}[{}] * w{ky}_{kx}_{b}", j / 4, j % 4));
                        }
                    }
                    if !terms.is_empty() {
                        let _ = writeln!(o, "    a{rr}_{q}_{b} += {};", tree_sum(&terms));
                    }
                }
            }
            let _ = writeln!(o, "  }}");
        }
        // One vec4 store per (row, channel, 4 pixels): the pixels are contiguous in y.
        if p.sg > 0 {
            let _ = writeln!(o, "  if (!live) {{ return; }}");
        }
        for rr in 0..p.r {
            for (b, j) in (0..m).flat_map(|b| (0..KB).map(move |j| (b, j))) {
                for q in (0..px).step_by(4) {
                    let i = format!("i{rr}_{b}_{j}_{q}");
                    let _ = writeln!(
                        o,
                        "  let {i} = (((img * {}u + (ob * {m}u + {b}u) * {KB}u + {j}u) * {}u + y0 + {rr}u) * {}u + x0 + {q}u) / 4u;",
                        self.o, self.oh, self.ow
                    );
                    let prev = if self.acc {
                        format!("y[{i}] + ")
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        o,
                        "  y[{i}] = {prev}vec4<f32>(a{rr}_{}_{b}[{j}], a{rr}_{}_{b}[{j}], a{rr}_{}_{b}[{j}], a{rr}_{}_{b}[{j}]);",
                        q, q + 1, q + 2, q + 3
                    );
                }
            }
        }
        let _ = writeln!(o, "}}");
        o
    }

    /// Pack, then one dispatch per (image group, output-channel group) into `out`.
    fn run_into(&self, g: &Arc<Gpu>, p: &Plan, src: &GpuBuffer, w: &GpuBuffer, out: &GpuBuffer) {
        // The chosen split, for tuning (`VIEWCRAFT_DEBUG_PLAN=1`).
        if std::env::var("VIEWCRAFT_DEBUG_PLAN").is_ok() {
            eprintln!(
                "{self:?}\n  {p:?} dispatches {}",
                (self.n / p.ni) * (self.o / p.og)
            );
        }
        let groups = self.n / p.ni;
        let ogroups = self.o / p.og;
        let xp = pack_input(
            g,
            src,
            [self.n, self.c_src, self.hs, self.ws],
            self.c0,
            Windows {
                ni: p.ni,
                cs: p.cs,
                segs: p.segs,
                hp: p.hp,
                wp: p.wp,
                pad: if p.full_h { 0 } else { self.pad },
                padx: if p.full_w { 0 } else { self.pad },
                dil: self.dil,
                win: p.wx,
            },
        );
        let wp = self.pack_weight(g, p, w);
        let ohw = self.oh * self.ow;
        let key = self.key(p);
        let total = self.invocations(p);
        let out_span = (((p.ni - 1) * self.o + p.og) * ohw * 4) as u64;
        for gi in 0..groups {
            for oi in 0..ogroups {
                let mut b = input_windows(&xp, gi, p.segs, p.wx);
                for wi in 0..p.nww {
                    b.push(BufferRange {
                        buffer: &wp,
                        offset: ((oi * p.nww + wi) * p.ww * 4) as u64,
                        size: (p.ww * 4) as u64,
                    });
                }
                b.push(BufferRange {
                    buffer: out,
                    offset: ((gi * p.ni * self.o + oi * p.og) * ohw * 4) as u64,
                    size: out_span,
                });
                g.dispatch_generated(
                    &key,
                    || self.source(p),
                    "conv",
                    &b,
                    &[],
                    grid_1d(total, workgroup(total) as u32),
                );
            }
        }
    }

    /// The weights of this problem's channels packed as the plan says: [output-channel group]
    /// [window] of [segment][m-block group][channels][block][taps][4] (flipped and transposed for
    /// the input gradient), through `scatter`.
    fn pack_weight(&self, g: &Arc<Gpu>, p: &Plan, w: &GpuBuffer) -> GpuBuffer {
        let (kk, cs, og) = (self.k * self.k, p.cs, p.og);
        let wlen = (self.o / og) * p.nww * p.ww;
        let total = self.o * self.c_src * kk;
        let put = || {
            let mut o = String::new();
            let (a, b) = if self.transpose {
                ("ch", "oc")
            } else {
                ("oc", "ch")
            };
            let b_len = if self.transpose { self.o } else { self.c_src };
            let _ = writeln!(
                o,
                "  var tap = e % {kk}u; let q = e / {kk}u; let {b} = q % {b_len}u; let {a} = q / {b_len}u;"
            );
            if self.transpose {
                let _ = writeln!(o, "  tap = {}u - tap;", kk - 1);
            }
            let _ = writeln!(
                o,
                "  if (ch < {c0}u || ch >= {}u) {{ return; }}",
                self.c0 + self.c,
                c0 = self.c0
            );
            let _ = writeln!(
                o,
                "  let cc = ch - {}u; let seg = cc / {cs}u; let cl = cc % {cs}u; let ol = oc % {og}u;",
                self.c0
            );
            let _ = writeln!(
                o,
                "  out[((oc / {og}u) * {nww}u + seg / {spw}u) * {ww}u + (seg % {spw}u) * {wseg}u + ((((ol / 4u) / {m}u * {cs}u + cl) * {m}u + (ol / 4u) % {m}u) * {kk}u + tap) * 4u + ol % 4u] = v;",
                m = p.m,
                nww = p.nww,
                spw = p.spw,
                ww = p.ww,
                wseg = og * cs * kk
            );
            o
        };
        let key = format!(
            "conv2d_pack_weight_n_o{}c{}k{}t{}_c{}n{}cs{cs}og{og}m{}spw{}nww{}ww{}",
            self.o,
            self.c_src,
            self.k,
            self.transpose as u8,
            self.c0,
            self.c,
            p.m,
            p.spw,
            p.nww,
            p.ww
        );
        let out = g.alloc(wlen);
        if !scatter(g, w, total, &out, &key, 1, put) {
            let f = |x: usize| x as f64;
            g.dispatch(
                PACK_WEIGHT,
                &[
                    ("pw_o", f(self.o)),
                    ("pw_c", f(self.c_src)),
                    ("pw_c0", f(self.c0)),
                    ("pw_kk", f(kk)),
                    ("pw_og", f(og)),
                    ("pw_cs", f(cs)),
                    ("pw_m", f(p.m)),
                    ("pw_spw", f(p.spw)),
                    ("pw_nww", f(p.nww)),
                    ("pw_segs", f(p.segs)),
                    ("pw_win", f(p.ww)),
                    ("pw_transpose", f(self.transpose as usize)),
                    ("pw_total", f(wlen)),
                ],
                &[w, &out],
                &[],
                grid_1d(wlen, 256),
            );
        }
        out
    }

    /// The problem on channels `c0..c0 + c` of this one's source, accumulating or not.
    fn part(&self, c0: usize, c: usize, acc: bool) -> Self {
        Problem {
            c0: self.c0 + c0,
            c,
            acc,
            ..*self
        }
    }

    /// How to solve it: one plan over all channels, or, when the channels do not fit one
    /// dispatch's windows (a 3×3 s2 layer's input gradient at 32×32 needs 16 segments), the
    /// fewest equal channel parts that each have a plan, summed into the output by the kernels.
    fn parts(&self, g: &Gpu) -> Option<Vec<(Problem, Plan)>> {
        (1..=MAX_PARTS)
            .filter(|k| self.c.is_multiple_of(*k))
            .find_map(|k| {
                // Parts differ only in their channel offset and accumulation: one plan.
                let c = self.c / k;
                let plan = self.part(0, c, false).plan(g)?;
                Some((0..k).map(|i| (self.part(i * c, c, i > 0), plan)).collect())
            })
    }

    /// Solve into a new buffer, or None when no split has a plan.
    fn solve(&self, g: &Arc<Gpu>, src: &GpuBuffer, w: &GpuBuffer) -> Option<GpuBuffer> {
        let parts = self.parts(g)?;
        let out = g.alloc(self.n * self.o * self.oh * self.ow);
        for (pb, plan) in &parts {
            pb.run_into(g, plan, src, w, &out);
        }
        Some(out)
    }
}

/// `terms` summed as a balanced tree: llvmpipe does not fuse multiply-adds, so a chain of
/// adds into one accumulator is bound by the add latency.
fn tree_sum(terms: &[String]) -> String {
    match terms {
        [t] => t.clone(),
        _ => {
            let (l, r) = terms.split_at(terms.len().div_ceil(2));
            format!("({} + {})", tree_sum(l), tree_sum(r))
        }
    }
}

/// A generated kernel's entry point up to its flat invocation index `t` (< `total`). With
/// subgroup sharing (`sg` > 0) every lane stays active for the broadcasts (`t` clamped, `live`
/// says whether it may store); otherwise lanes past the end return.
fn entry_head(o: &mut String, name: &str, wg: usize, total: usize, sg: usize) {
    let sid = if sg > 0 {
        ", @builtin(subgroup_invocation_id) sid: u32"
    } else {
        ""
    };
    let _ = writeln!(o, "fn {name}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32{sid}) {{");
    let _ = writeln!(o, "  let t0 = (wid.y * nwg.x + wid.x) * {wg}u + li;");
    if sg > 0 {
        let _ = writeln!(
            o,
            "  let live = t0 < {total}u; let t = min(t0, {}u);",
            total - 1
        );
    } else {
        let _ = writeln!(o, "  if (t0 >= {total}u) {{ return; }} let t = t0;");
    }
}

/// Most channel parts a convolution is split into (each part re-reads the output).
const MAX_PARTS: usize = 4;

/// How `pack_input` lays a [n, c, h, w] tensor out: windows of `win` floats, one per
/// (group of `ni` images, segment of `cs` channels), each [ni][cs][hp][wp], padded by `pad`
/// at the top/left and dilated by `dil`.
#[derive(Clone, Copy, Debug)]
struct Windows {
    ni: usize,
    cs: usize,
    segs: usize,
    hp: usize,
    wp: usize,
    pad: usize,
    padx: usize,
    dil: usize,
    win: usize,
}

/// Channels `c0..c0 + cs·segs` of `src` [n, c, h, w] packed as `l` says (through `scatter`;
/// a layout that is the source's own, one segment of every channel without padding, is the
/// source itself).
fn pack_input(
    g: &Arc<Gpu>,
    src: &GpuBuffer,
    [n, c, h, w]: [usize; 4],
    c0: usize,
    l: Windows,
) -> GpuBuffer {
    let len = (n / l.ni) * l.segs * l.win;
    let identity = c0 == 0
        && l.segs == 1
        && l.cs == c
        && (l.hp, l.wp) == (h, w)
        && l.pad + l.padx == 0
        && l.dil == 1
        && l.win == l.ni * c * h * w;
    if identity {
        return src.clone();
    }
    // Values `e..e + n4` of the source are (img, ch, y, x + j), one row (`n4` is 4 when rows
    // are whole vec4s); their packed places follow `Windows`.
    let n4 = if w.is_multiple_of(4) { 4 } else { 1 };
    let put = || {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "  let x = e % {w}u; var q = e / {w}u; let y = q % {h}u; q = q / {h}u; let ch = q % {c}u; let img = q / {c}u;"
        );
        let _ = writeln!(
            o,
            "  let yy = y * {}u + {}u; let xx = x * {}u + {}u;",
            l.dil, l.pad, l.dil, l.padx
        );
        let _ = writeln!(
            o,
            "  if (ch < {c0}u || ch >= {}u || yy >= {}u) {{ return; }}",
            c0 + l.cs * l.segs,
            l.hp
        );
        let _ = writeln!(
            o,
            "  let cc = ch - {c0}u; let seg = cc / {cs}u; let cl = cc % {cs}u; let gi = img / {ni}u; let ii = img % {ni}u;",
            cs = l.cs,
            ni = l.ni
        );
        let _ = writeln!(
            o,
            "  let d = (gi * {}u + seg) * {}u + ((ii * {}u + cl) * {}u + yy) * {}u + xx;",
            l.segs, l.win, l.cs, l.hp, l.wp
        );
        for j in 0..n4 {
            let vj = if n4 == 4 {
                format!("v[{j}]")
            } else {
                "v".into()
            };
            let _ = writeln!(
                o,
                "  if (xx + {}u < {}u) {{ out[d + {}u] = {vj}; }}",
                j * l.dil,
                l.wp,
                j * l.dil
            );
        }
        o
    };
    let key = format!(
        "conv2d_pack_input_n{n}c{c}h{h}w{w}_c{c0}ni{}cs{}segs{}hp{}wp{}pad{}x{}dil{}win{}",
        l.ni, l.cs, l.segs, l.hp, l.wp, l.pad, l.padx, l.dil, l.win
    );
    let out = g.alloc(len);
    if !scatter(g, src, n * c * h * w, &out, &key, n4, put) {
        pack_input_storage(g, src, [n, c, h, w], c0, l, &out, len);
    }
    out
}

/// Zero `out` (a fill) and scatter values `0..total` of `src` into it through a generated
/// kernel whose `put(e, v)` body (`put`, WGSL) stores values `e..e + n4` of the source (`v`:
/// f32 or vec4) at their packed places. False, with nothing recorded, when the adapter has
/// no usable uniform windows (the caller packs with a storage kernel that writes every value,
/// padding included).
///
/// Why: a storage load costs llvmpipe ~23 cycles per value, a uniform one ~1.6, so the source
/// is read through uniform windows (`params.w0` is the first of this dispatch's) and only the
/// stores, which nothing avoids, stay expensive; the padding is a fill. 1.1× on a whole 64ch
/// 32×32 forward convolution against a storage-to-storage packing kernel.
fn scatter(
    g: &Arc<Gpu>,
    src: &GpuBuffer,
    total: usize,
    out: &GpuBuffer,
    key: &str,
    n4: usize,
    put: impl Fn() -> String,
) -> bool {
    let limit = max_window(g) / 64 * 64;
    // Tests: a scatter window of 0 packs with the storage kernels, a small one (values, a
    // multiple of 64) makes many windows and dispatches.
    let win = g
        .scatter_window()
        .map_or(limit, |v| (v / 64 * 64).min(limit));
    // One uniform binding is the params block.
    let per = (g.limits.max_uniform_buffers_per_shader_stage as usize).saturating_sub(1);
    if win == 0 || per == 0 {
        return false;
    }
    g.clear(out);
    let cap = src.size() as usize / 4;
    let windows = total.div_ceil(win);
    for first in (0..windows).step_by(per) {
        let count = per.min(windows - first);
        // The source buffer's last window may be shorter than `win` (buffers are whole
        // multiples of 64 values).
        let last = win.min(cap - (first + count - 1) * win);
        let inv = if count == 1 { last } else { win } / 4;
        let mut b: Vec<BufferRange> = (0..count)
            .map(|k| BufferRange {
                buffer: src,
                offset: ((first + k) * win * 4) as u64,
                size: (if k + 1 == count { last } else { win } * 4) as u64,
            })
            .collect();
        b.push(BufferRange::whole(out));
        let source = || {
            let ty = if n4 == 4 { "vec4<f32>" } else { "f32" };
            let mut o = String::new();
            let _ = writeln!(o, "// generated by src/ops/conv2d_window.rs (scatter)");
            let _ = writeln!(o, "struct Params {{ w0: u32 }}");
            let _ = writeln!(o, "@group(0) @binding(0) var<uniform> params: Params;");
            let _ = writeln!(o, "struct Win {{ v: array<vec4<f32>, {}> }}", win / 4);
            let _ = writeln!(o, "struct Last {{ v: array<vec4<f32>, {}> }}", last / 4);
            for k in 0..count {
                let ty = if k + 1 == count { "Last" } else { "Win" };
                let _ = writeln!(o, "@group(0) @binding({}) var<uniform> X{k}: {ty};", k + 1);
            }
            let _ = writeln!(
                o,
                "@group(0) @binding({}) var<storage, read_write> out: array<f32>;",
                count + 1
            );
            let _ = writeln!(o, "fn put(e: u32, v: {ty}) {{");
            let _ = writeln!(o, "  if (e >= {total}u) {{ return; }}");
            o.push_str(&put());
            let _ = writeln!(o, "}}");
            let _ = writeln!(o, "@compute @workgroup_size(64)");
            let _ = writeln!(o, "fn scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {{");
            let _ = writeln!(o, "  let i = (wid.y * nwg.x + wid.x) * 64u + li;");
            let _ = writeln!(o, "  if (i >= {inv}u) {{ return; }}");
            for k in 0..count {
                let guard = if k + 1 == count && last < win {
                    format!("if (i < {}u) ", last / 4)
                } else {
                    String::new()
                };
                let _ = writeln!(o, "  {guard}{{");
                let _ = writeln!(o, "    let v = X{k}.v[i];");
                let _ = writeln!(o, "    let e = (params.w0 + {k}u) * {win}u + i * 4u;");
                if n4 == 4 {
                    let _ = writeln!(o, "    put(e, v);");
                } else {
                    for j in 0..4 {
                        let _ = writeln!(o, "    put(e + {j}u, v[{j}]);");
                    }
                }
                let _ = writeln!(o, "  }}");
            }
            let _ = writeln!(o, "}}");
            o
        };
        g.dispatch_generated(
            &format!("{key}_t{total}sw{win}b{count}l{last}"),
            source,
            "scatter",
            &b,
            &[first as u32],
            grid_1d(inv, 64),
        );
    }
    true
}

/// `pack_input` through the storage-buffer kernel, for adapters without usable uniform
/// windows.
fn pack_input_storage(
    g: &Arc<Gpu>,
    src: &GpuBuffer,
    [n, c, h, w]: [usize; 4],
    c0: usize,
    l: Windows,
    out: &GpuBuffer,
    len: usize,
) {
    let f = |x: usize| x as f64;
    g.dispatch(
        PACK_INPUT,
        &[
            ("pi_n", f(n)),
            ("pi_c", f(c)),
            ("pi_c0", f(c0)),
            ("pi_h", f(h)),
            ("pi_w", f(w)),
            ("pi_ni", f(l.ni)),
            ("pi_cs", f(l.cs)),
            ("pi_segs", f(l.segs)),
            ("pi_hp", f(l.hp)),
            ("pi_wp", f(l.wp)),
            ("pi_pad", f(l.pad)),
            ("pi_padx", f(l.padx)),
            ("pi_dil", f(l.dil)),
            ("pi_win", f(l.win)),
            ("pi_total", f(len)),
        ],
        &[src, out],
        &[],
        grid_1d(len, 256),
    );
}

/// The `segs` windows of image group `gi` in a `pack_input` buffer, as bindings.
fn input_windows(xp: &GpuBuffer, gi: usize, segs: usize, win: usize) -> Vec<BufferRange<'_>> {
    (0..segs)
        .map(|s| BufferRange {
            buffer: xp,
            offset: ((gi * segs + s) * win * 4) as u64,
            size: (win * 4) as u64,
        })
        .collect()
}

/// y = conv2d(x, w) through windows, or None when no plan fits this shape on this adapter.
pub fn forward(g: &Arc<Gpu>, x: &GpuBuffer, w: &GpuBuffer, d: &Dims) -> Option<GpuBuffer> {
    Problem::forward(d)?.solve(g, x, w)
}

/// gx from gy through windows, or None when no plan fits.
pub fn backward_input(g: &Arc<Gpu>, gy: &GpuBuffer, w: &GpuBuffer, d: &Dims) -> Option<GpuBuffer> {
    Problem::backward_input(d)?.solve(g, gy, w)
}

/// The window problem of C[m×n] = op(A)·B (B not transposed): a 1×1 convolution of B as one
/// image of `k` channels and n = h·w pixels with A as the weights (`ta`: A is stored [k][m],
/// which the weight packing transposes for free); C is the output, [m][h][w]. None when no
/// factorization of n has a plan.
fn matmul_problem(g: &Gpu, m: usize, n: usize, k: usize, ta: bool) -> Option<Problem> {
    [64, 32, 16, 8, 4]
        .into_iter()
        .filter(|w| n.is_multiple_of(*w))
        .map(|w| Problem {
            n: 1,
            c: k,
            hs: n / w,
            ws: w,
            o: m,
            oh: n / w,
            ow: w,
            k: 1,
            stride: 1,
            pad: 0,
            dil: 1,
            transpose: ta,
            c0: 0,
            c_src: k,
            acc: false,
        })
        .find(|p| p.parts(g).is_some())
}

/// C = op(A)·B through windows (see `matmul_problem`), or None when no plan fits.
pub fn matmul(
    g: &Arc<Gpu>,
    a: &GpuBuffer,
    b: &GpuBuffer,
    [m, n, k]: [usize; 3],
    ta: bool,
) -> Option<GpuBuffer> {
    matmul_problem(g, m, n, k, ta)?.solve(g, b, a)
}

/// Whether `matmul` has a plan for this product (tests check the path is exercised).
pub fn planned_matmul(g: &Gpu, [m, n, k]: [usize; 3], ta: bool) -> bool {
    matmul_problem(g, m, n, k, ta).is_some()
}

/// The register tiles (pixels, rows, channel blocks, unpadded columns, unpadded rows,
/// shared-weight subgroup size) of the forward and input-gradient plans of `d` (tests check
/// that every tile of `TILES` is exercised).
pub fn planned_tiles(g: &Gpu, d: &Dims) -> Vec<(usize, usize, usize, bool, bool, usize)> {
    [Problem::forward(d), Problem::backward_input(d)]
        .into_iter()
        .flatten()
        .filter_map(|p| p.parts(g))
        .flatten()
        .map(|(_, p)| (p.px, p.r, p.m, p.full_w, p.full_h, p.sg))
        .collect()
}

/// Into how many channel parts the window kernels split the forward / input-gradient pass
/// of `d` (0: no plan, the storage-buffer kernels run; tests report which kernel ran).
pub fn planned(g: &Gpu, d: &Dims) -> (usize, usize) {
    let parts = |p: Option<Problem>| p.and_then(|p| p.parts(g)).map_or(0, |v| v.len());
    (
        parts(Problem::forward(d)),
        parts(Problem::backward_input(d)),
    )
}

/// The weight gradient through windows: gw[o,c,ky,kx] = Σ_{n,oy,ox} gy[n,o,oy,ox] ·
/// xpad[n,c,oy·s+ky,ox·s+kx]. x is packed as for the forward pass and gy as windows
/// [image group][output-channel group] of [ni][og][oh][ow]. One dispatch per (image group,
/// output-channel group); each invocation owns 4 output channels × 1 input channel × all taps
/// (K·K vec4 accumulators) and walks the group's pixels 4 at a time. An invocation's input
/// channel selects its window: every segment's loop runs zero times for lanes of other
/// segments (llvmpipe leaves a loop as soon as no lane is active, so a SIMD group of one
/// segment pays only the empty loop checks of the others). Each image group's dispatch adds
/// its sums into gw (the dispatches run in order). Where a subgroup's lanes share their
/// output channels and segment, lane j loads gy channel j and `subgroupBroadcast` hands it
/// round (one gather instead of four per pixel step: 1.1–1.25× on llvmpipe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GradPlan {
    cs: usize,
    segs: usize,
    ni: usize,
    og: usize,
    hp: usize,
    wp: usize,
    nv: usize,
    wx: usize,
    wg: usize,
    /// Subgroup size when a subgroup shares its output channels and segment (its lanes
    /// load the gy vec4s once between them), else 0.
    sg: usize,
}

fn grad_plan(g: &Gpu, d: &Dims) -> Option<GradPlan> {
    if d.kh != d.kw || !d.o.is_multiple_of(KB) || !d.ow.is_multiple_of(P) || d.n == 0 || d.c == 0 {
        return None;
    }
    let maxwin = max_window(g);
    let max_ubo = g.limits.max_uniform_buffers_per_shader_stage as usize;
    let salign = g.limits.min_storage_buffer_offset_alignment as usize;
    let (s, k) = (d.stride, d.kh);
    let (nv, hp, wp) = packed_geometry(d.oh, d.ow, s, k, P);
    let ohw = d.oh * d.ow;
    let divisors = |x: usize| (1..=x).rev().filter(move |v| x.is_multiple_of(*v));
    let mut best: Option<((usize, usize), GradPlan)> = None;
    for cs in divisors(d.c) {
        let segs = d.c / cs;
        if segs + 1 > max_ubo.min(MAX_SEGMENTS) {
            break;
        }
        for ni in divisors(d.n) {
            let wx = round64(ni * cs * hp * wp);
            if wx > maxwin {
                continue;
            }
            for og in divisors(d.o).filter(|og| og % KB == 0) {
                if round64(ni * og * ohw) > maxwin || !(og * d.c * k * k * 4).is_multiple_of(salign)
                {
                    continue;
                }
                let packed = (d.n / ni) * segs * wx;
                if packed.max(d.n * d.o * ohw) * 4
                    > g.limits.max_storage_buffer_binding_size as usize
                {
                    continue;
                }
                let inv = (og / KB) * d.c;
                let wg = if inv < 256 { 8 } else { 16 };
                let plan = GradPlan {
                    cs,
                    segs,
                    ni,
                    og,
                    hp,
                    wp,
                    nv,
                    wx,
                    wg,
                    sg: subgroup_size(g)
                        .filter(|&z| cs.is_multiple_of(z) && z >= KB && wg.is_multiple_of(z))
                        .unwrap_or(0),
                };
                // Fewest dispatches; then fewest image groups (read-modify-writes of gw).
                let score = ((d.n / ni) * (d.o / og), d.n / ni);
                if best.as_ref().is_none_or(|b| score < b.0) {
                    best = Some((score, plan));
                }
            }
        }
    }
    best.map(|b| b.1)
}

fn grad_key(d: &Dims, p: &GradPlan) -> String {
    format!(
        "conv2d_window_grad_n{}c{}o{}oh{}ow{}k{}s{}_cs{}g{}ni{}og{}hp{}wp{}wx{}wg{}sg{}",
        d.n,
        d.c,
        d.o,
        d.oh,
        d.ow,
        d.kh,
        d.stride,
        p.cs,
        p.segs,
        p.ni,
        p.og,
        p.hp,
        p.wp,
        p.wx,
        p.wg,
        p.sg
    )
}

fn grad_source(d: &Dims, p: &GradPlan) -> String {
    let (s, k) = (d.stride, d.kh);
    let kk = k * k;
    let w4 = p.wp / 4;
    let (ow4, ohw4) = (d.ow / P, d.oh * d.ow / P);
    let npix = p.ni * ohw4;
    let gwin = round64(p.ni * p.og * d.oh * d.ow);
    let total = (p.og / KB) * d.c;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "// generated by src/ops/conv2d_window.rs: {}",
        grad_key(d, p)
    );
    let _ = writeln!(o, "struct WinX {{ v: array<vec4<f32>, {}> }}", p.wx / 4);
    let _ = writeln!(o, "struct WinG {{ v: array<vec4<f32>, {}> }}", gwin / 4);
    for i in 0..p.segs {
        let _ = writeln!(o, "@group(0) @binding({i}) var<uniform> X{i}: WinX;");
    }
    let _ = writeln!(o, "@group(0) @binding({}) var<uniform> G: WinG;", p.segs);
    let _ = writeln!(
        o,
        "@group(0) @binding({}) var<storage, read_write> gw: array<f32>;",
        p.segs + 1
    );
    let _ = writeln!(o, "@compute @workgroup_size({})", p.wg);
    entry_head(&mut o, "grad", p.wg, total, p.sg);
    // Channel fastest: a SIMD group shares its segment (cs is a multiple of 8 or the
    // segments are short anyway).
    let _ = writeln!(o, "  let c = t % {}u; let ob = t / {}u;", d.c, d.c);
    let _ = writeln!(o, "  let seg = c / {}u; let cl = c % {}u;", p.cs, p.cs);
    for tap in 0..kk {
        let _ = writeln!(o, "  var a{tap} = vec4<f32>();");
    }
    for seg in 0..p.segs {
        let _ = writeln!(
            o,
            "  for (var i = 0u; i < select(0u, {npix}u, seg == {seg}u); i++) {{"
        );
        let _ = writeln!(
            o,
            "    let img = i / {ohw4}u; let oy = (i / {ow4}u) % {}u; let xb = i % {ow4}u;",
            d.oh
        );
        if p.sg > 0 {
            // The subgroup shares ob: lane j loads gy channel j and broadcasts it.
            let _ = writeln!(
                o,
                "    let gs = G.v[((img * {}u + ob * {KB}u + sid % {KB}u) * {}u + oy) * {ow4}u + xb];",
                p.og, d.oh
            );
            for j in 0..KB {
                let _ = writeln!(o, "    let g{j} = subgroupBroadcast(gs, {j}u);");
            }
        } else {
            for j in 0..KB {
                let _ = writeln!(
                    o,
                    "    let g{j} = G.v[((img * {}u + ob * {KB}u + {j}u) * {}u + oy) * {ow4}u + xb];",
                    p.og, d.oh
                );
            }
        }
        let _ = writeln!(
            o,
            "    let xv = ((img * {}u + cl) * {}u + oy * {s}u) * {w4}u + xb * {}u;",
            p.cs,
            p.hp,
            P * s / 4
        );
        for ky in 0..k {
            for v in 0..p.nv {
                let _ = writeln!(o, "    let v{ky}_{v} = X{seg}.v[xv + {}u];", ky * w4 + v);
            }
        }
        for q in 0..P {
            let _ = writeln!(
                o,
                "    let q{q} = vec4<f32>(g0[{q}], g1[{q}], g2[{q}], g3[{q}]);"
            );
        }
        for ky in 0..k {
            for kx in 0..k {
                for q in 0..P {
                    let j = q * s + kx;
                    let _ = writeln!(
                        o,
                        "    a{} += v{ky}_{}[{}] * q{q};",
                        ky * k + kx,
                        j / 4,
                        j % 4
                    );
                }
            }
        }
        let _ = writeln!(o, "  }}");
    }
    if p.sg > 0 {
        let _ = writeln!(o, "  if (!live) {{ return; }}");
    }
    for tap in 0..kk {
        for j in 0..KB {
            let _ = writeln!(
                o,
                "  gw[((ob * {KB}u + {j}u) * {}u + c) * {kk}u + {tap}u] += a{tap}[{j}];",
                d.c
            );
        }
    }
    let _ = writeln!(o, "}}");
    o
}

/// gw from gy and x through windows, or None when no plan fits.
/// gw as a flat [O·C·K·K] tensor.
pub fn backward_weight(g: &Arc<Gpu>, gy: &GpuBuffer, x: &GpuBuffer, d: &Dims) -> Option<Tensor> {
    let p = grad_plan(g, d)?;
    let (groups, ogroups) = (d.n / p.ni, d.o / p.og);
    let xp = pack_input(
        g,
        x,
        [d.n, d.c, d.h, d.w],
        0,
        Windows {
            ni: p.ni,
            cs: p.cs,
            segs: p.segs,
            hp: p.hp,
            wp: p.wp,
            pad: d.pad,
            padx: d.pad,
            dil: 1,
            win: p.wx,
        },
    );
    let ohw = d.oh * d.ow;
    let gwin = round64(p.ni * p.og * ohw);
    let gp = pack_input(
        g,
        gy,
        [d.n, d.o, d.oh, d.ow],
        0,
        Windows {
            ni: p.ni,
            cs: p.og,
            segs: ogroups,
            hp: d.oh,
            wp: d.ow,
            pad: 0,
            padx: 0,
            dil: 1,
            win: gwin,
        },
    );
    let kk = d.kh * d.kw;
    let wlen = d.o * d.c * kk;
    let key = grad_key(d, &p);
    let total = (p.og / KB) * d.c;
    // Every image group adds into gw (zeroed first): the dispatches run in order, so no
    // per-group partials and no reduction pass.
    let out = g.alloc(wlen);
    g.clear(&out);
    for gi in 0..groups {
        for oi in 0..ogroups {
            let mut b = input_windows(&xp, gi, p.segs, p.wx);
            b.push(BufferRange {
                buffer: &gp,
                offset: ((gi * ogroups + oi) * gwin * 4) as u64,
                size: (gwin * 4) as u64,
            });
            b.push(BufferRange {
                buffer: &out,
                offset: ((oi * p.og * d.c * kk) * 4) as u64,
                size: (p.og * d.c * kk * 4) as u64,
            });
            g.dispatch_generated(
                &key,
                || grad_source(d, &p),
                "grad",
                &b,
                &[],
                grid_1d(total, p.wg as u32),
            );
        }
    }
    Some(Tensor::from_gpu(g, out, &[wlen]))
}

/// Whether a window plan exists for the weight gradient of `d`.
pub fn planned_weight_grad(g: &Gpu, d: &Dims) -> bool {
    grad_plan(g, d).is_some()
}

/// (image groups, output-channel groups) of the weight-gradient window plan of `d`, one
/// dispatch each ((0, 0): no plan; tests check that several image groups added up).
pub fn weight_grad_groups(g: &Gpu, d: &Dims) -> (usize, usize) {
    grad_plan(g, d).map_or((0, 0), |p| (d.n / p.ni, d.o / p.og))
}

/// The subgroup size the weight-gradient window kernel of `d` shares gy loads across (0: none
/// or no plan; tests check that sharing ran).
pub fn weight_grad_subgroup(g: &Gpu, d: &Dims) -> usize {
    grad_plan(g, d).map_or(0, |p| p.sg)
}
