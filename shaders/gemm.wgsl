// The hardware-GPU GEMM: one tile engine for matrix products and for convolutions as implicit
// GEMMs (no im2col in memory: the B operand is gathered from the NCHW tensor as it is staged).
//
// MODE 0  matmul           C[M,N] = op(A)·op(B) (+ bias[N]); A [M,K] or [K,M] (ta), B [K,N] or [N,K] (tb)
// MODE 1  conv forward     y[n,o,p]   = Σ_(c,ky,kx) w[o,(c,ky,kx)] · x̂[(c,ky,kx),(n,p)]      M=O, N=N·OH·OW
// MODE 2  conv input grad  gx[n,c,q]  = Σ_(o,ky,kx) w[o,c,ky,kx] · gŷ[(o,ky,kx),(n,q)]       M=C, N=pixels of one phase
// MODE 3  conv weight grad gw[o,(c,ky,kx)] = Σ_(n,p) gy[n,o,p] · x̂[(c,ky,kx),(n,p)]         M=O, N=C·KH·KW
//
// The input gradient of a stride-s convolution runs as s² phases (grid z): the pixels with
// iy ≡ py, ix ≡ px (mod s) receive taps ky ≡ iy+pad, kx ≡ ix+pad (mod s) only, so each phase is
// a dense GEMM over its own taps (no 75 %-zero dilated convolution at stride 2). The weight
// gradient's reduction (N·OH·OW) is split over grid z (split-K); each slice writes its partial
// [slice][O][C·KH·KW] and the slices are summed in order afterwards.
//
// Tiles: a workgroup of WG invocations computes BM × BN outputs (BM = TM · WG / (BN/4)); each
// invocation accumulates TM rows × 4 columns in registers, reading vec4s from the tiles staged in
// workgroup memory, BK reduction steps at a time. Each invocation stages vec4s of 4 rows (or
// columns) at one reduction step; along the operand's contiguous dimension consecutive
// invocations take consecutive addresses (A_KFAST / B_KFAST pick it), so global loads coalesce
// in every transpose case and convolution mode. Out-of-range
// loads read index 0 and are replaced by zero; out-of-range outputs are not stored.

override MODE: u32 = 0u;
override WG: u32 = 256u;      // invocations per workgroup
override BN: u32 = 64u;       // tile columns (a multiple of 4)
override TM: u32 = 8u;        // rows per invocation (4 or 8)
override BK: u32 = 16u;       // reduction steps staged at once
override A_VECS: u32 = 512u;  // BK · BM / 4
override B_VECS: u32 = 256u;  // BK · BN / 4
override A_KFAST: bool = true;
override B_KFAST: bool = false;

