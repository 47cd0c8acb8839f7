//! The saliency-masking device op (`ops::saliency_mask`) and the hard-negative InfoNCE:
//! hand-computed cell masks, the masked views against an independent statement of the fills
//! (`crop::saliency::fill_cells` / `focal_mask` on the cells the masks name), GPU = CPU on odd
//! shapes, and the hard-negative logits against an explicitly built logit matrix, an f64
//! gradcheck and the adapter.

mod common;

use common::{assert_close, check_grad, dot, gpu, randn, rng, t};
use rand::seq::SliceRandom;
use rand::Rng;
use viewcraft::crop::saliency::{cell_span, fill_cells, focal_mask, Fill};
use viewcraft::ops::cross_entropy::{
    self, info_nce_hard_backward_ref, info_nce_hard_ref, HardNegatives, NceMode,
};
use viewcraft::ops::saliency_mask::{
    self as sm, apply_mask_ref, cell_saliency_ref, mask_cells_ref, plan_len, MaskRule, CHANNEL,
    FOCAL, PLAN_HEAD, SPATIAL,
};
use viewcraft::tensor::Device;

fn rule(positive: bool, cap: bool, focal_side: usize) -> MaskRule {
    MaskRule {
        positive,
        cap,
        focal_side,
    }
}

/// A plan row: kind, r, focal (top, left), per-channel priorities.
fn plan(grid: usize, kind: f32, r: f32, focal: (usize, usize), prio: [&[usize]; 3]) -> Vec<f32> {
    let mut p = vec![kind, r, focal.0 as f32, focal.1 as f32];
    for ch in prio {
        assert_eq!(ch.len(), grid * grid);
        p.extend(ch.iter().map(|&v| v as f32));
    }
    p
}

#[test]
fn cell_masks_against_hand_computed_cases() {
    // Saliency 4, 3, 0, 1: mean 2, population std √2.5 = 1.581, threshold 1.051: cells 0 and 1
    // are foreground. r = 0.5: r·#FG = 1 → 1 FG cell; ⌊4·0.5⌋ − 1 = 1 BG cell.
    let sal = [4.0f64, 3.0, 0.0, 1.0];
    let prio: [&[usize]; 3] = [&[3, 0, 2, 1], &[0, 1, 2, 3], &[1, 0, 3, 2]];
    let masks = |kind, r, rl| {
        mask_cells_ref(
            &sal,
            &plan(2, kind, r, (0, 0), prio)
                .iter()
                .map(|&v| v as f64)
                .collect::<Vec<_>>(),
            1,
            2,
            rl,
        )
    };
    // Spatial: channel 0's order for every channel: FG 1 (priority 0 < 3), BG 3 (1 < 2).
    assert_eq!(
        masks(SPATIAL, 0.5, rule(true, true, 0)),
        [0., 1., 0., 1., 0., 1., 0., 1., 0., 1., 0., 1.]
    );
    // Channel-wise: each channel its own order.
    assert_eq!(
        masks(CHANNEL, 0.5, rule(true, true, 0)),
        [0., 1., 0., 1., 1., 0., 1., 0., 0., 1., 0., 1.]
    );
    // "neg": foreground only.
    assert_eq!(
        masks(SPATIAL, 0.5, rule(false, true, 0)),
        [0., 1., 0., 0., 0., 1., 0., 0., 0., 1., 0., 0.]
    );
    // Focal plans mask no cells (the square is applied per pixel).
    assert!(masks(FOCAL, 0.5, rule(true, true, 0))
        .iter()
        .all(|&v| v == 0.0));
    // The 0.55 cap: a constant map is all foreground; r = 0.7: r·#FG = 2.8 ≥ 0.56·4 → 0.55·4 =
    // 2.2 → 2 cells with the cap (hp), round(2.8) = 3 without (blur, mean).
    let flat = [1.0f64; 4];
    let p: Vec<f64> = plan(2, SPATIAL, 0.7, (0, 0), prio)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let capped = mask_cells_ref(&flat, &p, 1, 2, rule(false, true, 0));
    let uncapped = mask_cells_ref(&flat, &p, 1, 2, rule(false, false, 0));
    assert_eq!(&capped[..4], [0., 1., 0., 1.]);
    assert_eq!(&uncapped[..4], [0., 1., 1., 1.]);
    // Counts: ties round half to even (Python's round): r·#FG = 2.5 → 2, 3.5 → 4.
    assert_eq!(sm::counts(0.5f64, 5, 49, rule(false, false, 0)).0, 2);
    assert_eq!(sm::counts(0.5f64, 7, 49, rule(false, false, 0)).0, 4);
    // BG count never negative: r = 0.05, 49 FG of 49 → ⌊2.45⌋ − 2 = 0.
    assert_eq!(sm::counts(0.05f64, 49, 49, rule(true, true, 0)), (2, 0));
}

