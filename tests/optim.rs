//! SGD, EMA and the cosine schedule against PyTorch's golden values, and the in-place GPU
//! updates against the CPU reference on fresh random tensors.

mod common;
use common::*;
use viewcraft::optim::{cosine_lr, ema_ref, ema_update, sgd_ref, sgd_step};
use viewcraft::tensor::Device;

#[test]
fn sgd_matches_pytorch() {
    let fx = Fixture::load("sgd_momentum");
    let (mut p, g, mut b) = (fx.f64("param"), fx.f64("grad"), fx.f64("momentum_buffer"));
    sgd_ref(&mut p, &g, &mut b, 0.5, 0.9, 1e-4);
    assert_close(
        "sgd param (f64)",
        &p.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &fx.f64("param_after"),
        1e-6,
        1e-6,
    );
    assert_close(
        "sgd buffer (f64)",
        &b.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &fx.f64("momentum_buffer_after"),
        1e-6,
        1e-6,
    );
    let mut devs = vec![Device::Cpu];
    devs.extend(gpu());
    for d in devs {
        let n = fx.shape("param");
        let mut pt = t(&fx.f32("param"), &n, &d);
        let mut bt = t(&fx.f32("momentum_buffer"), &n, &d);
        sgd_step(
            &mut pt,
            &t(&fx.f32("grad"), &n, &d),
            &mut bt,
            0.5,
            0.9,
            1e-4,
        )
        .unwrap();
        assert_close(
            &format!("sgd param on {d:?}"),
            &pt.to_vec().unwrap(),
            &fx.f64("param_after"),
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("sgd buffer on {d:?}"),
            &bt.to_vec().unwrap(),
            &fx.f64("momentum_buffer_after"),
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn ema_matches_pytorch() {
    let fx = Fixture::load("ema");
    let mut tgt = fx.f64("target");
    ema_ref(&mut tgt, &fx.f64("online"), 0.996);
    assert_close(
        "ema (f64)",
        &tgt.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &fx.f64("target_after"),
        1e-7,
        1e-7,
    );
    let mut devs = vec![Device::Cpu];
    devs.extend(gpu());
    for d in devs {
        let n = fx.shape("target");
        let mut tt = t(&fx.f32("target"), &n, &d);
        ema_update(&mut tt, &t(&fx.f32("online"), &n, &d), 0.996).unwrap();
        assert_close(
            &format!("ema on {d:?}"),
            &tt.to_vec().unwrap(),
            &fx.f64("target_after"),
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn cosine_schedule_matches_reference() {
    let fx = Fixture::load("cosine_schedule");
    let want = fx.f64("lr");
    let got: Vec<f32> = (1..=want.len())
        .map(|e| cosine_lr(0.5, e, want.len(), 0.1) as f32)
        .collect();
    assert_close("cosine lr", &got, &want, 1e-7, 1e-7);
    assert!((cosine_lr(0.5, 1, 500, 0.1) - 0.5).abs() < 1e-12);
}

#[test]
fn gpu_updates_equal_cpu_on_random_tensors() {
    let Some(g) = gpu() else { return };
    for n in [1usize, 7, 1000, 70_001] {
        let (mut r, seed) = rng();
        let (p, gr, b, o) = (
            randn(&mut r, n),
            randn(&mut r, n),
            randn(&mut r, n),
            randn(&mut r, n),
        );
        let run = |d: &Device| {
            let mut pt = t(&p, &[n], d);
            let mut bt = t(&b, &[n], d);
            sgd_step(&mut pt, &t(&gr, &[n], d), &mut bt, 0.03, 0.9, 5e-4).unwrap();
            sgd_step(&mut pt, &t(&gr, &[n], d), &mut bt, 0.03, 0.9, 5e-4).unwrap();
            let mut tt = t(&o, &[n], d);
            ema_update(&mut tt, &pt, 0.99).unwrap();
            (
                pt.to_vec().unwrap(),
                bt.to_vec().unwrap(),
                tt.to_vec().unwrap(),
            )
        };
        let (c, gg) = (run(&Device::Cpu), run(&g));
        assert_close(
            &format!("sgd param n{n} seed {seed}"),
            &gg.0,
            &c.0,
            1e-6,
            1e-6,
        );
        assert_close(
            &format!("sgd buffer n{n} seed {seed}"),
            &gg.1,
            &c.1,
            1e-6,
            1e-6,
        );
        assert_close(&format!("ema n{n} seed {seed}"), &gg.2, &c.2, 1e-6, 1e-6);
    }
}

#[test]
fn warmup_then_cosine_and_multistep_schedules() {
    use viewcraft::eval::linear::multistep_lr;
    use viewcraft::optim::warmup_cosine_lr;
    // No warm-up is the plain cosine.
    for e in 1..=10 {
        assert_eq!(
            warmup_cosine_lr(0.5, e, 10, 0.1, 0),
            cosine_lr(0.5, e, 10, 0.1)
        );
    }
    // Linear warm-up over 2 epochs, then the cosine over the remaining 8 starting at lr.
    assert!((warmup_cosine_lr(0.4, 1, 10, 0.0, 2) - 0.2).abs() < 1e-12);
    assert!((warmup_cosine_lr(0.4, 2, 10, 0.0, 2) - 0.4).abs() < 1e-12);
    assert!((warmup_cosine_lr(0.4, 3, 10, 0.0, 2) - 0.4).abs() < 1e-12);
    assert!((warmup_cosine_lr(0.4, 7, 10, 0.0, 2) - cosine_lr(0.4, 5, 8, 0.0)).abs() < 1e-12);
    // MultiStep: ×0.1 for every milestone strictly below the epoch (SPEC A.6).
    let ms = [60, 80];
    assert_eq!(multistep_lr(10.0, 1, &ms), 10.0);
    assert_eq!(multistep_lr(10.0, 60, &ms), 10.0);
    assert!((multistep_lr(10.0, 61, &ms) - 1.0).abs() < 1e-12);
    assert!((multistep_lr(10.0, 80, &ms) - 1.0).abs() < 1e-12);
    assert!((multistep_lr(10.0, 81, &ms) - 0.1).abs() < 1e-12);
}

#[test]
fn lars_scales_the_step_by_the_trust_ratio() {
    use viewcraft::optim::lars_ref;
    // Hand-computed: p = (3, 4) (‖p‖ = 5), g = (0, 2) (‖g‖ = 2), wd 0.1, η 0.001, ε 0:
    // trust = 0.001·5 / (2 + 0.5) = 0.002; d = (g + 0.1·p)·0.002 = (0.0006, 0.0048).
    let (mut p, mut b) = ([3.0f64, 4.0], [0.0f64, 0.0]);
    lars_ref(&mut p, &[0.0, 2.0], &mut b, 1.0, 0.9, 0.1, 0.001, 0.0);
    assert!(
        (b[0] - 0.0006).abs() < 1e-15 && (b[1] - 0.0048).abs() < 1e-15,
        "{b:?}"
    );
    assert!((p[0] - 2.9994).abs() < 1e-12 && (p[1] - 3.9952).abs() < 1e-12);
    // A zero gradient (or zero weights) falls back to trust 1, i.e. plain SGD.
    let (mut p1, mut b1) = ([0.0f64, 0.0], [0.0f64, 0.0]);
    let (mut p2, mut b2) = ([0.0f64, 0.0], [0.0f64, 0.0]);
    lars_ref(&mut p1, &[1.0, -1.0], &mut b1, 0.1, 0.9, 0.0, 0.001, 1e-8);
    sgd_ref(&mut p2, &[1.0, -1.0], &mut b2, 0.1, 0.9, 0.0);
    assert_eq!(p1, p2);
}

#[test]
fn lars_on_the_gpu_equals_cpu() {
    use viewcraft::optim::lars_step;
    let Some(g) = gpu() else { return };
    for n in [1usize, 300, 70_001] {
        let (mut r, seed) = rng();
        let (p, gr, b) = (randn(&mut r, n), randn(&mut r, n), randn(&mut r, n));
        let run = |d: &Device| {
            let mut pt = t(&p, &[n], d);
            let mut bt = t(&b, &[n], d);
            for _ in 0..2 {
                lars_step(&mut pt, &t(&gr, &[n], d), &mut bt, 0.5, 0.9, 1e-4).unwrap();
            }
            (pt.to_vec().unwrap(), bt.to_vec().unwrap())
        };
        let (c, gg) = (run(&Device::Cpu), run(&g));
        assert_close(
            &format!("lars param n{n} seed {seed}"),
            &gg.0,
            &c.0,
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("lars buffer n{n} seed {seed}"),
            &gg.1,
            &c.1,
            1e-6,
            1e-5,
        );
        // The step is not plain SGD's (the trust ratio is far from 1).
        let mut ps = p.clone();
        let mut bs = b.clone();
        sgd_ref(&mut ps, &gr, &mut bs, 0.5, 0.9, 1e-4);
        assert!(ps.iter().zip(&c.0).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}
