//! Object proposals and object-aware regions: the connected components against a brute-force
//! label-relaxation reference on random maps and on hand-drawn ones, the GPU heatmaps against
//! the CPU ones, dilation in both modes and the minimum-size rule against hand-computed boxes,
//! the proposals file's errors, and SemanticCrop's pair-aware sampler statistics.

mod common;
use common::*;
use rand::{Rng, SeedableRng};
use viewcraft::crop::object::{DilationMode, ObjectCrop};
use viewcraft::crop::proposals::{components, from_pixels, proposals, read_file, to_pixels};
use viewcraft::crop::sampler::{ContrastiveCrop, RrcParams};
use viewcraft::crop::semantic::SemanticCrop;
use viewcraft::tensor::{Device, Tensor};

/// Brute force: every pixel above k starts with its own label; repeatedly take the smallest
/// label among its 8 neighbours above k until nothing changes. Components sorted as the
/// implementation's contract says (summed heat descending, then first pixel).
fn reference(heat: &[f64], h: usize, w: usize, k: f64) -> Vec<([f64; 4], f64, usize)> {
    let on = |p: usize| heat[p] > k;
    let mut label: Vec<usize> = (0..h * w).collect();
    loop {
        let mut changed = false;
        for y in 0..h {
            for x in 0..w {
                let p = y * w + x;
                if !on(p) {
                    continue;
                }
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                        if ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                            continue;
                        }
                        let q = ny as usize * w + nx as usize;
                        if on(q) && label[q] < label[p] {
                            label[p] = label[q];
                            changed = true;
                        }
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut roots: Vec<usize> = (0..h * w).filter(|&p| on(p) && label[p] == p).collect();
    roots.sort();
    let mut out: Vec<([f64; 4], f64, usize)> = roots
        .iter()
        .map(|&r| {
            let px: Vec<usize> = (0..h * w).filter(|&p| on(p) && label[p] == r).collect();
            let ys = px.iter().map(|p| p / w);
            let xs = px.iter().map(|p| p % w);
            let b = [
                ys.clone().min().unwrap() as f64 / h as f64,
                xs.clone().min().unwrap() as f64 / w as f64,
                ys.max().unwrap() as f64 / h as f64,
                xs.max().unwrap() as f64 / w as f64,
            ];
            (b, px.iter().map(|&p| heat[p]).sum(), px.len())
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

fn check(heat: &[f64], h: usize, w: usize, k: f64, max: usize, what: &str) {
    let got = components(heat, h, w, k, max);
    let mut want = reference(heat, h, w, k);
    want.truncate(max);
    assert_eq!(got.len(), want.len(), "{what}: number of components");
    for (g, (b, s, n)) in got.iter().zip(&want) {
        assert_eq!(g.bbox, *b, "{what}: box");
        assert_eq!(g.pixels, *n, "{what}: pixels");
        assert!(
            (g.heat - s).abs() <= 1e-9 * s.abs().max(1.0),
            "{what}: heat"
        );
    }
}

#[test]
fn components_match_the_brute_force_reference_on_random_maps() {
    let (mut rng, seed) = rng();
    for (t, &(h, w)) in [(7, 5), (16, 16), (13, 29), (32, 32), (1, 9), (9, 1)]
        .iter()
        .enumerate()
    {
        // Sparse random cells, then smoothed a little so components have several pixels.
        let raw: Vec<f64> = (0..h * w).map(|_| rng.random::<f64>()).collect();
        for k in [0.5, 0.7, 0.9] {
            check(
                &raw,
                h,
                w,
                k,
                usize::MAX,
                &format!("seed {seed} map {t} k {k}"),
            );
            check(
                &raw,
                h,
                w,
                k,
                3,
                &format!("seed {seed} map {t} k {k}, top 3"),
            );
        }
    }
}

fn drawn(rows: &[&str]) -> (Vec<f64>, usize, usize) {
    let h = rows.len();
    let w = rows[0].len();
    let heat = rows
        .iter()
        .flat_map(|r| r.chars().map(|c| c.to_digit(10).unwrap() as f64 / 10.0))
        .collect();
    (heat, h, w)
}

#[test]
fn hand_drawn_maps() {
    // Diagonal-only contact joins under 8-connectivity.
    let (m, h, w) = drawn(&["9000", "0900", "0090", "0009"]);
    let c = components(&m, h, w, 0.5, 10);
    assert_eq!(c.len(), 1, "a diagonal line is one component");
    assert_eq!(c[0].bbox, [0.0, 0.0, 0.75, 0.75]);
    assert_eq!(c[0].pixels, 4);
    // Two blobs apart: ranked by summed heat (the right one is hotter).
    let (m, h, w) = drawn(&["66000", "66099", "00099"]);
    let c = components(&m, h, w, 0.5, 10);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].bbox, [1.0 / 3.0, 0.6, 2.0 / 3.0, 0.8], "hottest first");
    assert_eq!(c[1].bbox, [0.0, 0.0, 1.0 / 3.0, 0.2]);
    // Strict threshold: a cell equal to k is off.
    let (m, h, w) = drawn(&["5555", "5555"]);
    assert!(components(&m, h, w, 0.5, 10).is_empty(), "nothing above k");
    // Full map: one component, the whole image in the last-index convention.
    let (m, h, w) = drawn(&["999", "999"]);
    let c = components(&m, h, w, 0.5, 10);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].bbox, [0.0, 0.0, 0.5, 2.0 / 3.0]);
    // More components than max: the hottest `max` of them.
    let (m, h, w) = drawn(&["6070809", "0000000", "9080706"]);
    let c = components(&m, h, w, 0.5, 3);
    assert_eq!(c.len(), 3);
    let heats: Vec<f64> = c.iter().map(|c| c.heat).collect();
    assert_eq!(heats, [0.9, 0.9, 0.8], "the three hottest of eight");
    assert_eq!(c[0].bbox[0], 0.0, "equal heat: raster order");
}

#[test]
fn constant_maps_have_no_proposals_and_features_give_ranked_boxes() {
    // A constant feature map: no heatmap, no proposals (the caller keeps the old ones).
    let flat = Tensor::from_vec(vec![0.5; 2 * 3 * 4 * 4], &[2, 3, 4, 4], &Device::Cpu).unwrap();
    let p = proposals(&flat, (32, 32), 0.5, 10).unwrap();
    assert_eq!(p, vec![None, None]);
    // One hot cell in a 4x4 map upsamples to one blob around it.
    let mut f = vec![0.0f32; 16];
    f[5] = 1.0;
    let t = Tensor::from_vec(f, &[1, 1, 4, 4], &Device::Cpu).unwrap();
    let p = proposals(&t, (32, 32), 0.5, 10).unwrap();
    let b = p[0].as_ref().expect("a proposal")[0];
    assert!(
        b[0] > 0.1 && b[2] < 0.5 && b[1] > 0.1 && b[3] < 0.5,
        "{b:?}"
    );
}

#[test]
fn gpu_heatmaps_and_proposals_equal_the_cpu_ones() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = rng();
    for &(n, c, h, w, out) in &[(3usize, 5usize, 4usize, 4usize, 32usize), (2, 7, 3, 5, 24)] {
        let f = randn(&mut rng, n * c * h * w);
        let cpu_t = t(&f, &[n, c, h, w], &Device::Cpu);
        let gpu_t = t(&f, &[n, c, h, w], &gpu);
        let a = viewcraft::crop::proposals::heat_maps(&cpu_t, (out, out)).unwrap();
        let b = viewcraft::crop::proposals::heat_maps(&gpu_t, (out, out)).unwrap();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
            assert_close(&format!("seed {seed} heat {i}"), y, &to_f64(x), 1e-5, 1e-5);
        }
        // Proposals equal wherever no pixel sits within rounding of k.
        for k in [0.3f32, 0.5, 0.7] {
            let clear = a.iter().flatten().flatten().all(|v| (v - k).abs() > 1e-4);
            if clear {
                assert_eq!(
                    proposals(&cpu_t, (out, out), k, 10).unwrap(),
                    proposals(&gpu_t, (out, out), k, 10).unwrap(),
                    "seed {seed} k {k}"
                );
            }
        }
    }
}