/// Random plans for `n` images: kinds, r, focal corners, per-channel permutations.
fn random_plans(r: &mut impl Rng, n: usize, grid: usize, size: usize, side: usize) -> Vec<f32> {
    let cells = grid * grid;
    let mut out = Vec::new();
    for i in 0..n {
        let kind = [SPATIAL, CHANNEL, FOCAL][i % 3];
        let mut row = vec![
            kind,
            r.random_range(0.05..0.75),
            r.random_range(0..=size - side) as f32,
            r.random_range(0..=size - side) as f32,
        ];
        for _ in 0..3 {
            let mut p: Vec<usize> = (0..cells).collect();
            p.shuffle(r);
            let mut ranks = vec![0f32; cells];
            for (k, &c) in p.iter().enumerate() {
                ranks[c] = k as f32;
            }
            row.extend(ranks);
        }
        assert_eq!(row.len(), plan_len(grid));
        out.extend(row);
    }
    out
}

#[test]
fn masked_views_fill_exactly_the_named_cells_or_the_focal_square() {
    let (mut r, seed) = rng();
    for (n, size, grid, positive) in [(3, 17, 5, true), (3, 32, 8, false), (6, 12, 7, true)] {
        let side = (size * 2) / 3;
        let (c, fh) = (5, 3);
        let feat = randn(&mut r, n * c * fh * fh);
        let sal = cell_saliency_ref(&feat, (n, c, fh, fh), grid);
        let plans = random_plans(&mut r, n, grid, size, side);
        let rl = rule(positive, true, side);
        let mask = mask_cells_ref(&sal, &plans, n, grid, rl);
        let x = randn(&mut r, n * 3 * size * size);
        let fill = randn(&mut r, n * 3 * size * size);
        let got = apply_mask_ref(&x, &fill, &mask, &plans, (n, size, size), grid, rl);
        let (pl, cells, hw) = (plan_len(grid), grid * grid, 3 * size * size);
        for i in 0..n {
            let mut want = x[i * hw..(i + 1) * hw].to_vec();
            let f = &fill[i * hw..(i + 1) * hw];
            let row = &plans[i * pl..(i + 1) * pl];
            if row[0] == FOCAL {
                let (top, left) = (row[2] as usize, row[3] as usize);
                let patch: Vec<f32> = if positive {
                    f.to_vec()
                } else {
                    (0..3)
                        .flat_map(|ch| {
                            (0..side).flat_map(move |y| {
                                (0..side).map(move |xx| f[(ch * size + top + y) * size + left + xx])
                            })
                        })
                        .collect()
                };
                focal_mask(
                    &mut want,
                    (3, size, size),
                    (top, left, side),
                    positive,
                    &patch,
                );
            } else {
                for ch in 0..3 {
                    let named: Vec<usize> = (0..cells)
                        .filter(|&k| mask[(i * 3 + ch) * cells + k] > 0.5)
                        .collect();
                    fill_cells(
                        &mut want,
                        (3, size, size),
                        grid,
                        &named,
                        Some(ch),
                        &Fill::Blur(f),
                    );
                }
            }
            assert_eq!(
                &got[i * hw..(i + 1) * hw],
                &want[..],
                "image {i} of [{n}, 3, {size}, {size}] grid {grid} seed {seed}"
            );
            // The cell counts the rule asks for, per channel.
            if row[0] != FOCAL {
                let fg = sm::foreground(&sal[i * cells..(i + 1) * cells]);
                let n_fg_cells = fg.iter().filter(|&&b| b).count();
                let (want_fg, want_bg) = sm::counts(row[1], n_fg_cells, cells, rl);
                for ch in 0..3 {
                    let m = &mask[(i * 3 + ch) * cells..(i * 3 + ch + 1) * cells];
                    let on_fg = (0..cells).filter(|&k| m[k] > 0.5 && fg[k]).count();
                    let on_bg = (0..cells).filter(|&k| m[k] > 0.5 && !fg[k]).count();
                    assert_eq!((on_fg, on_bg), (want_fg, want_bg), "counts, seed {seed}");
                }
            }
        }
        // Cells tile the image: every pixel is in exactly one cell span per axis.
        let covered: usize = (0..grid).map(|i| cell_span(i, grid, size).len()).sum();
        assert_eq!(covered, size);
    }
}

