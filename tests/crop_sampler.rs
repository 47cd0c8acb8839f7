//! Sampler properties over many seeded draws: crops stay inside the image, the top/left
//! coordinates stay in the box-derived range, Beta(α, α) moments, and with the whole-image box
//! and α = 1 ContrastiveCrop's crops are distributed like RandomResizedCrop's.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use viewcraft::crop::sampler::{ContrastiveCrop, RrcParams, WHOLE_IMAGE};

#[test]
fn crops_stay_inside_and_follow_the_box() {
    let mut rng = StdRng::seed_from_u64(11);
    for alpha in [0.1, 0.6, 1.0, 3.0] {
        let cc = ContrastiveCrop::new(RrcParams::default(), alpha).unwrap();
        for _ in 0..5000 {
            let (h, w) = (rng.random_range(8..300), rng.random_range(8..300));
            let a: f32 = rng.random_range(0.0..1.0);
            let b: f32 = rng.random_range(0.0..1.0);
            let c: f32 = rng.random_range(0.0..1.0);
            let d: f32 = rng.random_range(0.0..1.0);
            let bx = [a.min(b), c.min(d), a.max(b), c.max(d)];
            let crop = cc.sample(&mut rng, h, w, bx);
            assert!(
                crop.height > 0
                    && crop.width > 0
                    && crop.top + crop.height <= h
                    && crop.left + crop.width <= w,
                "{crop:?} in {h}x{w}"
            );
            // Crops from the size attempts (not the central fallback) follow the box.
            if let Some(crop) = cc.try_sample(&mut rng, h, w, bx) {
                assert!(
                    crop.top + crop.height <= h && crop.left + crop.width <= w,
                    "{crop:?} in {h}x{w}"
                );
                let (ch0, ch1) = ContrastiveCrop::range(h, crop.height, bx[0], bx[2]);
                let (cw0, cw1) = ContrastiveCrop::range(w, crop.width, bx[1], bx[3]);
                assert!(
                    ch0 <= ch1 && crop.top >= ch0 && crop.top <= ch1,
                    "top {} outside [{ch0}, {ch1}]",
                    crop.top
                );
                assert!(
                    crop.left >= cw0 && crop.left <= cw1,
                    "left {} outside [{cw0}, {cw1}]",
                    crop.left
                );
                // The crop centre lies within half a crop of the box.
                let cy = crop.top as f32 + crop.height as f32 / 2.0;
                assert!(
                    cy >= (bx[0] * h as f32 - crop.height as f32).floor() - 1.0
                        && cy <= bx[2] * h as f32 + crop.height as f32 / 2.0 + 1.0,
                    "centre {cy} vs box {bx:?}"
                );
            }
        }
    }
}

#[test]
fn beta_moments() {
    let mut rng = StdRng::seed_from_u64(5);
    // Fixed 100×100 crops of a 1000×1000 image with the whole box: top = ⌊900·u⌋.
    let rrc = RrcParams {
        scale: (0.01, 0.01),
        ratio: (1.0, 1.0),
    };
    for alpha in [0.1f64, 0.6, 1.0] {
        let cc = ContrastiveCrop::new(rrc, alpha).unwrap();
        let n = 40_000;
        let us: Vec<f64> = (0..n)
            .map(|_| (cc.sample(&mut rng, 1000, 1000, WHOLE_IMAGE).top as f64 + 0.5) / 900.0)
            .collect();
        let mean = us.iter().sum::<f64>() / n as f64;
        let var = us.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / n as f64;
        let want = 1.0 / (4.0 * (2.0 * alpha + 1.0));
        assert!((mean - 0.5).abs() < 0.01, "alpha {alpha}: mean {mean}");
        assert!(
            (var - want).abs() < 0.01 * want.max(0.05),
            "alpha {alpha}: var {var} vs {want}"
        );
    }
}

#[test]
fn whole_box_alpha_one_matches_rrc() {
    // A large image, so that the discrete ends of the ranges (RRC's top ∈ 0..=H−h, the Beta
    // interpolation's ⌊(H−h)·u⌋ < H−h) do not matter.
    let (h, w) = (256, 256);
    let rrc = RrcParams::default();
    let cc = ContrastiveCrop::new(rrc, 1.0).unwrap();
    let (mut r1, mut r2) = (StdRng::seed_from_u64(1), StdRng::seed_from_u64(2));
    let n = 100_000;
    // Compare the distributions of (height, width, relative top position) by histograms.
    let bins = |f: &mut dyn FnMut() -> viewcraft::crop::sampler::Crop| {
        // (height in 4 bins) × (relative top position in 5 bins) × (relative left in 5 bins)
        let mut hist = vec![0f64; 4 * 25];
        for _ in 0..n {
            let c = f();
            let rel = |p: usize, size: usize| {
                if size == h {
                    0
                } else {
                    (p * 5 / (h - size + 1)).min(4)
                }
            };
            hist[(c.height * 4 / (h + 1)) * 25
                + rel(c.top, c.height) * 5
                + rel(c.left, c.width)] += 1.0 / n as f64;
        }
        hist
    };
    let a = bins(&mut || rrc.sample(&mut r1, h, w));
    let b = bins(&mut || cc.sample(&mut r2, h, w, WHOLE_IMAGE));
    let mut r3 = StdRng::seed_from_u64(3);
    let a2 = bins(&mut || rrc.sample(&mut r3, h, w));
    let tv = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0;
    // Sampling noise alone (RRC against RRC) sets the scale.
    let (d, noise) = (tv(&a, &b), tv(&a, &a2));
    assert!(
        d < 2.0 * noise + 0.01,
        "total variation RRC vs C-Crop {d}, RRC vs RRC {noise}"
    );
}