struct Params {
    m: u32, cols: u32, kdim: u32, split: u32,       // GEMM sizes; reduction per z slice (MODE 3)
    ta: u32, tb: u32, has_bias: u32, col_groups: u32, // col_groups: z slices carrying column tiles
    n: u32, c: u32, h: u32, w: u32,
    o: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, stride: u32, pad: u32, _p0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> lhs: array<f32>;   // A, w, w, gy
@group(0) @binding(2) var<storage, read> rhs: array<f32>;   // B, x, gy, x
@group(0) @binding(3) var<storage, read> bias: array<f32>;  // MODE 0 only (any buffer otherwise)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> a_tile: array<vec4<f32>, A_VECS>;  // [k][m/4]
var<workgroup> b_tile: array<vec4<f32>, B_VECS>;  // [k][n/4]

// One phase of the input gradient: first taps, tap counts and the phase's pixel grid.
struct Phase { py: u32, px: u32, ky0: u32, kx0: u32, nky: u32, nkx: u32, hp: u32, wp: u32 }

fn phase_of(z: u32) -> Phase {
    let p = params;
    let s = p.stride;
    var f: Phase;
    f.py = z / s;
    f.px = z % s;
    f.ky0 = (f.py + p.pad) % s;
    f.kx0 = (f.px + p.pad) % s;
    f.nky = select(0u, (p.kh - f.ky0 + s - 1u) / s, f.ky0 < p.kh);
    f.nkx = select(0u, (p.kw - f.kx0 + s - 1u) / s, f.kx0 < p.kw);
    f.hp = select(0u, (p.h - f.py + s - 1u) / s, f.py < p.h);
    f.wp = select(0u, (p.w - f.px + s - 1u) / s, f.px < p.w);
    return f;
}

// Operand addresses split into a part that depends on the reduction index k only (decoded
// once per staged vec4) and a part that depends on the row / column only (decoded once per
// workgroup), so that the tile loads do no per-element division.

// The k-part of A's address; A's address is a_base(k) + m · a_stride().
fn a_base(k: u32, ph: Phase) -> u32 {
    let p = params;
    switch MODE {
        case 0u: { return select(k, k * p.m, p.ta != 0u); }
        case 2u: {
            // k = (o, tap of the phase): w[o, m, ky, kx].
            let taps = ph.nky * ph.nkx;
            let t = k % taps;
            let ky = ph.ky0 + p.stride * (t / ph.nkx);
            let kx = ph.kx0 + p.stride * (t % ph.nkx);
            return (k / taps) * p.c * p.kh * p.kw + ky * p.kw + kx;
        }
        case 3u: {
            // k = (n, oy·OW + ox): gy[n, m, oy, ox].
            let hw = p.oh * p.ow;
            return (k / hw) * p.o * hw + k % hw;
        }
        default: { return k; }
    }
}

fn a_stride() -> u32 {
    let p = params;
    switch MODE {
        case 0u: { return select(p.kdim, 1u, p.ta != 0u); }
        case 2u: { return p.kh * p.kw; }
        case 3u: { return p.oh * p.ow; }
        default: { return p.kdim; }
    }
}

// The convolution modes' B element: a pixel of an NCHW tensor at (plane offset, y, x), the
// sum of a column part (`column`) and a k part (`b_key`); outside the image it is zero.
// MODE 1 (x):  column (n·C·H·W, oy·s − pad, ox·s − pad), key (c·H·W, ky, kx)
// MODE 2 (gy): column (n·O·OH·OW, (iy + pad − ky0)/s, (ix + pad − kx0)/s), key (o·OH·OW, −a, −b)
//              for the phase's tap (ky0 + s·a, kx0 + s·b)
// MODE 3 (x):  column (c·H·W, ky, kx), key (n·C·H·W, oy·s − pad, ox·s − pad)
// The fourth lane of a column is 1 where the column exists.
fn b_column(col: u32, cols: u32, ph: Phase) -> vec4<i32> {
    let p = params;
    if (col >= cols) { return vec4(0); }
    switch MODE {
        case 1u: {
            let hw = p.oh * p.ow;
            let pix = col % hw;
            return vec4(i32((col / hw) * p.c * p.h * p.w),
                        i32((pix / p.ow) * p.stride) - i32(p.pad),
                        i32((pix % p.ow) * p.stride) - i32(p.pad), 1);
        }
        case 2u: {
            let pw = ph.hp * ph.wp;
            let q = col % pw;
            let iy = ph.py + p.stride * (q / ph.wp);
            let ix = ph.px + p.stride * (q % ph.wp);
            // iy + pad − ky0 ≥ 0 and divisible by s (ky0 = (py + pad) mod s).
            return vec4(i32((col / pw) * p.o * p.oh * p.ow),
                        i32((iy + p.pad - ph.ky0) / p.stride),
                        i32((ix + p.pad - ph.kx0) / p.stride), 1);
        }
        default: {
            let kk = p.kh * p.kw;
            return vec4(i32((col / kk) * p.h * p.w), i32(col % kk / p.kw), i32(col % p.kw), 1);
        }
    }
}

fn b_key(k: u32, ph: Phase) -> vec3<i32> {
    let p = params;
    switch MODE {
        case 1u: {
            let kk = p.kh * p.kw;
            return vec3(i32((k / kk) * p.h * p.w), i32(k % kk / p.kw), i32(k % p.kw));
        }
        case 2u: {
            let taps = ph.nky * ph.nkx;
            let t = k % taps;
            return vec3(i32((k / taps) * p.oh * p.ow), -i32(t / ph.nkx), -i32(t % ph.nkx));
        }
        default: {
            let hw = p.oh * p.ow;
            let pix = k % hw;
            return vec3(i32((k / hw) * p.c * p.h * p.w),
                        i32((pix / p.ow) * p.stride) - i32(p.pad),
                        i32((pix % p.ow) * p.stride) - i32(p.pad));
        }
    }
}

// B at (key, column) in the convolution modes; zero outside the image or past the last column.
fn b_conv(key: vec3<i32>, column: vec4<i32>, kin: bool) -> f32 {
    let p = params;
    let y = key.y + column.y;
    let x = key.z + column.z;
    // MODE 2 reads gy (OH × OW); the others read x (H × W).
    let hh = i32(select(p.h, p.oh, MODE == 2u));
    let ww = i32(select(p.w, p.ow, MODE == 2u));
    let ok = kin && column.w != 0 && y >= 0 && x >= 0 && y < hh && x < ww;
    let i = key.x + column.x + y * ww + x;
    return select(0.0, rhs[select(0u, u32(i), ok)], ok);
}

fn store(m: u32, col: u32, v: f32, ph: Phase, slice: u32) {
    let p = params;
    switch MODE {
        case 0u: {
            var r = v;
            if (p.has_bias != 0u) { r += bias[col]; }
            out[m * p.cols + col] = r;
        }
        case 1u: {
            let hw = p.oh * p.ow;
            out[((col / hw) * p.o + m) * hw + col % hw] = v;
        }
        case 2u: {
            let pw = ph.hp * ph.wp;
            let iy = ph.py + p.stride * (col % pw / ph.wp);
            let ix = ph.px + p.stride * (col % ph.wp);
            out[(((col / pw) * p.c + m) * p.h + iy) * p.w + ix] = v;
        }
        default: {
            out[(slice * p.m + m) * p.cols + col] = v;
        }
    }
}

// One entry point per mode (MODE set to match), so that profiles and benchmarks name the op.
@compute @workgroup_size(WG)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    gemm(wid, nwg, lid);
}