#[test]
fn gpu_masks_equal_cpu_masks_on_odd_shapes() {
    let Some(g) = gpu() else { return };
    let (mut r, seed) = rng();
    // (N, C, fh, fw, grid, view size): grid = map (the reference's 7×7), grid > map, grid <
    // map, one image, a 1×1 map, odd sizes.
    for (n, c, fh, fw, grid, size, positive) in [
        (1, 12, 4, 4, 4, 32, true),
        (3, 67, 4, 4, 8, 32, false),
        (5, 3, 7, 7, 7, 21, true),
        (2, 16, 12, 12, 8, 17, true),
        (4, 9, 1, 1, 3, 9, false),
        (7, 5, 3, 5, 16, 19, true),
    ] {
        let lbl = format!("[{n}, {c}, {fh}, {fw}] grid {grid} size {size} seed {seed}");
        let feat = randn(&mut r, n * c * fh * fw);
        let sal_c = sm::cell_saliency(&t(&feat, &[n, c, fh, fw], &Device::Cpu), grid).unwrap();
        let sal_g = sm::cell_saliency(&t(&feat, &[n, c, fh, fw], &g), grid).unwrap();
        let want = sal_c.to_vec().unwrap();
        assert_close(
            &format!("{lbl} saliency"),
            &sal_g.to_vec().unwrap(),
            &want,
            1e-4,
            1e-4,
        );
        let side = (size / 2).max(1);
        let rl = rule(positive, true, side);
        let plans = random_plans(&mut r, n, grid, size, side);
        // The same saliency values on both devices, so the decisions compare exactly.
        let (pc, pg) = (
            t(&plans, &[n, plan_len(grid)], &Device::Cpu),
            t(&plans, &[n, plan_len(grid)], &g),
        );
        let mask_c = sm::mask_cells(&sal_c, &pc, grid, rl).unwrap();
        let mask_g = sm::mask_cells(&t(&want, &[n, grid * grid], &g), &pg, grid, rl).unwrap();
        let mc = mask_c.to_vec().unwrap();
        assert_eq!(mask_g.to_vec().unwrap(), mc, "{lbl} cell masks");
        let x = randn(&mut r, n * 3 * size * size);
        let fill = randn(&mut r, n * 3 * size * size);
        let shape = [n, 3, size, size];
        let out_c = sm::apply_mask(
            &t(&x, &shape, &Device::Cpu),
            &t(&fill, &shape, &Device::Cpu),
            &mask_c,
            &pc,
            grid,
            rl,
        )
        .unwrap()
        .to_vec()
        .unwrap();
        let out_g = sm::apply_mask(
            &t(&x, &shape, &g),
            &t(&fill, &shape, &g),
            &t(&mc, &[n, 3, grid * grid], &g),
            &pg,
            grid,
            rl,
        )
        .unwrap()
        .to_vec()
        .unwrap();
        assert_eq!(out_g, out_c, "{lbl} masked views");
        assert!(
            out_c != x,
            "{lbl}: nothing was masked; the test cannot fail"
        );
    }
}

