// Reductions: the sum of everything (one workgroup, strided partial sums then a tree), column
// sums of a row-major [M, N] matrix (bias gradients, split-K partials) and row sums, plus the
// broadcasts that are their gradients.

struct Params {
    m: u32,   // rows (or element count for sum_all)
    n: u32,   // columns
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, 256>;

// out[0] = scale * sum(x[0..m])
@compute @workgroup_size(256)
fn sum_all(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < params.m; i += 256u) {
        s += x[i];
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lid < w) {
            partial[lid] += partial[lid + w];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[0] = partial[0] * params.scale;
    }
}

// out[j] = scale * sum_i x[i, j]
@compute @workgroup_size(256)
fn col_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = flat_index(gid, nwg, 256u);
    if (j >= params.n) { return; }
    var s = 0.0;
    for (var i = 0u; i < params.m; i++) {
        s += x[i * params.n + j];
    }
    out[j] = s * params.scale;
}

// out[i] = scale * sum_j x[i, j]
@compute @workgroup_size(256)
fn row_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= params.m) { return; }
    var s = 0.0;
    let base = i * params.n;
    for (var j = 0u; j < params.n; j++) {
        s += x[base + j];
    }
    out[i] = s * params.scale;
}

// out[i, j] = scale * x[i]   (gradient of row_sum)
@compute @workgroup_size(256)
fn row_broadcast(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    if (t >= params.m * params.n) { return; }
    out[t] = x[t / params.n] * params.scale;
}
