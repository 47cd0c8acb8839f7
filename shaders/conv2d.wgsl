// 2-D convolution, NCHW, no bias (ResNets put BN after every conv), any kernel size, stride
// and padding.
//
// forward:        y[n,o,oy,ox]  = Σ_c,ky,kx x[n,c,oy·s−p+ky, ox·s−p+kx] · w[o,c,ky,kx]
// backward_input: gx[n,c,iy,ix] = Σ_o,ky,kx gy[n,o,(iy+p−ky)/s, (ix+p−kx)/s] · w[o,c,ky,kx]
//                 (only where the division is exact and in range)
// backward_weight: gw[o,c,ky,kx] = Σ_n,oy,ox gy[n,o,oy,ox] · x[n,c,oy·s−p+ky, ox·s−p+kx]
//
// Register tiling without workgroup memory: forward and backward_input give each invocation
// 8 consecutive pixels of one row × 4 channels (weights re-laid out once per call so the 4
// channels are contiguous and zero-padded to a multiple of 4); backward_weight gives each
// invocation 4 output × 4 input channels at one (ky, kx), over a slice of the batch (split-K:
// partial sums land in `out` at [split][o][c][ky][kx] and are summed by reduce::col_sum).

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    o: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, stride: u32, pad: u32, total: u32,
    blocks_x: u32, blocks_ch: u32, ch4: u32, nsplit: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;   // x (forward, weight grad) or gy (input grad)
@group(0) @binding(2) var<storage, read> wt: array<f32>;    // re-laid-out weights (or gy for the weight grad)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const PX: u32 = 8u;

// w [O, C, KH, KW] → wt [C, KH, KW, O4] (O4 = O rounded up to 4, zero padded).
@compute @workgroup_size(256)
fn relayout_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    let p = params;
    if (t >= p.c * p.kh * p.kw * p.ch4) { return; }
    let o = t % p.ch4;
    let r = t / p.ch4;           // (c*KH + ky)*KW + kx
    let kk = r % (p.kh * p.kw);
    let c = r / (p.kh * p.kw);
    out[t] = select(0.0, src[(o * p.c + c) * p.kh * p.kw + kk], o < p.o);
}

// w [O, C, KH, KW] → wt [O, KH, KW, C4] (C4 = C rounded up to 4, zero padded).
@compute @workgroup_size(256)
fn relayout_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    let p = params;
    if (t >= p.o * p.kh * p.kw * p.ch4) { return; }
    let c = t % p.ch4;
    let r = t / p.ch4;           // (o*KH + ky)*KW + kx
    let kk = r % (p.kh * p.kw);
    let o = r / (p.kh * p.kw);
    out[t] = select(0.0, src[(o * p.c + c) * p.kh * p.kw + kk], c < p.c);
}

@compute @workgroup_size(64)
fn conv2d_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 64u);
    let p = params;
    if (t >= p.total) { return; }
    let xb = t % p.blocks_x;
    var r = t / p.blocks_x;
    let oy = r % p.oh;
    r = r / p.oh;
    let ob = r % p.blocks_ch;
    let n = r / p.blocks_ch;
    let ox0 = xb * PX;
    let o0 = ob * 4u;
    var acc: array<vec4<f32>, 8>;
    for (var c = 0u; c < p.c; c++) {
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = i32(oy * p.stride + ky) - i32(p.pad);
            if (iy < 0 || iy >= i32(p.h)) { continue; }
            let xrow = ((n * p.c + c) * p.h + u32(iy)) * p.w;
            for (var kx = 0u; kx < p.kw; kx++) {
                let wi = ((c * p.kh + ky) * p.kw + kx) * p.ch4 + o0;
                let wv = vec4<f32>(wt[wi], wt[wi + 1u], wt[wi + 2u], wt[wi + 3u]);
                for (var q = 0u; q < PX; q++) {
                    let ix = i32((ox0 + q) * p.stride + kx) - i32(p.pad);
                    let inside = ix >= 0 && ix < i32(p.w);
                    let v = select(0.0, src[xrow + u32(clamp(ix, 0, i32(p.w) - 1))], inside);
                    acc[q] += v * wv;
                }
            }
        }
    }
    for (var j = 0u; j < 4u; j++) {
        let o = o0 + j;
        if (o >= p.o) { break; }
        let yrow = ((n * p.o + o) * p.oh + oy) * p.ow;
        for (var q = 0u; q < PX; q++) {
            if (ox0 + q < p.ow) {
                out[yrow + ox0 + q] = acc[q][j];
            }
        }
    }
}

