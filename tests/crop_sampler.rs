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
