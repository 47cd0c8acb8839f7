//! Augmentation ops against their definitions on small images.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use viewcraft::crop::sampler::Crop;
use viewcraft::data::augment::*;

fn random_image(rng: &mut StdRng, h: usize, w: usize) -> Rgb {
    Rgb::new(h, w, (0..3 * h * w).map(|_| rng.random::<u8>()).collect())
}

#[test]
fn photometric_definitions() {
    let mut rng = StdRng::seed_from_u64(9);
    let img = random_image(&mut rng, 5, 7);
    assert!(
        adjust_brightness(&img, 0.0).data.iter().all(|&v| v == 0),
        "brightness 0 is black"
    );
    assert_eq!(adjust_brightness(&img, 1.0), img);
    assert_eq!(adjust_contrast(&img, 1.0), img);
    assert_eq!(adjust_saturation(&img, 1.0), img);
    // Contrast 0 is a flat image at the rounded mean grey.
    let flat = adjust_contrast(&img, 0.0);
    assert!(flat.data.iter().all(|&v| v == flat.data[0]));
    // Saturation 0 is the greyscale image; greyscale has equal channels.
    let g = grayscale(&img);
    let hw = 35;
    assert_eq!(&g.data[..hw], &g.data[hw..2 * hw]);
    assert_eq!(&g.data[..hw], &g.data[2 * hw..]);
    assert_eq!(adjust_saturation(&img, 0.0), g);
    // 601 luma.
    assert_eq!(luma(255, 0, 0), 76);
    assert_eq!(luma(0, 255, 0), 150);
    assert_eq!(luma(0, 0, 255), 29);
    // Brightness doubles values, clipped at 255.
    let b2 = adjust_brightness(&img, 2.0);
    for (a, b) in img.data.iter().zip(&b2.data) {
        assert_eq!(*b as u32, (*a as u32 * 2).min(255));
    }
}

#[test]
fn hue_shift() {
    let mut rng = StdRng::seed_from_u64(2);
    let img = random_image(&mut rng, 6, 6);
    // A zero shift only goes through uint8 HSV and back (lossy for dark, unsaturated colours).
    let same = adjust_hue(&img, 0.0);
    for (a, b) in img.data.iter().zip(&same.data) {
        assert!((*a as i32 - *b as i32).abs() <= 6, "{a} vs {b}");
    }
    // Pure red shifted by a third of a turn becomes (nearly) pure green.
    let red = Rgb::new(1, 1, vec![255, 0, 0]);
    let g = adjust_hue(&red, 1.0 / 3.0);
    assert!(
        g.data[1] > 240 && g.data[0] < 15 && g.data[2] < 15,
        "{:?}",
        g.data
    );
    // Greys have no hue.
    let grey = Rgb::new(1, 1, vec![90, 90, 90]);
    assert_eq!(adjust_hue(&grey, 0.3), grey);
}

#[test]
fn geometry() {
    let mut rng = StdRng::seed_from_u64(4);
    let img = random_image(&mut rng, 8, 9);
    assert_eq!(hflip(&hflip(&img)), img, "flip twice is the identity");
    assert_eq!(hflip(&img).at(1, 3, 0), img.at(1, 3, 8));
    let full = Crop {
        top: 0,
        left: 0,
        height: 8,
        width: 9,
    };
    assert_eq!(
        resized_crop(&img, full, 8, 9),
        img,
        "full crop at the same size is the identity"
    );
    // A crop resized to its own size is the crop.
    let c = Crop {
        top: 2,
        left: 3,
        height: 4,
        width: 5,
    };
    let out = resized_crop(&img, c, 4, 5);
    assert_eq!(out.at(2, 1, 1), img.at(2, 3, 4));
    // 2× upsampling of a constant stays constant; 2× downsampling averages pairs.
    let flat = Rgb::new(2, 2, vec![100; 12]);
    assert!(resized_crop(
        &flat,
        Crop {
            top: 0,
            left: 0,
            height: 2,
            width: 2
        },
        4,
        4
    )
    .data
    .iter()
    .all(|&v| v == 100));
    let stripes = Rgb::new(1, 4, vec![0, 200, 0, 200, 0, 200, 0, 200, 0, 200, 0, 200]);
    let half = resized_crop(
        &stripes,
        Crop {
            top: 0,
            left: 0,
            height: 1,
            width: 4,
        },
        1,
        2,
    );
    // PIL's triangle filter widened ×2: (0.75·0 + 0.75·200 + 0.25·0)/1.75 ≈ 86, then 114.
    assert_eq!(&half.data[..2], &[86, 114], "antialiased shrink");
}

