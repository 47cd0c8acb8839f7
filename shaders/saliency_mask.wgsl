// Saliency-guided masking (SPEC B.3, src/ops/saliency_mask.rs has the rules in full):
//   cell_saliency: features [N, C, fh, fw] -> [N, G*G], the channel sum bilinearly resized to
//                  the G x G grid (align_corners = False), one invocation per cell;
//   mask_cells:    [N, G*G] saliency + plan rows -> [N, 3, G*G] of 0/1, one invocation per
//                  (image, channel, cell): foreground >= mean - 0.6 std, the counts of the
//                  mode, cells taken in the plan's priority order;
//   apply_mask:    x [N, 3, H, W], masked pixels replaced by the fill image (grid cells or the
//                  focal square), one invocation per element.

struct MaskParams {
    n: u32,
    c: u32,
    h: u32,      // feature rows (cell_saliency) or image rows (apply_mask)
    w: u32,
    grid: u32,
    positive: u32,
    cap: u32,
    side: u32,   // focal square side (apply_mask)
}

const PLAN_HEAD: u32 = 4u;

@group(0) @binding(0) var<uniform> mp: MaskParams;
@group(0) @binding(1) var<storage, read> feat: array<f32>;
@group(0) @binding(2) var<storage, read_write> sal_out: array<f32>;
@group(0) @binding(3) var<storage, read> sal: array<f32>;
@group(0) @binding(4) var<storage, read> plan: array<f32>;
@group(0) @binding(5) var<storage, read_write> mask_out: array<f32>;
@group(0) @binding(6) var<storage, read> img: array<f32>;
@group(0) @binding(7) var<storage, read> fill: array<f32>;
@group(0) @binding(8) var<storage, read> mask: array<f32>;
@group(0) @binding(9) var<storage, read> plan_a: array<f32>;
@group(0) @binding(10) var<storage, read_write> out: array<f32>;

fn resize_axis(dst: u32, n_in: u32, n_out: u32) -> vec3<f32> {
    // (index0, index1, weight of index1), PyTorch's align_corners = False source index
    let s = max((f32(dst) + 0.5) * (f32(n_in) / f32(n_out)) - 0.5, 0.0);
    let i0 = u32(floor(s));
    let i1 = min(i0 + 1u, n_in - 1u);
    return vec3<f32>(f32(i0), f32(i1), s - f32(i0));
}

fn channel_sum_at(n: u32, y: u32, x: u32) -> f32 {
    let hw = mp.h * mp.w;
    var s = 0.0;
    for (var c = 0u; c < mp.c; c++) {
        s += feat[(n * mp.c + c) * hw + y * mp.w + x];
    }
    return s;
}

@compute @workgroup_size(256)
fn cell_saliency(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    let cells = mp.grid * mp.grid;
    if (t >= mp.n * cells) { return; }
    let n = t / cells;
    let cell = t % cells;
    let ay = resize_axis(cell / mp.grid, mp.h, mp.grid);
    let ax = resize_axis(cell % mp.grid, mp.w, mp.grid);
    let y0 = u32(ay.x);
    let y1 = u32(ay.y);
    let x0 = u32(ax.x);
    let x1 = u32(ax.y);
    let top = (1.0 - ax.z) * channel_sum_at(n, y0, x0) + ax.z * channel_sum_at(n, y0, x1);
    let bottom = (1.0 - ax.z) * channel_sum_at(n, y1, x0) + ax.z * channel_sum_at(n, y1, x1);
    sal_out[t] = (1.0 - ay.z) * top + ay.z * bottom;
}

@compute @workgroup_size(256)
fn mask_cells(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    let cells = mp.grid * mp.grid;
    if (t >= mp.n * 3u * cells) { return; }
    let n = t / (3u * cells);
    let ch = (t / cells) % 3u;
    let cell = t % cells;
    let row = n * (PLAN_HEAD + 3u * cells);
    let kind = u32(plan[row]);
    if (kind == 2u) {
        mask_out[t] = 0.0;
        return;
    }
    let base = n * cells;
    var mean = 0.0;
    for (var i = 0u; i < cells; i++) {
        mean += sal[base + i];
    }
    mean /= f32(cells);
    var ss = 0.0;
    for (var i = 0u; i < cells; i++) {
        let d = sal[base + i] - mean;
        ss += d * d;
    }
    let thr = mean - 0.6 * sqrt(ss / f32(cells));
    var fg = 0u;
    for (var i = 0u; i < cells; i++) {
        fg += select(0u, 1u, sal[base + i] >= thr);
    }
    let r = plan[row + 1u];
    // r·f·cells = r·#FG; the reference's cap replaces r·f by 0.55 once it reaches 0.56.
    var fg_share = r * f32(fg);
    if (mp.cap != 0u && fg_share >= 0.56 * f32(cells)) {
        fg_share = 0.55 * f32(cells);
    }
    let n_fg = min(u32(round(fg_share)), fg);
    var n_bg = 0u;
    if (mp.positive != 0u) {
        let total = u32(floor(f32(cells) * r));
        n_bg = min(select(0u, total - n_fg, total > n_fg), cells - fg);
    }
    let pch = select(0u, ch, kind == 1u);
    let prio = row + PLAN_HEAD + pch * cells;
    let p = plan[prio + cell];
    let is_fg = sal[base + cell] >= thr;
    var rank = 0u;
    for (var i = 0u; i < cells; i++) {
        if ((sal[base + i] >= thr) == is_fg && plan[prio + i] < p) {
            rank += 1u;
        }
    }
    mask_out[t] = select(0.0, 1.0, select(rank < n_bg, rank < n_fg, is_fg));
}

@compute @workgroup_size(256)
fn apply_mask(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    let hw = mp.h * mp.w;
    if (t >= mp.n * 3u * hw) { return; }
    let n = t / (3u * hw);
    let ch = (t / hw) % 3u;
    let y = (t % hw) / mp.w;
    let x = t % mp.w;
    let cells = mp.grid * mp.grid;
    let row = n * (PLAN_HEAD + 3u * cells);
    var masked = false;
    if (u32(plan_a[row]) == 2u) {
        let top = u32(plan_a[row + 2u]);
        let left = u32(plan_a[row + 3u]);
        let inside = y >= top && y < top + mp.side && x >= left && x < left + mp.side;
        masked = select(inside, !inside, mp.positive != 0u);
    } else {
        // Cell i spans rows [i·H/G, (i+1)·H/G): row y is in cell ((y + 1)·G − 1) / H.
        let cy = ((y + 1u) * mp.grid - 1u) / mp.h;
        let cx = ((x + 1u) * mp.grid - 1u) / mp.w;
        masked = mask[(n * 3u + ch) * cells + cy * mp.grid + cx] > 0.5;
    }
    out[t] = select(img[t], fill[t], masked);
}
