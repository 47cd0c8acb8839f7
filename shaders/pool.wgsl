// Pooling over NCHW planes.
// max_pool:  y = max over the k×k window (padding cells are skipped, as PyTorch's −∞ padding);
//            the index (iy·W + ix) of the first maximum in row-major window order is saved.
// backward:  each input cell gathers gy from the windows whose saved index is itself (no atomics).
// avg_pool (global): y[n,c] = mean over H·W; gx = gy/(H·W).

struct Params {
    planes: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    k: u32,
    stride: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> out_idx: array<f32>;

@compute @workgroup_size(256)
fn max_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    let p = params;
    if (t >= p.planes * p.oh * p.ow) { return; }
    let ox = t % p.ow;
    let oy = (t / p.ow) % p.oh;
    let plane = t / (p.ow * p.oh);
    var best = -3.402823e38;
    var best_i = 0u;
    var found = false;
    for (var ky = 0u; ky < p.k; ky++) {
        let iy = i32(oy * p.stride + ky) - i32(p.pad);
        if (iy < 0 || iy >= i32(p.h)) { continue; }
        for (var kx = 0u; kx < p.k; kx++) {
            let ix = i32(ox * p.stride + kx) - i32(p.pad);
            if (ix < 0 || ix >= i32(p.w)) { continue; }
            let i = u32(iy) * p.w + u32(ix);
            let v = x[plane * p.h * p.w + i];
            if (!found || v > best) {
                best = v;
                best_i = i;
                found = true;
            }
        }
    }
    out[t] = best;
    out_idx[t] = f32(best_i);
}

// x holds gy here; idx the saved argmax; out is gx.
@compute @workgroup_size(256)
fn max_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    let p = params;
    if (t >= p.planes * p.h * p.w) { return; }
    let i = t % (p.h * p.w);
    let ix = i % p.w;
    let iy = i / p.w;
    let plane = t / (p.h * p.w);
    // Output rows whose window covers iy: oy·s − pad ≤ iy ≤ oy·s − pad + k − 1.
    let ylo = max(i32(iy + p.pad) - i32(p.k) + 1, 0);
    let xlo = max(i32(ix + p.pad) - i32(p.k) + 1, 0);
    let oy0 = u32((ylo + i32(p.stride) - 1) / i32(p.stride));
    let ox0 = u32((xlo + i32(p.stride) - 1) / i32(p.stride));
    let oy1 = min((iy + p.pad) / p.stride, p.oh - 1u);
    let ox1 = min((ix + p.pad) / p.stride, p.ow - 1u);
    var g = 0.0;
    for (var oy = oy0; oy <= oy1; oy++) {
        for (var ox = ox0; ox <= ox1; ox++) {
            let o = (plane * p.oh + oy) * p.ow + ox;
            if (u32(idx[o]) == i) {
                g += x[o];
            }
        }
    }
    out[t] = g;
}

@compute @workgroup_size(256)
fn avg_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    if (t >= params.planes) { return; }
    let hw = params.h * params.w;
    var s = 0.0;
    for (var i = 0u; i < hw; i++) {
        s += x[t * hw + i];
    }
    out[t] = s / f32(hw);
}

// x holds gy [planes].
@compute @workgroup_size(256)
fn avg_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    let hw = params.h * params.w;
    if (t >= params.planes * hw) { return; }
    out[t] = x[t / hw] / f32(hw);
}