#[test]
fn dilation_and_minimum_size_against_hand_computed_regions() {
    let (hgt, wid) = (32, 32);
    // Pixel box x 10..20, y 4..12 (x2, y2 exclusive) round-trips through the boxes' convention.
    let bx = from_pixels([10, 4, 20, 12], hgt, wid);
    assert_eq!(to_pixels(bx, hgt, wid), [10, 4, 20, 12]);
    let region = |mode, min_size, dilated| {
        let c = ObjectCrop {
            dilation: 0.2,
            mode,
            min_size,
        }
        .region(bx, hgt, wid, dilated);
        [c.left, c.top, c.left + c.width, c.top + c.height]
    };
    // Tight: the box itself (larger than the minimum).
    assert_eq!(region(DilationMode::Centre, 4, false), [10, 4, 20, 12]);
    // Centre: sides out by floor(0.2·10/2) = 1 and floor(0.2·8/2) = 0.
    assert_eq!(region(DilationMode::Centre, 4, true), [9, 4, 21, 12]);
    // Coordinate: x1 − ⌊0.2·10⌋ = 8, y1 − ⌊0.2·4⌋ = 4, x2 + ⌊0.2·20⌋ = 24, y2 + ⌊0.2·12⌋ = 14.
    assert_eq!(region(DilationMode::Coordinate, 4, true), [8, 4, 24, 14]);
    // Minimum 16 (the reference's rule): width 10 < 16 → x1 − 8 = 2 > 0, x1 = 2; x2 + 8 = 28 <
    // 32, x2 = 28. Height 8 < 16 → y1 − 8 < 0: y1 = 0, y2 = 16; then 16 + 8 < 32: y2 = 24.
    assert_eq!(region(DilationMode::Centre, 16, false), [2, 0, 28, 24]);
    // Near the far edge: x 26..30, min 8: x1 − 4 = 22; x2 + 4 = 34 ≥ 32 → x1 = x2 − 8 = 22.
    let edge = from_pixels([26, 0, 30, 32], hgt, wid);
    let c = ObjectCrop {
        dilation: 0.0,
        mode: DilationMode::Centre,
        min_size: 8,
    }
    .region(edge, hgt, wid, false);
    assert_eq!([c.left, c.left + c.width], [22, 30]);
    // Clipped to the image: the whole-image proposal dilated stays the image.
    let c = ObjectCrop::default().region([0.0, 0.0, 1.0, 1.0], hgt, wid, true);
    assert_eq!([c.top, c.left, c.height, c.width], [0, 0, 32, 32]);
}

