// LARS (You et al. 2017) on top of PyTorch-style SGD, for one parameter tensor:
//   trust = eta·‖p‖ / (‖g‖ + wd·‖p‖ + eps)   (1 when ‖p‖ or ‖g‖ is 0)
//   d = (g + wd·p)·trust;  buf ← momentum·buf + d;  p ← p − lr·buf
// lars_norms runs as one workgroup and writes (‖p‖, ‖g‖) to `norms`; lars_step reads them,
// so the trust ratio never leaves the GPU.

struct Params {
    n: u32,
    lr: f32,
    momentum: f32,
    wd: f32,
    eta: f32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> p: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;
@group(0) @binding(4) var<storage, read_write> norms: array<f32>;

var<workgroup> sp: array<f32, 256>;
var<workgroup> sg: array<f32, 256>;

@compute @workgroup_size(256)
fn lars_norms(@builtin(local_invocation_index) lid: u32) {
    var ap = 0.0;
    var ag = 0.0;
    for (var i = lid; i < params.n; i += 256u) {
        ap += p[i] * p[i];
        ag += g[i] * g[i];
    }
    sp[lid] = ap;
    sg[lid] = ag;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            sp[lid] += sp[lid + s];
            sg[lid] += sg[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        norms[0] = sqrt(sp[0]);
        norms[1] = sqrt(sg[0]);
    }
}

@compute @workgroup_size(256)
fn lars_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i >= params.n) { return; }
    let pn = norms[0];
    let gn = norms[1];
    var trust = 1.0;
    if (pn > 0.0 && gn > 0.0) {
        trust = params.eta * pn / (gn + params.wd * pn + params.eps);
    }
    let d = (g[i] + params.wd * p[i]) * trust;
    let b = params.momentum * buf[i] + d;
    buf[i] = b;
    p[i] = p[i] - params.lr * b;
}