#[test]
fn bad_shapes_are_errors() {
    let d = Device::Cpu;
    let f = t(&[1.0; 2 * 3 * 4 * 4], &[2, 3, 4, 4], &d);
    assert!(sm::cell_saliency(&f, 0).is_err());
    assert!(sm::cell_saliency(&f, sm::MAX_GRID + 1).is_err());
    let sal = sm::cell_saliency(&f, 4).unwrap();
    let bad_plan = t(&[0.0; 2 * 5], &[2, 5], &d);
    assert!(sm::mask_cells(&sal, &bad_plan, 4, rule(true, true, 0)).is_err());
    let x = t(&[0.0; 2 * 3 * 3 * 3], &[2, 3, 3, 3], &d);
    let plans = t(&vec![0.0; 2 * plan_len(4)], &[2, plan_len(4)], &d);
    let mask = sm::mask_cells(&sal, &plans, 4, rule(true, true, 0)).unwrap();
    // A 4×4 grid on a 3×3 view.
    assert!(sm::apply_mask(&x, &x, &mask, &plans, 4, rule(true, true, 0)).is_err());
    assert_eq!(PLAN_HEAD, 4);
}

/// Row losses of the hard-negative InfoNCE, built the long way: the explicit logits of every
/// row (masked entries left out, hard columns scaled by α) and plain cross-entropy.
fn explicit_rows(
    sim: &[f64],
    n: usize,
    m: usize,
    mode: NceMode,
    scale: f64,
    hard: HardNegatives,
) -> Vec<f64> {
    let images = match (hard.per_sample, mode) {
        (false, _) => 0,
        (true, NceMode::NtXent | NceMode::NtXentShard { .. }) => n / 2,
        (true, NceMode::Moco { .. } | NceMode::Keys { .. }) => n,
    };
    let first_hard = m - hard.count * images.max(1);
    (0..n)
        .map(|i| {
            let (label, mut logits) = match mode {
                NceMode::NtXent => {
                    let l = (i + n / 2) % n;
                    let mut v = vec![sim[i * m + l]];
                    v.extend(
                        (0..first_hard)
                            .filter(|&j| j != i && j != l)
                            .map(|j| sim[i * m + j]),
                    );
                    (0, v)
                }
                NceMode::Moco { in_batch } => {
                    let mut v = vec![sim[i * m + i]];
                    v.extend((in_batch..first_hard).map(|j| sim[i * m + j]));
                    (0, v)
                }
                NceMode::NtXentShard { .. } => unreachable!("not among the cases"),
                NceMode::Keys { .. } => {
                    let mut v = vec![sim[i * m + i]];
                    v.extend((0..first_hard).filter(|&j| j != i).map(|j| sim[i * m + j]));
                    (0, v)
                }
            };
            for j in first_hard..m {
                if images == 0 || (j - first_hard) % images == i % images {
                    logits.push(hard.alpha as f64 * sim[i * m + j]);
                }
            }
            let z: Vec<f64> = logits.iter().map(|v| v * scale).collect();
            let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln() + mx;
            lse - z[label]
        })
        .collect()
}

fn cases() -> Vec<(usize, usize, NceMode, HardNegatives)> {
    let h = |count, per_sample| HardNegatives {
        count,
        per_sample,
        alpha: 2.0,
    };
    vec![
        // MoCo: [B keys | K queue | M·B hard] and the quirk's [B | K | M].
        (5, 5 + 7 + 5, NceMode::Moco { in_batch: 5 }, h(1, true)),
        (3, 3 + 4 + 2 * 3, NceMode::Moco { in_batch: 3 }, h(2, true)),
        (4, 4 + 6 + 1, NceMode::Moco { in_batch: 4 }, h(1, false)),
        // NT-Xent: [2B | M·B hard], both views of image i take its negatives.
        (6, 6 + 3, NceMode::NtXent, h(1, true)),
        (4, 4 + 2, NceMode::NtXent, h(2, false)),
    ]
}