@compute @workgroup_size(64)
fn conv2d_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 64u);
    let p = params;
    if (t >= p.total) { return; }
    let xb = t % p.blocks_x;
    var r = t / p.blocks_x;
    let iy = r % p.h;
    r = r / p.h;
    let cb = r % p.blocks_ch;
    let n = r / p.blocks_ch;
    let ix0 = xb * PX;
    let c0 = cb * 4u;
    let s = i32(p.stride);
    var acc: array<vec4<f32>, 8>;
    for (var o = 0u; o < p.o; o++) {
        for (var ky = 0u; ky < p.kh; ky++) {
            let ty = i32(iy + p.pad) - i32(ky);
            if (ty < 0 || ty % s != 0 || ty / s >= i32(p.oh)) { continue; }
            let grow = ((n * p.o + o) * p.oh + u32(ty / s)) * p.ow;
            for (var kx = 0u; kx < p.kw; kx++) {
                let wi = ((o * p.kh + ky) * p.kw + kx) * p.ch4 + c0;
                let wv = vec4<f32>(wt[wi], wt[wi + 1u], wt[wi + 2u], wt[wi + 3u]);
                for (var q = 0u; q < PX; q++) {
                    let tx = i32(ix0 + q + p.pad) - i32(kx);
                    let ox = tx / s;
                    let ok = tx >= 0 && tx % s == 0 && ox < i32(p.ow);
                    let v = select(0.0, src[grow + u32(clamp(ox, 0, i32(p.ow) - 1))], ok);
                    acc[q] += v * wv;
                }
            }
        }
    }
    for (var j = 0u; j < 4u; j++) {
        let c = c0 + j;
        if (c >= p.c) { break; }
        let xrow = ((n * p.c + c) * p.h + iy) * p.w;
        for (var q = 0u; q < PX; q++) {
            if (ix0 + q < p.w) {
                out[xrow + ix0 + q] = acc[q][j];
            }
        }
    }
}

// src = x, wt = gy. Invocation: (split, o-block, c-block, ky, kx), kx fastest.
@compute @workgroup_size(64)
fn conv2d_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 64u);
    let p = params;
    if (t >= p.total) { return; }
    let kx = t % p.kw;
    var r = t / p.kw;
    let ky = r % p.kh;
    r = r / p.kh;
    let cb = r % p.ch4;          // here ch4 = number of input-channel blocks
    r = r / p.ch4;
    let ob = r % p.blocks_ch;    // number of output-channel blocks
    let split = r / p.blocks_ch;
    let c0 = cb * 4u;
    let o0 = ob * 4u;
    let per = (p.n + p.nsplit - 1u) / p.nsplit;
    let n_begin = split * per;
    let n_end = min(p.n, n_begin + per);
    let hw = p.h * p.w;
    let ohw = p.oh * p.ow;
    // Clamped channel indices: out-of-range lanes compute garbage that is never stored.
    let cc = vec4<u32>(min(c0, p.c - 1u), min(c0 + 1u, p.c - 1u), min(c0 + 2u, p.c - 1u), min(c0 + 3u, p.c - 1u));
    let oc = vec4<u32>(min(o0, p.o - 1u), min(o0 + 1u, p.o - 1u), min(o0 + 2u, p.o - 1u), min(o0 + 3u, p.o - 1u));
    var acc: array<vec4<f32>, 4>;   // acc[i][j]: output channel o0+i, input channel c0+j
    for (var n = n_begin; n < n_end; n++) {
        let xb = n * p.c * hw;
        let gb = n * p.o * ohw;
        for (var oy = 0u; oy < p.oh; oy++) {
            let iy = i32(oy * p.stride + ky) - i32(p.pad);
            if (iy < 0 || iy >= i32(p.h)) { continue; }
            for (var ox = 0u; ox < p.ow; ox++) {
                let ix = i32(ox * p.stride + kx) - i32(p.pad);
                if (ix < 0 || ix >= i32(p.w)) { continue; }
                let xo = xb + u32(iy) * p.w + u32(ix);
                let xv = vec4<f32>(src[xo + cc.x * hw], src[xo + cc.y * hw], src[xo + cc.z * hw], src[xo + cc.w * hw]);
                let go = gb + oy * p.ow + ox;
                acc[0] += wt[go + oc.x * ohw] * xv;
                acc[1] += wt[go + oc.y * ohw] * xv;
                acc[2] += wt[go + oc.z * ohw] * xv;
                acc[3] += wt[go + oc.w * ohw] * xv;
            }
        }
    }
    let kk = p.kh * p.kw;
    let base = split * p.o * p.c * kk;
    for (var i = 0u; i < 4u; i++) {
        let o = o0 + i;
        if (o >= p.o) { break; }
        for (var j = 0u; j < 4u; j++) {
            let c = c0 + j;
            if (c < p.c) {
                out[base + ((o * p.c + c) * p.kh + ky) * p.kw + kx] = acc[i][j];
            }
        }
    }
}

