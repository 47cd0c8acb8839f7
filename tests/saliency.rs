//! Saliency-guided masking's cell selection (SPEC B.3) against hand-computed cases: the
//! foreground rule (≥ mean − 0.6·std, population std), the "pos" and "neg" cell counts with the
//! reference's 0.55 cap, and the drawn cells.

use rand::SeedableRng;
use viewcraft::crop::saliency::{choose_cells, foreground, neg_count, pos_counts};

#[test]
fn foreground_is_mean_minus_0_6_std() {
    // Values 0, 1, 2, 3: mean 1.5, population std √1.25 ≈ 1.118, threshold ≈ 0.829.
    assert_eq!(
        foreground(&[0.0f64, 1.0, 2.0, 3.0]),
        [false, true, true, true]
    );
    // 0.88 separates the two stds: thresholds 0.920 (population, numpy's and the reference's)
    // and 0.863 (sample): not foreground here.
    let v = [0.0f64, 0.88, 2.0, 3.0, 1.0, 2.2];
    assert_eq!(foreground(&v), [false, false, true, true, true, true]);
    // A constant map: every cell is foreground (std 0, all ≥ mean).
    assert!(foreground(&[0.3f32; 16]).iter().all(|&b| b));
}

#[test]
fn pos_and_neg_counts_against_hand_computed_cases() {
    // 49 cells, 20 foreground (f = 20/49), r = 0.25: share 0.25·20/49 = 0.10204 → round(5.0) =
    // 5 FG; ⌊49·0.25⌋ = 12 → 7 BG.
    assert_eq!(pos_counts(0.25, 20, 49), (5, 7));
    // r = 0.05, 49 cells all foreground: round(2.45) = 2 FG, ⌊2.45⌋ − 2 = 0 BG.
    assert_eq!(pos_counts(0.05, 49, 49), (2, 0));
    // Rounding up past ⌊cells·r⌋: r = 0.07, all foreground: round(3.43) = 3, ⌊3.43⌋ = 3 → 0 BG;
    // r = 0.0714 → round(3.4986) = 3; r = 0.074 → round(3.626) = 4 > ⌊3.626⌋ = 3: BG 0, not −1.
    assert_eq!(pos_counts(0.074, 49, 49), (4, 0));
    // Cap: neg r = 0.7 with every cell foreground: 0.7 ≥ 0.56 → share 0.55 → round(26.95) = 27.
    assert_eq!(neg_count(0.7, 49, 49), 27);
    // Just below the cap's threshold the share stays: r·f = 0.555 → round(27.195) = 27; and
    // r = 0.4, f = 30/49: 0.2449 → round(12.0) = 12.
    assert_eq!(neg_count(0.555, 49, 49), 27);
    assert_eq!(neg_count(0.4, 30, 49), 12);
    // CIFAR-sized grid: 16 cells, 5 foreground, r = 0.6 neg: 0.6·5/16 = 0.1875 → round(3.0) = 3.
    assert_eq!(neg_count(0.6, 5, 16), 3);
    // Never more than the cells of a kind.
    assert_eq!(pos_counts(0.25, 1, 49).0, 0);
    assert_eq!(
        pos_counts(0.9, 49, 49),
        (27, 0),
        "no background cells to mask"
    );
}

#[test]
fn chosen_cells_are_of_the_right_kind_and_distinct() {
    let fg: Vec<bool> = (0..49).map(|i| i % 3 == 0).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for _ in 0..100 {
        let c = choose_cells(&mut rng, &fg, 4, 6);
        assert_eq!(c.len(), 10);
        assert!(c[..4].iter().all(|&i| fg[i]) && c[4..].iter().all(|&i| !fg[i]));
        let mut d = c.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 10, "without replacement");
    }
    let a = choose_cells(&mut rand::rngs::StdRng::seed_from_u64(5), &fg, 3, 3);
    let b = choose_cells(&mut rand::rngs::StdRng::seed_from_u64(5), &fg, 3, 3);
    assert_eq!(a, b, "deterministic per seed");
}

#[test]
fn fills_touch_exactly_the_chosen_cells() {
    use viewcraft::crop::saliency::{cell_span, fill_cells, focal_mask, Fill};
    let (c, h, w, grid) = (3usize, 8usize, 12usize, 4usize);
    let img: Vec<f64> = (0..c * h * w).map(|i| (i as f64 * 0.37).sin()).collect();
    let cells = [0usize, 5, 15];
    let in_cell = |y: usize, x: usize| {
        cells.iter().any(|&k| {
            cell_span(k / grid, grid, h).contains(&y) && cell_span(k % grid, grid, w).contains(&x)
        })
    };
    // Cell 5 = row 1, column 1: rows 2..4, columns 3..6.
    assert_eq!((cell_span(1, 4, 8), cell_span(1, 4, 12)), (2..4, 3..6));
    let means: Vec<f64> = (0..c)
        .map(|ch| img[ch * h * w..(ch + 1) * h * w].iter().sum::<f64>() / (h * w) as f64)
        .collect();
    let blurred: Vec<f64> = img.iter().map(|v| v * 0.5 + 1.0).collect();
    let patch: Vec<f64> = (0..c * 2 * 3).map(|i| 100.0 + i as f64).collect();
    for (name, fill) in [
        ("mean", Fill::Mean),
        ("blur", Fill::Blur(&blurred)),
        ("noise", Fill::Noise(&patch)),
    ] {
        for channel in [None, Some(1)] {
            let mut m = img.clone();
            fill_cells(&mut m, (c, h, w), grid, &cells, channel, &fill);
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let at = (ch * h + y) * w + x;
                        let hit = in_cell(y, x) && channel.is_none_or(|k| k == ch);
                        let want = if !hit {
                            img[at]
                        } else {
                            match name {
                                "mean" => means[ch],
                                "blur" => blurred[at],
                                _ => {
                                    let (ry, rx) = (y % 2, x % 3);
                                    patch[(ch * 2 + ry) * 3 + rx]
                                }
                            }
                        };
                        assert_eq!(m[at], want, "{name} {channel:?} at {ch},{y},{x}");
                    }
                }
            }
        }
    }
    // Focal: pos keeps the square, neg replaces it.
    let noise: Vec<f64> = vec![-9.0; c * h * w];
    let mut pos = img.clone();
    focal_mask(&mut pos, (c, h, w), (2, 3, 4), true, &noise);
    let mut neg = img.clone();
    let sq: Vec<f64> = vec![7.0; c * 16];
    focal_mask(&mut neg, (c, h, w), (2, 3, 4), false, &sq);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let at = (ch * h + y) * w + x;
                let inside = (2..6).contains(&y) && (3..7).contains(&x);
                assert_eq!(pos[at], if inside { img[at] } else { -9.0 });
                assert_eq!(neg[at], if inside { 7.0 } else { img[at] });
            }
        }
    }
}
