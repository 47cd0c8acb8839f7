//! BYOL and SimSiam: their specific mechanics (target copy / independent init, EMA before the
//! step, frozen projector bias, fixed predictor learning rate), a short run on the CIFAR-10
//! subset whose loss decreases without collapse, and one step on the adapter equal to the CPU.

mod common;
use common::*;
use rand::SeedableRng;
use viewcraft::ssl::byol::{Byol, ByolConfig, TargetInit, TARGET};
use viewcraft::ssl::simsiam::{SimSiam, SimSiamConfig};
use viewcraft::ssl::Method;
use viewcraft::tensor::Device;
use viewcraft::train::{pretrain, Event, PretrainConfig};

fn value(m: &dyn Method, name: &str) -> Vec<f32> {
    m.store()
        .get(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .value
        .to_vec()
        .unwrap()
}

/// Train, return the per-step losses and the spread of normalised backbone features.
fn train(m: &mut dyn Method, n: usize, cfg: &PretrainConfig, dev: &Device) -> (Vec<f32>, f32) {
    let data = cifar_train(n);
    let mut losses = Vec::new();
    pretrain(m, data.clone(), cfg, dev, |e| {
        if let Event::Step { loss, .. } = e {
            losses.push(*loss)
        }
    })
    .unwrap();
    let spread = eval_feature_spread(m, &data, 8, dev);
    (losses, spread)
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

#[test]
fn byol_target_init_and_ema() {
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let copy = Byol::new(
        resnet18(4),
        ByolConfig {
            target_init: TargetInit::Copy,
            ..Default::default()
        },
        &mut rng,
        &dev,
    )
    .unwrap();
    assert_eq!(
        value(&copy, "layer1.0.conv1.weight"),
        value(&copy, &format!("{TARGET}layer1.0.conv1.weight"))
    );
    assert_eq!(
        value(&copy, "projector.0.weight"),
        value(&copy, &format!("{TARGET}projector.0.weight"))
    );
    let mut indep = Byol::new(resnet18(4), ByolConfig::default(), &mut rng, &dev).unwrap();
    let (o0, t0) = (
        value(&indep, "conv1.weight"),
        value(&indep, &format!("{TARGET}conv1.weight")),
    );
    assert_ne!(o0, t0, "independent init");
    // Target weights are not optimised; BN buffers are not averaged.
    assert!(indep
        .store()
        .params
        .iter()
        .filter(|p| p.name.starts_with(TARGET))
        .all(|p| !p.trainable()));
    // One step: the EMA happens before the forward, with the online weights before the update.
    let m = indep.momentum_at(0.0);
    train(&mut indep, 16, &pretrain_config(1, 16, 0.1, 5), &dev);
    let t1 = value(&indep, &format!("{TARGET}conv1.weight"));
    let want: Vec<f64> = t0
        .iter()
        .zip(&o0)
        .map(|(t, o)| (m * t + (1.0 - m) * o) as f64)
        .collect();
    assert_close("target after one step", &t1, &want, 1e-6, 1e-5);
    assert_ne!(value(&indep, "conv1.weight"), o0, "online weights move");
    let cos = Byol::new(
        resnet18(4),
        ByolConfig {
            schedule: viewcraft::ssl::byol::MomentumSchedule::Cosine,
            ..Default::default()
        },
        &mut rng,
        &dev,
    )
    .unwrap();
    assert!(
        (cos.momentum_at(0.0) - 0.996).abs() < 1e-6 && (cos.momentum_at(1.0) - 1.0).abs() < 1e-6
    );
}

#[test]
fn simsiam_frozen_bias_and_fixed_predictor_lr() {
    let dev = Device::Cpu;
    let mut m = SimSiam::new(
        resnet18(4),
        SimSiamConfig::default(),
        &mut rand::rngs::StdRng::seed_from_u64(1),
        &dev,
    )
    .unwrap();
    assert!(
        m.fixed_lr("predictor.0.weight")
            && !m.fixed_lr("projector.0.weight")
            && !m.fixed_lr("conv1.weight")
    );
    assert!(
        m.store().get("projector.7.weight").is_none(),
        "final BN has no affine parameters"
    );
    // The projector is as wide as the backbone's features (the reference's `prev_dim`):
    // 32 at width 4, 128 at width 16, 512 at width 64.
    for (width, d) in [(4, 32), (16, 128)] {
        let s = SimSiam::new(
            resnet18(width),
            SimSiamConfig::default(),
            &mut rand::rngs::StdRng::seed_from_u64(1),
            &dev,
        )
        .unwrap();
        let shape = |n: &str| s.store().get(n).unwrap().value.shape().to_vec();
        assert_eq!(shape("projector.0.weight"), [d, d], "width {width}");
        assert_eq!(shape("projector.3.weight"), [d, d], "width {width}");
        assert_eq!(shape("projector.6.weight"), [512, d], "width {width}");
        assert_eq!(shape("predictor.0.weight"), [128, 512], "width {width}");
    }
    assert!(
        value(&m, "layer1.0.bn2.weight").iter().all(|&v| v == 0.0),
        "zero_init_residual"
    );
    let bias0 = value(&m, "projector.6.bias");
    let pred0 = value(&m, "predictor.0.weight");
    train(&mut m, 32, &pretrain_config(1, 16, 0.05, 5), &dev);
    assert_eq!(value(&m, "projector.6.bias"), bias0, "frozen bias");
    assert_ne!(value(&m, "predictor.0.weight"), pred0);
}

#[test]
fn byol_and_simsiam_learn_without_collapse() {
    let dev = Device::Cpu;
    let mut byol = Byol::new(
        resnet18(8),
        ByolConfig::default(),
        &mut rand::rngs::StdRng::seed_from_u64(2),
        &dev,
    )
    .unwrap();
    let (l, spread) = train(&mut byol, 128, &pretrain_config(4, 32, 0.2, 5), &dev);
    eprintln!("byol losses {l:?} spread {spread}");
    assert!(
        mean(&l[12..]) < mean(&l[..4]) - 0.05,
        "BYOL loss should decrease: {l:?}"
    );
    assert!(spread > 0.05, "BYOL features collapsed: {spread}");
    let mut ss = SimSiam::new(
        resnet18(8),
        SimSiamConfig::default(),
        &mut rand::rngs::StdRng::seed_from_u64(3),
        &dev,
    )
    .unwrap();
    let (l, spread) = train(&mut ss, 128, &pretrain_config(4, 32, 0.1, 5), &dev);
    eprintln!("simsiam losses {l:?} spread {spread}");
    assert!(
        mean(&l[12..]) < mean(&l[..4]) - 0.02,
        "SimSiam loss should decrease: {l:?}"
    );
    assert!(spread > 0.05, "SimSiam features collapsed: {spread}");
}

#[test]
fn one_step_on_the_adapter_equals_cpu() {
    // Both kernel families on the test adapter (the hardware one forced on lavapipe).
    for g in both_families("one step") {
        for which in ["byol", "simsiam"] {
            let run = |dev: &Device| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(4);
                let mut m: Box<dyn Method> = if which == "byol" {
                    Box::new(Byol::new(resnet18(4), ByolConfig::default(), &mut rng, dev).unwrap())
                } else {
                    Box::new(
                        SimSiam::new(resnet18(4), SimSiamConfig::default(), &mut rng, dev).unwrap(),
                    )
                };
                let w0: Vec<Vec<f32>> = step_checks("predictor.0", "predictor.3")
                    .iter()
                    .map(|c| value(m.as_ref(), &c.name))
                    .collect();
                let (l, _) = train(m.as_mut(), 16, &pretrain_config(1, 16, 0.1, 5), dev);
                let w1: Vec<Vec<f32>> = step_checks("predictor.0", "predictor.3")
                    .iter()
                    .map(|c| value(m.as_ref(), &c.name))
                    .collect();
                (l[0], w0, w1)
            };
            let (c, gg) = (run(&Device::Cpu), run(&g));
            assert_close(&format!("{which} loss"), &[gg.0], &[c.0], 1e-4, 1e-4);
            for (k, check) in step_checks("predictor.0", "predictor.3").iter().enumerate() {
                assert_eq!(gg.1[k], c.1[k], "same initialisation");
                assert_update_close(
                    &format!("{which} {}: one step's update", check.name),
                    check,
                    &c.1[k],
                    &gg.2[k],
                    &c.2[k],
                );
            }
        }
    }
}