#[test]
fn hard_negative_logits_match_an_explicit_logit_matrix_and_gradcheck() {
    let (mut r, seed) = rng();
    for (n, m, mode, hard) in cases() {
        let sim: Vec<f64> = randn(&mut r, n * m)
            .iter()
            .map(|&v| v as f64 * 0.5)
            .collect();
        let lbl = format!("[{n},{m}] {mode:?} {hard:?} seed {seed}");
        let got = info_nce_hard_ref(&sim, n, m, mode, 3.0, hard);
        let want = explicit_rows(&sim, n, m, mode, 3.0, hard);
        let got32: Vec<f32> = got.iter().map(|&v| v as f32).collect();
        assert_close(&format!("{lbl} rows"), &got32, &want, 1e-6, 1e-6);
        // α changes the loss (it multiplies the logit).
        let plain = HardNegatives { alpha: 1.0, ..hard };
        assert!(
            info_nce_hard_ref(&sim, n, m, mode, 3.0, plain) != got,
            "{lbl}: alpha unused"
        );
        let g: Vec<f64> = randn(&mut r, n).iter().map(|&v| v as f64).collect();
        check_grad(
            &format!("info_nce hard {lbl}"),
            &sim,
            &info_nce_hard_backward_ref(&sim, &g, n, m, mode, 3.0, hard),
            |s| dot(&g, &info_nce_hard_ref(s, n, m, mode, 3.0, hard)),
        );
    }
}

#[test]
fn hard_negative_infonce_gpu_equals_cpu() {
    let Some(dg) = gpu() else { return };
    let (mut r, seed) = rng();
    let mut all = cases();
    // A row longer than a workgroup's worth of columns, MoCo's shape at batch 32.
    let h = HardNegatives {
        count: 1,
        per_sample: true,
        alpha: 2.0,
    };
    all.push((32, 32 + 4096 + 32, NceMode::Moco { in_batch: 32 }, h));
    for (n, m, mode, hard) in all {
        let lbl = format!("[{n},{m}] {mode:?} {hard:?} seed {seed}");
        let sim: Vec<f32> = randn(&mut r, n * m)
            .iter()
            .map(|v| v.clamp(-1.0, 1.0))
            .collect();
        let g = randn(&mut r, n);
        let sc = t(&sim, &[n, m], &Device::Cpu);
        let sg = t(&sim, &[n, m], &dg);
        assert_close(
            &format!("{lbl} loss"),
            &cross_entropy::info_nce_hard(&sg, mode, 5.0, hard)
                .unwrap()
                .to_vec()
                .unwrap(),
            &cross_entropy::info_nce_hard(&sc, mode, 5.0, hard)
                .unwrap()
                .to_vec()
                .unwrap(),
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{lbl} grad"),
            &cross_entropy::info_nce_hard_backward(&sg, &t(&g, &[n], &dg), mode, 5.0, hard)
                .unwrap()
                .to_vec()
                .unwrap(),
            &cross_entropy::info_nce_hard_backward(
                &sc,
                &t(&g, &[n], &Device::Cpu),
                mode,
                5.0,
                hard,
            )
            .unwrap()
            .to_vec()
            .unwrap(),
            1e-6,
            1e-4,
        );
    }
}

#[test]
fn hard_negative_shapes_are_checked() {
    let d = Device::Cpu;
    let h = HardNegatives {
        count: 1,
        per_sample: true,
        alpha: 2.0,
    };
    // NT-Xent with 4 rows needs 4 + 2 columns for one per-sample negative.
    assert!(
        cross_entropy::info_nce_hard(&t(&[0.1; 4 * 7], &[4, 7], &d), NceMode::NtXent, 1.0, h)
            .is_err()
    );
    assert!(
        cross_entropy::info_nce_hard(&t(&[0.1; 4 * 6], &[4, 6], &d), NceMode::NtXent, 1.0, h)
            .is_ok()
    );
    // MoCo needs a queue between the keys and the hard columns.
    assert!(cross_entropy::info_nce_hard(
        &t(&[0.1; 3 * 6], &[3, 6], &d),
        NceMode::Moco { in_batch: 3 },
        1.0,
        h
    )
    .is_err());
}