// ---- Operand packing for the uniform-window kernels (src/ops/conv2d_window.rs) ----
// Uniform buffers are read ~14× faster than storage buffers on llvmpipe, but a binding sees at
// most 64 KiB. These two kernels lay operands out as windows of `win` floats so that each
// window is one binding of the generated kernel.

// Sizes are pipeline constants: llvmpipe turns divisions by run-time values into scalar
// loops over the lanes, divisions by constants into multiplies.
override pi_n: u32; override pi_c: u32; override pi_h: u32; override pi_w: u32;
override pi_ni: u32; override pi_cs: u32; override pi_segs: u32; override pi_hp: u32;
override pi_c0: u32; override pi_wp: u32; override pi_pad: u32; override pi_padx: u32; override pi_dil: u32; override pi_win: u32;
override pi_total: u32;

// x [N, C, H, W] → windows [group][segment] each holding [ni][cs][hp][wp]: zero padded by `pad`
// on the top/left, zero beyond the data, and dilated by `dil` (zeros between source pixels:
// the transposed convolution of a strided one becomes a stride-1 convolution).
@compute @workgroup_size(256)
fn pack_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    if (t >= pi_total) { return; }
    let win = t / pi_win;
    let r = t % pi_win;
    let g = win / pi_segs;
    let seg = win % pi_segs;
    let plane = pi_hp * pi_wp;
    let img = r / (pi_cs * plane);
    let rr = r % (pi_cs * plane);
    let cl = rr / plane;
    let yy = i32((rr / pi_wp) % pi_hp) - i32(pi_pad);
    let xx = i32(rr % pi_wp) - i32(pi_padx);
    let d = i32(pi_dil);
    let y = yy / d;
    let x = xx / d;
    let ok = img < pi_ni && yy >= 0 && xx >= 0 && yy % d == 0 && xx % d == 0
        && y < i32(pi_h) && x < i32(pi_w);
    let n = g * pi_ni + img;
    let c = pi_c0 + seg * pi_cs + cl;
    let si = ((n * pi_c + c) * pi_h + u32(max(y, 0))) * pi_w + u32(max(x, 0));
    out[t] = select(0.0, src[min(si, pi_n * pi_c * pi_h * pi_w - 1u)], ok);
}

override pw_o: u32; override pw_c: u32; override pw_kk: u32; override pw_og: u32;
override pw_cs: u32; override pw_spw: u32; override pw_nww: u32; override pw_segs: u32;
override pw_c0: u32; override pw_win: u32; override pw_transpose: u32; override pw_total: u32;
override pw_m: u32;

// w [O, C, K, K] → windows [o-group][window] each holding
// [segment][group of pw_m o-blocks][cs][o-block in group][K·K][4] (4 output channels
// contiguous; one invocation's pw_m blocks of one input channel contiguous). With `transpose`, the kernel's (o, c) is the source's (c, o)
// and taps are flipped: the weights of the input-gradient convolution.
@compute @workgroup_size(256)
fn pack_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    if (t >= pw_total) { return; }
    let win = t / pw_win;
    let r = t % pw_win;
    let ogi = win / pw_nww;
    let wwin = win % pw_nww;
    let wseg = pw_og * pw_cs * pw_kk;
    let segl = r / wseg;
    let rr = r % wseg;
    let seg = wwin * pw_spw + segl;
    let j = rr % 4u;
    let tap = (rr / 4u) % pw_kk;
    let b = (rr / (4u * pw_kk)) % pw_m;
    let cl = (rr / (4u * pw_kk * pw_m)) % pw_cs;
    let ob = rr / (4u * pw_kk * pw_m * pw_cs);
    let o = ogi * pw_og + (ob * pw_m + b) * 4u + j;
    let c = pw_c0 + seg * pw_cs + cl;
    let ok = segl < pw_spw && seg < pw_segs;
    var si = (o * pw_c + c) * pw_kk + tap;
    if (pw_transpose != 0u) {
        si = (c * pw_o + o) * pw_kk + (pw_kk - 1u - tap);
    }
    out[t] = select(0.0, src[min(si, pw_o * pw_c * pw_kk - 1u)], ok);
}
