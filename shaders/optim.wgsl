// In-place parameter updates, one invocation per element.
// sgd_step (PyTorch SGD, dampening 0, no Nesterov):
//   g' = g + wd·p;  buf ← momentum·buf + g';  p ← p − lr·buf
// ema_update (momentum / target encoders): t ← m·t + (1 − m)·o

struct Params {
    n: u32,
    lr: f32,
    momentum: f32,
    wd: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> p: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;

@compute @workgroup_size(256)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= params.n) { return; }
    let gi = g[i] + params.wd * p[i];
    let b = params.momentum * buf[i] + gi;
    buf[i] = b;
    p[i] = p[i] - params.lr * b;
}

// p is the target, g the online values; `momentum` is m.
@compute @workgroup_size(256)
fn ema_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= params.n) { return; }
    p[i] = params.momentum * p[i] + (1.0 - params.momentum) * g[i];
}