#[test]
fn jitter_and_views_are_deterministic_per_seed() {
    let mut rng = StdRng::seed_from_u64(1);
    let img = random_image(&mut rng, 32, 32);
    let j = Jitter::default();
    let a = ssl_view_after_crop(&img, &j, &mut StdRng::seed_from_u64(77));
    let b = ssl_view_after_crop(&img, &j, &mut StdRng::seed_from_u64(77));
    assert_eq!(a, b);
    let c = color_jitter(&img, &j, &mut StdRng::seed_from_u64(78));
    assert_ne!(c, img);
    let (m, s) = mean_std("cifar10").unwrap();
    let x = normalize(&Rgb::new(1, 1, vec![255, 0, 128]), m, s);
    assert!((x[0] - (1.0 - 0.4914) / 0.2023).abs() < 1e-6 && (x[1] + 0.4822 / 0.1994).abs() < 1e-6);
    assert!(mean_std("mnist").is_none());
}

/// Max |ours − PIL| over golden outputs from tests/fixtures/make_pil_fixtures.py.
#[test]
fn matches_pillow() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pil_ops.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let bytes = |x: &serde_json::Value| {
        x.as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect::<Vec<u8>>()
    };
    let maxdiff = |a: &[u8], b: &[u8]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as i32 - *y as i32).abs())
            .max()
            .unwrap_or(0)
    };
    let (mut worst_resize, mut worst_enh, mut worst_hue) = (0, 0, 0);
    for case in v["cases"].as_array().unwrap() {
        let (h, w) = (
            case["h"].as_u64().unwrap() as usize,
            case["w"].as_u64().unwrap() as usize,
        );
        let img = Rgb::new(h, w, bytes(&case["image"]));
        for r in case["resize"].as_array().unwrap() {
            let g = |k: &str| r[k].as_u64().unwrap() as usize;
            let crop = Crop {
                top: g("top"),
                left: g("left"),
                height: g("height"),
                width: g("width"),
            };
            let out = resized_crop(&img, crop, g("out_h"), g("out_w"));
            worst_resize = worst_resize.max(maxdiff(&out.data, &bytes(&r["out"])));
        }
        for e in case["enhance"].as_array().unwrap() {
            let f = e["factor"].as_f64().unwrap();
            let out = match e["op"].as_str().unwrap() {
                "brightness" => adjust_brightness(&img, f),
                "contrast" => adjust_contrast(&img, f),
                _ => adjust_saturation(&img, f),
            };
            worst_enh = worst_enh.max(maxdiff(&out.data, &bytes(&e["out"])));
        }
        assert_eq!(
            grayscale(&img).data,
            bytes(&case["grayscale"]),
            "greyscale is PIL's L exactly"
        );
        for hc in case["hue"].as_array().unwrap() {
            let out = adjust_hue(&img, hc["factor"].as_f64().unwrap());
            worst_hue = worst_hue.max(maxdiff(&out.data, &bytes(&hc["out"])));
        }
        for b in case["blur"].as_array().unwrap() {
            let sigma = b["sigma"].as_f64().unwrap();
            let out = gaussian_blur(&img, sigma);
            assert_eq!(
                out.data,
                bytes(&b["out"]),
                "GaussianBlur(radius={sigma}) on {h}x{w} must equal Pillow's exactly"
            );
        }
    }
    println!("max |ours - PIL|: resize {worst_resize}, enhance {worst_enh}, hue {worst_hue}");
    assert!(
        worst_resize <= 1,
        "resize differs from PIL by {worst_resize} levels"
    );
    assert!(
        worst_enh <= 1,
        "brightness/contrast/saturation differ from PIL by {worst_enh} levels"
    );
    assert_eq!(worst_hue, 0, "hue differs from PIL");
}