@compute @workgroup_size(WG)
fn conv_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    gemm(wid, nwg, lid);
}

@compute @workgroup_size(WG)
fn conv_input_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    gemm(wid, nwg, lid);
}

@compute @workgroup_size(WG)
fn conv_weight_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    gemm(wid, nwg, lid);
}

fn gemm(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let p = params;
    let bm = TM * WG * 4u / BN;
    let slice = wid.z / p.col_groups;
    let col0 = ((wid.z % p.col_groups) * nwg.x + wid.x) * BN;
    let m0 = wid.y * bm;
    var ph: Phase;
    var cols = p.cols;
    var kbeg = 0u;
    var kend = p.kdim;
    if (MODE == 2u) {
        ph = phase_of(slice);
        cols = p.n * ph.hp * ph.wp;
        // A phase without pixels has nothing to reduce (and a zero-width grid to divide by).
        kend = select(p.o * ph.nky * ph.nkx, 0u, cols == 0u);
    }
    if (MODE == 3u) {
        kbeg = slice * p.split;
        kend = min(p.kdim, kbeg + p.split);
    }
    // Workgroups past the last column tile (the grid is rounded up) or with nothing to do
    // stay for the barriers but store nothing.
    let tx = lid % (BN / 4u);
    let ty = lid / (BN / 4u);
    // The B columns this invocation stages, decoded once (at most 2 vec4s of 4 columns).
    var columns: array<vec4<i32>, 8>;
    if (MODE != 0u) {
        for (var i = 0u; i < B_VECS / WG; i++) {
            let u = lid + i * WG;
            let n4 = select(u % (BN / 4u), u / BK, B_KFAST);
            for (var j = 0u; j < 4u; j++) {
                columns[i * 4u + j] = b_column(col0 + n4 * 4u + j, cols, ph);
            }
        }
    }
    let a_step = a_stride();
    var acc: array<vec4<f32>, 8>;
    for (var k0 = kbeg; k0 < kend; k0 += BK) {
        // Each invocation stages whole vec4s (4 rows or 4 columns at one reduction step), so no
        // two invocations write parts of one vector.
        for (var i = 0u; i < A_VECS / WG; i++) {
            let u = lid + i * WG;
            var kk: u32;
            var m4: u32;
            if (A_KFAST) { kk = u % BK; m4 = u / BK; } else { m4 = u % (bm / 4u); kk = u / (bm / 4u); }
            let kin = k0 + kk < kend;
            let base = a_base(select(kbeg, k0 + kk, kin), ph);
            var v = vec4(0.0);
            for (var j = 0u; j < 4u; j++) {
                let m = m0 + m4 * 4u + j;
                let ok = kin && m < p.m;
                v[j] = select(0.0, lhs[select(0u, base + m * a_step, ok)], ok);
            }
            a_tile[kk * (bm / 4u) + m4] = v;
        }
        for (var i = 0u; i < B_VECS / WG; i++) {
            let u = lid + i * WG;
            var kk: u32;
            var n4: u32;
            if (B_KFAST) { kk = u % BK; n4 = u / BK; } else { n4 = u % (BN / 4u); kk = u / (BN / 4u); }
            let kin = k0 + kk < kend;
            var v = vec4(0.0);
            if (MODE == 0u) {
                for (var j = 0u; j < 4u; j++) {
                    let col = col0 + n4 * 4u + j;
                    let ok = kin && col < cols;
                    let idx = select((k0 + kk) * p.cols + col, col * p.kdim + k0 + kk, p.tb != 0u);
                    v[j] = select(0.0, rhs[select(0u, idx, ok)], ok);
                }
            } else {
                let key = b_key(select(kbeg, k0 + kk, kin), ph);
                for (var j = 0u; j < 4u; j++) {
                    v[j] = b_conv(key, columns[i * 4u + j], kin);
                }
            }
            b_tile[kk * (BN / 4u) + n4] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let b = b_tile[kk * (BN / 4u) + tx];
            for (var i = 0u; i < TM / 4u; i++) {
                let a = a_tile[kk * (bm / 4u) + ty * (TM / 4u) + i];
                acc[i * 4u] += a.x * b;
                acc[i * 4u + 1u] += a.y * b;
                acc[i * 4u + 2u] += a.z * b;
                acc[i * 4u + 3u] += a.w * b;
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < TM; r++) {
        let m = m0 + ty * TM + r;
        if (m >= p.m) { break; }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + tx * 4u + j;
            if (col < cols) {
                store(m, col, acc[r][j], ph, slice);
            }
        }
    }
}
