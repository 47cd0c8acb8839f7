// Contrastive (InfoNCE / NT-Xent) cross-entropy on a similarity matrix sim [N, M] without
// materialising masked or scaled copies: logits_ij = scale·sim_ij, with entries removed by
// the mode's mask and the label given by the mode:
//   mode 0 (NT-Xent, M = N = 2B): mask j = i; label (i + N/2) mod N
//   mode 1 (MoCo, columns = [B in-batch keys | queue]): mask j < B, j ≠ i; label i
//   mode 2 (CLSA's weak term, same columns): nothing masked (other keys are negatives); label
//          offset + i (rows are one rank's share of the in-batch keys)
//   mode 3 (NT-Xent over every rank's embeddings, M = 2·G columns [view 1 | view 2] of the
//          G images of the global batch, N = 2·b rows: this rank's b images, rows [view 1 |
//          view 2], the first at global index offset): row i is global row r(i); mask j = r(i);
//          label (r(i) + G) mod 2G
// The last `hard_cols` columns are hard negatives (saliency-guided masking), logits scaled by
// alpha as well: with images > 0, blocks of `images` columns of which row i keeps only
// column i mod images; with images = 0 every row keeps every one.
// Backward: g_ij = scale·f_j·(softmax_ij − [j = label])·g_i on unmasked entries (f_j = alpha
// on hard columns, 1 elsewhere), 0 elsewhere.
// One workgroup of 256 invocations per row (MoCo's rows are B + K = 66,048 long): strided
// loads, max and sum by tree reductions in workgroup memory.
struct NceParams {
    n: u32,
    m: u32,
    scale: f32,
    mode: u32,
    in_batch: u32,
    hard_cols: u32,
    images: u32,
    alpha: f32,
    offset: u32,
    global_half: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> nce: NceParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;  // the similarity matrix
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// Global row of local row i (mode 3; i otherwise).
fn nce_row(i: u32) -> u32 {
    if (nce.mode == 3u) {
        let lh = nce.n / 2u;
        if (i < lh) {
            return nce.offset + i;
        }
        return nce.global_half + nce.offset + (i - lh);
    }
    return i;
}

fn nce_masked(i: u32, j: u32) -> bool {
    let first_hard = nce.m - nce.hard_cols;
    if (j >= first_hard) {
        return nce.images > 0u && (j - first_hard) % nce.images != i % nce.images;
    }
    if (nce.mode == 0u) {
        return j == i;
    }
    if (nce.mode == 2u) {
        return false;
    }
    if (nce.mode == 3u) {
        return j == nce_row(i);
    }
    return j < nce.in_batch && j != i;
}

fn nce_label(i: u32) -> u32 {
    if (nce.mode == 0u) {
        return (i + nce.n / 2u) % nce.n;
    }
    if (nce.mode == 2u) {
        return nce.offset + i;
    }
    if (nce.mode == 3u) {
        return (nce_row(i) + nce.global_half) % (2u * nce.global_half);
    }
    return i;
}

// The logit factor of column j.
fn nce_factor(j: u32) -> f32 {
    return select(1.0, nce.alpha, j >= nce.m - nce.hard_cols);
}

const NCE_WG: u32 = 256u;

var<workgroup> nce_red: array<f32, NCE_WG>;

// The workgroup's (max | sum) of its invocations' values, every invocation getting it.
fn nce_reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    nce_red[lid] = v;
    workgroupBarrier();
    for (var s = NCE_WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let o = nce_red[lid + s];
            nce_red[lid] = select(nce_red[lid] + o, max(nce_red[lid], o), is_max);
        }
        workgroupBarrier();
    }
    let r = nce_red[0];
    workgroupBarrier();
    return r;
}

// log Σ exp over row i's unmasked scaled logits: one workgroup per row, strided loads and
// tree reductions (rows are B + K long).
fn nce_lse(i: u32, lid: u32) -> f32 {
    let base = i * nce.m;
    var mx = -3.402823e38;
    for (var j = lid; j < nce.m; j += NCE_WG) {
        if (!nce_masked(i, j)) {
            mx = max(mx, nce.scale * nce_factor(j) * logits[base + j]);
        }
    }
    mx = nce_reduce(lid, mx, true);
    var s = 0.0;
    for (var j = lid; j < nce.m; j += NCE_WG) {
        if (!nce_masked(i, j)) {
            s += exp(nce.scale * nce_factor(j) * logits[base + j] - mx);
        }
    }
    return log(nce_reduce(lid, s, false)) + mx;
}

@compute @workgroup_size(256)
fn info_nce_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = wid.x + wid.y * nwg.x;
    if (i >= nce.n) { return; }
    let lse = nce_lse(i, lid);
    if (lid == 0u) {
        out[i] = lse - nce.scale * logits[i * nce.m + nce_label(i)];
    }
}

@compute @workgroup_size(256)
fn info_nce_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = wid.x + wid.y * nwg.x;
    if (i >= nce.n) { return; }
    let base = i * nce.m;
    let lse = nce_lse(i, lid);
    let label = nce_label(i);
    let gi = g[i] * nce.scale;
    for (var j = lid; j < nce.m; j += NCE_WG) {
        var v = 0.0;
        if (!nce_masked(i, j)) {
            let f = nce_factor(j);
            v = (exp(nce.scale * f * logits[base + j] - lse) - select(0.0, 1.0, j == label)) * gi * f;
        }
        out[base + j] = v;
    }
}
