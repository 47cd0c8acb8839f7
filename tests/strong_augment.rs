//! CLSA's strong augmentation (`data::strong`): every op of the pool against Pillow's own
//! output, bit for bit, on real CIFAR images and odd-sized random ones at magnitudes 1, 5 and
//! 9 with both signs (`tests/fixtures/strong_ops.json`, made by `make_strong_fixtures.py`
//! beside it with Pillow 13); the draw (5 ops with replacement, p 0.5 each, v uniform in
//! 1..=9) by its statistics.

use rand::SeedableRng;
use viewcraft::data::augment::Rgb;
use viewcraft::data::strong::{apply, rand_augment, StrongOp};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_op_matches_pillow() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/strong_ops.json"
    );
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for case in f["cases"].as_array().unwrap() {
        let (h, w) = (
            case["h"].as_u64().unwrap() as usize,
            case["w"].as_u64().unwrap() as usize,
        );
        let img = Rgb::new(h, w, unhex(case["image"].as_str().unwrap()));
        for o in case["ops"].as_array().unwrap() {
            let name = o["op"].as_str().unwrap();
            let op = StrongOp::POOL
                .iter()
                .copied()
                .find(|p| p.name() == name)
                .unwrap();
            let v = o["v"].as_u64().unwrap() as u32;
            let neg = o["negative"].as_bool().unwrap();
            let want = unhex(o["out"].as_str().unwrap());
            let got = apply(&img, op, v, neg).data;
            let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            if diff > 0 {
                let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                failures.push(format!(
                    "{name} v {v}{} on {h}x{w}: {diff} of {} bytes differ, first at {first} (got {}, Pillow {})",
                    if neg { " (negative)" } else { "" },
                    want.len(),
                    got[first],
                    want[first]
                ));
            }
            *checked.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked.len(), 14, "every op of the pool: {checked:?}");
}

#[test]
fn the_draw_follows_the_reference() {
    use viewcraft::data::strong::{draw, N_OPS};
    // 4000 views × 5 ops: each op 1/14, each magnitude 1/9, applied 1/2, signed ops negative
    // 1/2 when applied; bounds ±5 standard deviations.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let draws: Vec<_> = (0..4000).flat_map(|_| draw(&mut rng)).collect();
    let n = draws.len() as f64;
    assert_eq!(draws.len(), 4000 * N_OPS);
    let within = |what: &str, count: usize, total: f64, p: f64| {
        let sd = (total * p * (1.0 - p)).sqrt();
        assert!(
            (count as f64 - total * p).abs() < 5.0 * sd,
            "{what}: {count} of {total}, expected {:.0} ± {:.0}",
            total * p,
            5.0 * sd
        );
    };
    for op in StrongOp::POOL {
        within(
            op.name(),
            draws.iter().filter(|d| d.op == op).count(),
            n,
            1.0 / 14.0,
        );
    }
    for v in 1..=9 {
        within(
            &format!("v = {v}"),
            draws.iter().filter(|d| d.v == v).count(),
            n,
            1.0 / 9.0,
        );
    }
    assert!(draws.iter().all(|d| (1..=9).contains(&d.v)));
    within(
        "applied",
        draws.iter().filter(|d| d.applied).count(),
        n,
        0.5,
    );
    let signed: Vec<_> = draws
        .iter()
        .filter(|d| d.applied && d.op.signed())
        .collect();
    within(
        "negative",
        signed.iter().filter(|d| d.negative).count(),
        signed.len() as f64,
        0.5,
    );
    assert!(draws.iter().all(|d| !d.negative || d.op.signed()));
    // rand_augment applies exactly the applied draws, in order.
    let data: Vec<u8> = (0..3 * 16 * 16).map(|i| ((i * 37) % 251) as u8).collect();
    let img = Rgb::new(16, 16, data);
    for seed in 0..20 {
        let d = draw(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let want = d
            .iter()
            .filter(|d| d.applied)
            .fold(img.clone(), |x, d| apply(&x, d.op, d.v, d.negative));
        assert_eq!(
            rand_augment(&img, &mut rand::rngs::StdRng::seed_from_u64(seed)),
            want
        );
    }
}
