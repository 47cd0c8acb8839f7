//! Heatmap → box: the CPU reference against PyTorch's golden values (normalised 4×4 map,
//! 32×32 upsample, boxes at k = 0.1 and 0.5, the constant map flagged invalid), and the GPU
//! kernel against the CPU reference on random maps plus the edge cases of SPEC C.2.

mod common;
use common::*;
use viewcraft::crop::heatmap::{box_ref, boxes, normalized_heat_ref, upsample_ref};
use viewcraft::tensor::{Device, Tensor};

#[test]
fn reference_matches_pytorch() {
    let fx = Fixture::load("heatmap_box");
    let (f, s) = fx.get("features");
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let heat = normalized_heat_ref(&f, n, c, h * w);
    let want4 = fx.f64("heatmap_4x4");
    let want32 = fx.f64("heatmap_32x32");
    let valid = fx.f64("valid");
    for (i, m) in heat.iter().enumerate() {
        match m {
            Some(m) => {
                assert_eq!(valid[i], 1.0, "image {i} valid");
                for (a, b) in m.iter().zip(&want4[i * 16..(i + 1) * 16]) {
                    assert!((a - b).abs() < 1e-12, "image {i} 4x4: {a} vs {b}");
                }
                let up = upsample_ref(m, h, w, 32, 32);
                for (a, b) in up.iter().zip(&want32[i * 1024..(i + 1) * 1024]) {
                    assert!((a - b).abs() < 1e-12, "image {i} 32x32: {a} vs {b}");
                }
            }
            None => assert_eq!(valid[i], 0.0, "image {i}: constant map must be invalid"),
        }
    }
    for d in [Device::Cpu].into_iter().chain(gpu()) {
        let ft = t(&fx.f32("features"), &s, &d);
        for (key, vkey, k) in [
            ("boxes", "valid", 0.1f32),
            ("boxes_k0.5", "valid_k0.5", 0.5),
        ] {
            let (b, v) = boxes(&ft, (32, 32), k).unwrap();
            assert_close(
                &format!("{key} on {d:?}"),
                &b.to_vec().unwrap(),
                &fx.f64(key),
                1e-7,
                0.0,
            );
            assert_close(
                &format!("{vkey} on {d:?}"),
                &v.to_vec().unwrap(),
                &fx.f64(vkey),
                0.0,
                0.0,
            );
        }
    }
}

#[test]
fn edge_cases() {
    let (hw, c) = (4usize, 3usize);
    // image 0: one hot cell in the top-left corner; image 1: constant; image 2: random;
    // image 3: one hot cell bottom-right.
    let (mut r, seed) = rng();
    let mut f = vec![0.0f32; 4 * c * hw * hw];
    f[0] = 5.0;
    for v in &mut f[c * hw * hw..2 * c * hw * hw] {
        *v = 0.7;
    }
    for (i, v) in f[2 * c * hw * hw..3 * c * hw * hw].iter_mut().enumerate() {
        *v = randn(&mut r, 1)[0].abs() + i as f32 * 1e-3;
    }
    f[3 * c * hw * hw + hw * hw - 1] = 2.0;
    for d in [Device::Cpu].into_iter().chain(gpu()) {
        let (b, v) = boxes(
            &Tensor::from_slice(&f, &[4, c, hw, hw], &d).unwrap(),
            (32, 32),
            0.1,
        )
        .unwrap();
        let (b, v) = (b.to_vec().unwrap(), v.to_vec().unwrap());
        assert_eq!(v, vec![1.0, 0.0, 1.0, 1.0], "validity on {d:?} seed {seed}");
        // A hot corner cell: its upsampled influence reaches 0.1 a few pixels into the image.
        assert_eq!(&b[0..2], &[0.0, 0.0], "hot cell box starts at the corner");
        assert!(
            b[2] > 0.0 && b[2] < 0.5 && b[3] > 0.0 && b[3] < 0.5,
            "hot-cell box {:?}",
            &b[0..4]
        );
        assert_eq!(
            &b[4..8],
            &[0.0, 0.0, 1.0, 1.0],
            "constant map: whole image, invalid"
        );
        assert!(
            b[12] > 0.5 && b[13] > 0.5 && b[14] == 31.0 / 32.0 && b[15] == 31.0 / 32.0,
            "bottom-right box {:?}",
            &b[12..16]
        );
    }
    // A map whose every upsampled value exceeds k gives the full box (0, 0, 31/32, 31/32).
    let m: Vec<f64> = (0..16).map(|i| 0.5 + 0.5 * (i as f64 / 15.0)).collect();
    let up = upsample_ref(&m, 4, 4, 32, 32);
    assert_eq!(
        box_ref(&up, 32, 32, 0.1),
        Some([0.0, 0.0, 31.0 / 32.0, 31.0 / 32.0])
    );
}

#[test]
fn gpu_equals_cpu_on_random_maps() {
    let Some(g) = gpu() else { return };
    for (n, c, h, out) in [
        (7usize, 16usize, 4usize, 32usize),
        (5, 8, 7, 224),
        (3, 4, 12, 96),
    ] {
        let (mut r, seed) = rng();
        let f: Vec<f32> = randn(&mut r, n * c * h * h)
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        let (bc, vc) = boxes(
            &Tensor::from_slice(&f, &[n, c, h, h], &Device::Cpu).unwrap(),
            (out, out),
            0.1,
        )
        .unwrap();
        let (bg, vg) = boxes(
            &Tensor::from_slice(&f, &[n, c, h, h], &g).unwrap(),
            (out, out),
            0.1,
        )
        .unwrap();
        assert_eq!(
            vg.to_vec().unwrap(),
            vc.to_vec().unwrap(),
            "valid n{n} h{h} seed {seed}"
        );
        // Equal up to one pixel where a value sits within rounding of k.
        assert_close(
            &format!("boxes n{n} h{h}->{out} seed {seed}"),
            &bg.to_vec().unwrap(),
            &bc.to_vec().unwrap(),
            1.01 / out as f64,
            0.0,
        );
    }
    let e = boxes(
        &Tensor::zeros(&[1, 2, 4, 4], &Device::Cpu).unwrap(),
        (32, 32),
        1.5,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("box_thresh"), "{e}");
}