#[test]
fn proposals_file_reads_boxes_and_names_bad_entries() {
    let dir = std::env::temp_dir().join(format!("vc_props_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("p.json");
    std::fs::write(
        &f,
        r#"{"0": [[0, 0, 32, 32], [4, 2, 10, 8]], "2": [[1, 1, 3, 3]]}"#,
    )
    .unwrap();
    let p = read_file(&f, 3, 32, 32).unwrap();
    assert_eq!(p[0].len(), 2);
    assert_eq!(to_pixels(p[0][1], 32, 32), [4, 2, 10, 8]);
    assert_eq!(
        p[1],
        vec![[0.0, 0.0, 1.0, 1.0]],
        "no entry: the whole image"
    );
    for (text, needle) in [
        (r#"{"0": [[0, 0, 33, 10]]}"#, "entry `0`, box 0"),
        (r#"{"5": [[0, 0, 3, 3]]}"#, "entry `5`: index out of range"),
        (r#"{"x": []}"#, "entry `x`"),
        (r#"{"1": [[3, 0, 3, 3]]}"#, "entry `1`, box 0"),
        (r#"{"1": [[1, 2, 3]]}"#, "four numbers"),
        ("[1, 2]", "JSON object"),
        ("{", "not valid JSON"),
    ] {
        std::fs::write(&f, text).unwrap();
        let e = read_file(&f, 3, 32, 32).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains("p.json"), "{text}: {e}");
    }
}

#[test]
fn suppressed_sampler_pushes_the_second_view_away() {
    // The module doc's numbers: with α = 0.1, σ = 0.3 the mean (u, v) distance of the two
    // views is ≈ 0.99, independent draws ≈ 0.81.
    let cc = ContrastiveCrop::new(RrcParams::default(), 0.1).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let n = 20_000;
    let mean_distance = |sigma: Option<f64>, rng: &mut rand::rngs::StdRng| {
        let s = SemanticCrop { cc, sigma };
        let mut total = 0.0;
        for _ in 0..n {
            let bx = [0.1, 0.2, 0.8, 0.9];
            let (c1, uv1) = s.sample(rng, 32, 32, bx, None);
            let (c2, uv2) = s.sample(rng, 32, 32, bx, uv1);
            let (Some(a), Some(b)) = (uv1, uv2) else {
                continue;
            };
            assert!(a.0 >= 0.0 && a.0 <= 1.0 && b.1 >= 0.0 && b.1 <= 1.0);
            // Crops stay in the image and their top-left in the box's range.
            for c in [c1, c2] {
                assert!(c.top + c.height <= 32 && c.left + c.width <= 32);
            }
            total += ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
        }
        total / n as f64
    };
    let independent = mean_distance(None, &mut rng);
    let suppressed = mean_distance(Some(0.3), &mut rng);
    eprintln!("mean (u, v) distance: independent {independent:.3}, suppressed {suppressed:.3}");
    assert!(
        (independent - 0.81).abs() < 0.03,
        "independent {independent}"
    );
    assert!((suppressed - 0.99).abs() < 0.03, "suppressed {suppressed}");
    // σ = None must be ContrastiveCrop's draw exactly.
    let (mut r1, mut r2) = (
        rand::rngs::StdRng::seed_from_u64(9),
        rand::rngs::StdRng::seed_from_u64(9),
    );
    for _ in 0..100 {
        let bx = [0.2, 0.1, 0.6, 0.7];
        let a = SemanticCrop { cc, sigma: None }.sample(&mut r1, 32, 32, bx, Some((0.5, 0.5)));
        assert_eq!(Some(a.0), cc.try_sample(&mut r2, 32, 32, bx));
    }
}