#[test]
fn fallback_and_errors() {
    let mut rng = StdRng::seed_from_u64(3);
    // A 1×100 strip cannot hold a crop of aspect 3/4..4/3 with area ≥ 20%: central fallback.
    let rrc = RrcParams::default();
    let c = rrc.sample(&mut rng, 1, 100);
    assert_eq!((c.height, c.width, c.top, c.left), (1, 1, 0, 49));
    assert!(ContrastiveCrop::new(rrc, 0.0)
        .unwrap_err()
        .to_string()
        .contains("crop.alpha"));
    assert!(RrcParams {
        scale: (0.5, 0.2),
        ratio: (0.75, 1.33)
    }
    .validate()
    .is_err());
}

/// ContrastiveCrop's ranges and crops for fixed cases worked out by hand from SPEC A.3:
/// ch0 = clamp(int(H·h0) − h//2, 0, H − h), ch1 = clamp(int(H·h1) − h//2, 0, H − h),
/// i = ch0 + int((ch1 − ch0)·u).
#[test]
fn ranges_and_crops_match_hand_computed_cases() {
    // The − h//2 shift: H = 100, h = 20, box rows 0.3..0.6: (30 − 10, 60 − 10).
    assert_eq!(ContrastiveCrop::range(100, 20, 0.3, 0.6), (20, 50));
    // Both ends clamped into [0, H − h] (the reference's issue #16 fix). Near the bottom:
    // int(28.8) − 10 = 18 and int(31.04) − 10 = 21, both clamped to 12 (the one-sided
    // pre-#16 clamp gave (18, 12), an empty range).
    assert_eq!(ContrastiveCrop::range(32, 20, 0.9, 0.97), (12, 12));
    // Near the top: −10 and int(3.2) − 10 = −7, both clamped to 0 (pre-#16: (0, −7)).
    assert_eq!(ContrastiveCrop::range(32, 20, 0.0, 0.1), (0, 0));
    // A box on the whole image: [0, H − h].
    assert_eq!(ContrastiveCrop::range(32, 12, 0.0, 31.0 / 32.0), (0, 20));
    // int(H·h0) in double precision: 96 · f32(5/24) = 19.9999995 → 19, so 19 − 5 = 14
    // (f32 arithmetic rounds the product up to 20 and gives 15).
    assert_eq!(ContrastiveCrop::range(96, 10, 5.0f32 / 24.0, 0.5), (14, 43));
    // 224 · f32(9/224) = 8.9999999 → 8, so 8 − 2 = 6 (f32: 7).
    assert_eq!(
        ContrastiveCrop::range(224, 4, 9.0f32 / 224.0, 9.0f32 / 224.0),
        (6, 6)
    );
    // Whole crops: a 20×30 crop of a 100×60 image, box (0.3, 0.2, 0.6, 0.9).
    // Rows: (20, 50), u = 0.5 → 20 + int(15.0) = 35. Columns: int(12.0000002) − 15 → 0 and
    // int(53.99999) − 15 = 38 → 30, v = 0.999 → 0 + int(29.97) = 29.
    let c = ContrastiveCrop::place(100, 60, 20, 30, [0.3, 0.2, 0.6, 0.9], 0.5, 0.999);
    assert_eq!(
        (c.top, c.left, c.height, c.width),
        (35, 29, 20, 30),
        "{c:?}"
    );
    // u = 0 and u → 1 reach the ends of the range; the truncation never reaches ch1 itself.
    let lo = ContrastiveCrop::place(100, 60, 20, 30, [0.3, 0.2, 0.6, 0.9], 0.0, 0.0);
    let hi = ContrastiveCrop::place(100, 60, 20, 30, [0.3, 0.2, 0.6, 0.9], 0.9999, 1.0);
    assert_eq!((lo.top, lo.left, hi.top, hi.left), (20, 0, 49, 30));
    // A box hugging the bottom-right corner with a large crop: clamped to the last position.
    let c = ContrastiveCrop::place(
        32,
        32,
        24,
        24,
        [0.9, 0.9, 31.0 / 32.0, 31.0 / 32.0],
        0.3,
        0.7,
    );
    assert_eq!((c.top, c.left), (8, 8));
}
