// C[M, N] = op(A) · op(B) (+ bias[N]), with op = optional transpose:
//   A is stored [M, K] (ta = 0) or [K, M] (ta = 1); B is stored [K, N] (tb = 0) or [N, K] (tb = 1).
//
// The CPU-type adapters' product (lavapipe): each invocation owns a 4×4 block of C in
// registers, no workgroup memory and no barriers. Hardware GPUs run gemm.wgsl instead.
// Out-of-range rows and columns load from clamped addresses and are never stored, so any
// shape works.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    ta: u32,
    tb: u32,
    has_bias: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn load_a(row: u32, kk: u32) -> f32 {
    let r = min(row, params.m - 1u);
    if (params.ta == 0u) {
        return a[r * params.k + kk];
    }
    return a[kk * params.m + r];
}

fn load_b(kk: u32, col: u32) -> f32 {
    let cl = min(col, params.n - 1u);
    if (params.tb == 0u) {
        return b[kk * params.n + cl];
    }
    return b[cl * params.k + kk];
}

fn store_block(row0: u32, col0: u32, acc: array<vec4<f32>, 4>) {
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + i;
        if (row >= params.m) { return; }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + j;
            if (col < params.n) {
                var v = acc[i][j];
                if (params.has_bias != 0u) {
                    v += bias[col];
                }
                c[row * params.n + col] = v;
            }
        }
    }
}

@compute @workgroup_size(16, 16)
fn matmul_reg(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col0 = gid.x * 4u;
    let row0 = gid.y * 4u;
    if (col0 >= params.n || row0 >= params.m) { return; }
    var acc: array<vec4<f32>, 4>;
    for (var kk = 0u; kk < params.k; kk++) {
        let bv = vec4<f32>(load_b(kk, col0), load_b(kk, col0 + 1u), load_b(kk, col0 + 2u), load_b(kk, col0 + 3u));
        acc[0] += load_a(row0, kk) * bv;
        acc[1] += load_a(row0 + 1u, kk) * bv;
        acc[2] += load_a(row0 + 2u, kk) * bv;
        acc[3] += load_a(row0 + 3u, kk) * bv;
    }
    store_block(row0, col0, acc);
}
