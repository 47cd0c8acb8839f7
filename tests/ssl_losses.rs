//! The SSL losses against PyTorch's golden values (loss and gradients) on the CPU path and the
//! adapter, plus hand-computed 2×2 cases.

mod common;
use common::*;
use viewcraft::ssl::losses::{moco_infonce, nt_xent, symmetric_neg_cosine};
use viewcraft::tensor::{Device, Tensor};
use viewcraft::Tape;

fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    d.extend(gpu());
    d
}

#[test]
fn nt_xent_matches_pytorch() {
    let fx = Fixture::load("simclr_nt_xent");
    let s = fx.shape("z1");
    for d in devices() {
        let mut tape = Tape::new();
        let z1 = tape.param(t(&fx.f32("z1"), &s, &d));
        let z2 = tape.param(t(&fx.f32("z2"), &s, &d));
        let loss = nt_xent(&mut tape, z1, z2, 0.5, 0.5 / 0.07).unwrap();
        assert_close(
            &format!("nt_xent loss on {d:?}"),
            &[tape.value(loss).item().unwrap()],
            &fx.f64("loss"),
            1e-5,
            1e-5,
        );
        let g = tape.backward(loss).unwrap();
        assert_close(
            &format!("nt_xent grad_z1 on {d:?}"),
            &g.get(z1).unwrap().to_vec().unwrap(),
            &fx.f64("grad_z1"),
            1e-6,
            1e-4,
        );
        assert_close(
            &format!("nt_xent grad_z2 on {d:?}"),
            &g.get(z2).unwrap().to_vec().unwrap(),
            &fx.f64("grad_z2"),
            1e-6,
            1e-4,
        );
    }
}

#[test]
fn moco_infonce_matches_pytorch() {
    let fx = Fixture::load("moco_infonce");
    let s = fx.shape("q");
    let (qs, qd) = (fx.shape("queue"), fx.f32("queue"));
    // The fixture's queue is [dim, K]; ours holds one key per row.
    let (dim, k) = (qs[0], qs[1]);
    let rows: Vec<f32> = (0..k * dim).map(|t| qd[(t % dim) * k + t / dim]).collect();
    for d in devices() {
        let mut tape = Tape::new();
        let q = tape.param(t(&fx.f32("q"), &s, &d));
        let kv = tape.param(t(&fx.f32("k"), &s, &d));
        let queue = Tensor::from_vec(rows.clone(), &[k, dim], &d).unwrap();
        let loss = moco_infonce(&mut tape, q, kv, &queue, 0.2).unwrap();
        assert_close(
            &format!("moco loss on {d:?}"),
            &[tape.value(loss).item().unwrap()],
            &fx.f64("loss"),
            1e-5,
            1e-5,
        );
        let g = tape.backward(loss).unwrap();
        assert_close(
            &format!("moco grad_q on {d:?}"),
            &g.get(q).unwrap().to_vec().unwrap(),
            &fx.f64("grad_q"),
            1e-6,
            1e-4,
        );
        assert!(g.get(kv).is_none(), "keys are detached");
    }
}

#[test]
fn byol_and_simsiam_match_pytorch() {
    for (name, scale) in [("byol_loss", -2.0f32), ("simsiam_loss", -0.5)] {
        let fx = Fixture::load(name);
        let s = fx.shape("p1");
        for d in devices() {
            let mut tape = Tape::new();
            let v: Vec<_> = ["p1", "p2", "z1", "z2"]
                .iter()
                .map(|k| tape.param(t(&fx.f32(k), &s, &d)))
                .collect();
            let loss = symmetric_neg_cosine(&mut tape, v[0], v[1], v[2], v[3], scale).unwrap();
            assert_close(
                &format!("{name} on {d:?}"),
                &[tape.value(loss).item().unwrap()],
                &fx.f64("loss"),
                1e-6,
                1e-5,
            );
            let g = tape.backward(loss).unwrap();
            assert_close(
                &format!("{name} grad_p1 on {d:?}"),
                &g.get(v[0]).unwrap().to_vec().unwrap(),
                &fx.f64("grad_p1"),
                1e-6,
                1e-4,
            );
            assert_close(
                &format!("{name} grad_p2 on {d:?}"),
                &g.get(v[1]).unwrap().to_vec().unwrap(),
                &fx.f64("grad_p2"),
                1e-6,
                1e-4,
            );
            assert!(
                g.get(v[2]).is_none() && g.get(v[3]).is_none(),
                "z is stop-gradient"
            );
        }
    }
}

#[test]
fn hand_computed_two_by_two() {
    // N = 1 per view, D = 2: z1 = (1, 0), z2 = (0, 1). NT-Xent rows: logits over {other} only
    // (self masked), so each CE is log(1) = 0.
    let d = Device::Cpu;
    let mut tape = Tape::new();
    let z1 = tape.param(t(&[1.0, 0.0], &[1, 2], &d));
    let z2 = tape.param(t(&[0.0, 1.0], &[1, 2], &d));
    let l = nt_xent(&mut tape, z1, z2, 0.5, 1.0).unwrap();
    assert!(tape.value(l).item().unwrap().abs() < 1e-6);
    // Two pairs: z = [(1,0), (0,1)] vs [(1,0), (0,1)] with τ = 1: row 0 logits over
    // {z0·z1 = 0, z0·z2 = 1 (positive), z0·z3 = 0} → CE = log(e + 2) − 1.
    let mut tape = Tape::new();
    let z1 = tape.param(t(&[1.0, 0.0, 0.0, 1.0], &[2, 2], &d));
    let z2 = tape.param(t(&[1.0, 0.0, 0.0, 1.0], &[2, 2], &d));
    let l = nt_xent(&mut tape, z1, z2, 1.0, 1.0).unwrap();
    let want = (std::f32::consts::E + 2.0).ln() - 1.0;
    assert!((tape.value(l).item().unwrap() - want).abs() < 1e-5);
    // BYOL with identical p and z: cos = 1 for both terms → −2·(1 + 1) = −4.
    let mut tape = Tape::new();
    let p = tape.param(t(&[3.0, 4.0, -1.0, 2.0], &[2, 2], &d));
    let l = symmetric_neg_cosine(&mut tape, p, p, p, p, -2.0).unwrap();
    assert!((tape.value(l).item().unwrap() + 4.0).abs() < 1e-5);
}
