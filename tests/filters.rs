//! torchvision's tensor GaussianBlur (the saliency-masking recipe's filters, SPEC B.3): the
//! f64 reference and its f32 instance against torchvision's own float64 output
//! (`tests/fixtures/gaussian_blur.safetensors`, made by `make_blur_fixtures.py` beside it), the
//! high-pass x − blur(x), and the sizes reflect padding cannot take.

mod common;
use common::*;
use viewcraft::data::filters::{gaussian_blur, gaussian_kernel, high_pass};

#[test]
fn gaussian_blur_matches_torchvision() {
    let f = Fixture::load("gaussian_blur");
    let cases: serde_json::Value = serde_json::from_str(&f.meta("cases")).unwrap();
    for (name, c) in cases.as_object().unwrap() {
        let k = &c["kernel"];
        let s = &c["sigma"];
        let (kx, ky) = (
            k[0].as_u64().unwrap() as usize,
            k[1].as_u64().unwrap() as usize,
        );
        let (sx, sy) = (s[0].as_f64().unwrap(), s[1].as_f64().unwrap());
        let shape = f.shape(&format!("{name}.x"));
        let dims = (shape[0], shape[1], shape[2]);
        let x32 = f.f32(&format!("{name}.x"));
        let want = f.f64(&format!("{name}.blur"));
        let got64 = gaussian_blur(&to_f64(&x32), dims, (kx, ky), (sx, sy)).unwrap();
        let err = got64
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "{name}: f64 max error {err}");
        let got32 = gaussian_blur(&x32, dims, (kx, ky), (sx, sy)).unwrap();
        assert_close(name, &got32, &want, 1e-6, 1e-5);
    }
}

#[test]
fn high_pass_is_the_image_minus_its_11_tap_blur() {
    let f = Fixture::load("gaussian_blur");
    let x = to_f64(&f.f32("hp11.x"));
    let blur = f.f64("hp11.blur");
    let hp = high_pass(&x, (3, 32, 32)).unwrap();
    for ((h, x), b) in hp.iter().zip(&x).zip(&blur) {
        assert!((h - (x - b)).abs() < 1e-12);
    }
    // A constant image has no high frequencies.
    let flat = high_pass(&vec![0.7f64; 3 * 16 * 16], (3, 16, 16)).unwrap();
    assert!(flat.iter().all(|v| v.abs() < 1e-12));
}

#[test]
fn kernels_and_bad_sizes() {
    let g = gaussian_kernel::<f64>(5, 1.0);
    assert!((g.iter().sum::<f64>() - 1.0).abs() < 1e-15);
    assert!((g[0] - g[4]).abs() < 1e-18 && g[2] > g[1] && g[1] > g[0]);
    assert!((g[1] / g[2] - (-0.5f64).exp()).abs() < 1e-15);
    let x = vec![0.0f32; 3 * 8 * 8];
    for (k, s) in [
        ((4, 3), (1.0, 1.0)),
        ((17, 17), (5.0, 5.0)),
        ((3, 3), (0.0, 1.0)),
    ] {
        let e = gaussian_blur(&x, (3, 8, 8), k, s).unwrap_err().to_string();
        assert!(e.contains("gaussian_blur"), "{e}");
    }
}
