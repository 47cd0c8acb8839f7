// ContrastiveCrop's semantic box, from the last-stage feature map [N, C, h, w]:
//   1. heat = Σ_c features (channel_sum, one invocation per cell);
//   2. per image (box_from_heat, one invocation each): min-max normalise at feature
//      resolution, bilinear upsample to H×W with align_corners = False
//      (src = max((dst + 0.5)·in/out − 0.5, 0), x1 = min(x0 + 1, in − 1)), strict `> k`,
//      rectangular closure of the rows and columns that have a value above k;
//      box = [y0/H, x0/W, y1/H, x1/W] (last index over H, as the reference).
//   A constant map (max = min) or nothing above k gives valid = 0 and the whole image; the
//   caller keeps the previous box then. Only boxes leave the GPU.

struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    out_h: u32,
    out_w: u32,
    k: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_valid: array<f32>;

@compute @workgroup_size(64)
fn channel_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 64u);
    let hw = params.h * params.w;
    if (t >= params.n * hw) { return; }
    let n = t / hw;
    let i = t % hw;
    var s = 0.0;
    for (var c = 0u; c < params.c; c++) {
        s += src[(n * params.c + c) * hw + i];
    }
    out[t] = s;
}

fn axis(dst: u32, n_in: u32, n_out: u32) -> vec3<f32> {
    // (index0, index1, weight of index1)
    let s = max((f32(dst) + 0.5) * (f32(n_in) / f32(n_out)) - 0.5, 0.0);
    let i0 = u32(floor(s));
    let i1 = min(i0 + 1u, n_in - 1u);
    return vec3<f32>(f32(i0), f32(i1), s - f32(i0));
}

// src = heat [N, h·w]; out = boxes [N, 4]; out_valid = [N].
@compute @workgroup_size(64)
fn box_from_heat(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = flat_index(gid, nwg, 64u);
    if (n >= params.n) { return; }
    let hw = params.h * params.w;
    var m: array<f32, 256>;
    var lo = 3.402823e38;
    var hi = -3.402823e38;
    for (var i = 0u; i < hw; i++) {
        let v = src[n * hw + i];
        m[i] = v;
        lo = min(lo, v);
        hi = max(hi, v);
    }
    let range = hi - lo;
    var y0 = params.out_h;
    var y1 = 0u;
    var x0 = params.out_w;
    var x1 = 0u;
    var any = false;
    if (range > 0.0) {
        for (var i = 0u; i < hw; i++) {
            m[i] = (m[i] - lo) / range;
        }
        for (var y = 0u; y < params.out_h; y++) {
            let ay = axis(y, params.h, params.out_h);
            let r0 = u32(ay.x) * params.w;
            let r1 = u32(ay.y) * params.w;
            for (var x = 0u; x < params.out_w; x++) {
                let ax = axis(x, params.w, params.out_w);
                let c0 = u32(ax.x);
                let c1 = u32(ax.y);
                let top = (1.0 - ax.z) * m[r0 + c0] + ax.z * m[r0 + c1];
                let bottom = (1.0 - ax.z) * m[r1 + c0] + ax.z * m[r1 + c1];
                let v = (1.0 - ay.z) * top + ay.z * bottom;
                if (v > params.k) {
                    any = true;
                    y0 = min(y0, y);
                    y1 = max(y1, y);
                    x0 = min(x0, x);
                    x1 = max(x1, x);
                }
            }
        }
    }
    if (any) {
        out[n * 4u] = f32(y0) / f32(params.out_h);
        out[n * 4u + 1u] = f32(x0) / f32(params.out_w);
        out[n * 4u + 2u] = f32(y1) / f32(params.out_h);
        out[n * 4u + 3u] = f32(x1) / f32(params.out_w);
        out_valid[n] = 1.0;
    } else {
        out[n * 4u] = 0.0;
        out[n * 4u + 1u] = 0.0;
        out[n * 4u + 2u] = 1.0;
        out[n * 4u + 3u] = 1.0;
        out_valid[n] = 0.0;
    }
}

// src = heat [N, h·w]; out = the min-max-normalised heat upsampled to [N, H·W] (object
// proposals label its components on the CPU); out_valid = [N] (0 for a constant map). One
// invocation per output pixel: each rescans its image's h·w ≤ 256 sums for the range.
@compute @workgroup_size(64)
fn upsampled_heat(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 64u);
    let ohw = params.out_h * params.out_w;
    if (t >= params.n * ohw) { return; }
    let n = t / ohw;
    let y = (t % ohw) / params.out_w;
    let x = t % params.out_w;
    let hw = params.h * params.w;
    var lo = 3.402823e38;
    var hi = -3.402823e38;
    for (var i = 0u; i < hw; i++) {
        let v = src[n * hw + i];
        lo = min(lo, v);
        hi = max(hi, v);
    }
    let range = hi - lo;
    if (y == 0u && x == 0u) {
        out_valid[n] = select(0.0, 1.0, range > 0.0);
    }
    if (!(range > 0.0)) {
        out[t] = 0.0;
        return;
    }
    let ay = axis(y, params.h, params.out_h);
    let ax = axis(x, params.w, params.out_w);
    let r0 = n * hw + u32(ay.x) * params.w;
    let r1 = n * hw + u32(ay.y) * params.w;
    let c0 = u32(ax.x);
    let c1 = u32(ax.y);
    let m00 = (src[r0 + c0] - lo) / range;
    let m01 = (src[r0 + c1] - lo) / range;
    let m10 = (src[r1 + c0] - lo) / range;
    let m11 = (src[r1 + c1] - lo) / range;
    let top = (1.0 - ax.z) * m00 + ax.z * m01;
    let bottom = (1.0 - ax.z) * m10 + ax.z * m11;
    out[t] = (1.0 - ay.z) * top + ay.z * bottom;
}
