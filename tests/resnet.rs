//! ResNet-18 (CIFAR stem, base width 8) against PyTorch: the fixture's torchvision-named
//! weights loaded by name, train-mode features, the gradients of Σ features²/2 for every
//! parameter, and eval-mode features with the running statistics after that forward — on
//! the CPU path and on the adapter. Tolerances allow for f32 accumulation through 17 layers.

mod common;
use common::*;
use rand::SeedableRng;
use viewcraft::nn::resnet::{Arch, ResNet, ResNetConfig, Stem};
use viewcraft::nn::ParamStore;
use viewcraft::tensor::{Device, Tensor};
use viewcraft::Tape;

fn build(dev: &Device) -> (ResNet, ParamStore) {
    let mut store = ParamStore::default();
    let cfg = ResNetConfig {
        arch: Arch::Resnet18,
        stem: Stem::Cifar,
        width: 8,
        zero_init_residual: false,
        num_classes: None,
    };
    let net = ResNet::new(
        cfg,
        &mut store,
        &mut rand::rngs::StdRng::seed_from_u64(0),
        dev,
    )
    .unwrap();
    (net, store)
}

fn check(dev: &Device) {
    let fx = Fixture::load("resnet18_w8");
    let (net, mut store) = build(dev);
    // Names and shapes match torchvision's state dict exactly.
    let fixture_names: Vec<String> = fx
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix("param.").map(String::from))
        .collect();
    assert_eq!(store.params.len(), fixture_names.len(), "parameter count");
    for p in &mut store.params {
        let key = format!("param.{}", p.name);
        assert!(
            fixture_names.contains(&p.name),
            "{} is not a torchvision name",
            p.name
        );
        assert_eq!(p.value.shape(), fx.shape(&key).as_slice(), "{}", p.name);
        p.value = Tensor::from_vec(fx.f32(&key), &fx.shape(&key), dev).unwrap();
    }
    let mut tape = Tape::new();
    let bound = store.bind(&mut tape, true);
    let x = tape.input(t(&fx.f32("input"), &fx.shape("input"), dev));
    let f = net.forward(&mut tape, &mut store, &bound, x, true).unwrap();
    assert_close(
        &format!("features on {dev:?}"),
        &tape.value(f).to_vec().unwrap(),
        &fx.f64("features"),
        1e-4,
        1e-3,
    );
    let sq = tape.mul(f, f).unwrap();
    let s = tape.sum(sq).unwrap();
    let loss = tape.scale(s, 0.5).unwrap();
    assert_close(
        &format!("loss on {dev:?}"),
        &[tape.value(loss).item().unwrap()],
        &fx.f64("loss"),
        1e-4,
        1e-3,
    );
    let grads = tape.backward(loss).unwrap();
    let mut checked = 0;
    for (id, v) in bound.iter() {
        let name = &store.params[id].name;
        let want = fx.f64(&format!("grad.{name}"));
        let got = grads.get(v).unwrap().to_vec().unwrap();
        // Gradients through 17 BN layers: normwise tolerance on the largest value.
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert_close(
            &format!("grad.{name} on {dev:?}"),
            &got,
            &want,
            2e-4 * scale + 1e-6,
            2e-3,
        );
        checked += 1;
    }
    assert_eq!(checked, 60, "every trainable parameter has a gradient");
    let mut tape = Tape::new();
    let bound = store.bind(&mut tape, false);
    let x = tape.input(t(&fx.f32("input"), &fx.shape("input"), dev));
    let fe = net
        .forward(&mut tape, &mut store, &bound, x, false)
        .unwrap();
    assert_close(
        &format!("eval features on {dev:?}"),
        &tape.value(fe).to_vec().unwrap(),
        &fx.f64("features_eval_after_one_train_forward"),
        1e-4,
        1e-3,
    );
}

#[test]
fn forward_macs_of_cifar_resnet18() {
    // conv1 1.77M + layer1 151.0M + 3 × (18.9M + 113.2M + 2.1M) for layers 2–4.
    assert_eq!(resnet18(64).forward_macs(32, 32), 555_417_600);
}

#[test]
fn resnet18_matches_pytorch_on_cpu() {
    check(&Device::Cpu);
}

#[test]
fn resnet18_matches_pytorch_on_gpu() {
    if let Some(g) = gpu() {
        check(&g);
    }
}

#[test]
fn architectures_build_with_torchvision_shapes() {
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for (arch, stem, n_params, out) in [
        (Arch::Resnet18, Stem::Imagenet, 62, 512),
        (Arch::Resnet34, Stem::Cifar, 110, 512),
        (Arch::Resnet50, Stem::Imagenet, 161, 2048),
    ] {
        let mut store = ParamStore::default();
        let cfg = ResNetConfig {
            arch,
            stem,
            width: 64,
            zero_init_residual: true,
            num_classes: Some(10),
        };
        let net = ResNet::new(cfg, &mut store, &mut rng, &dev).unwrap();
        let trainable = store.params.iter().filter(|p| p.trainable()).count();
        assert_eq!(
            trainable, n_params,
            "{arch:?} trainable tensors (torchvision count)"
        );
        assert_eq!(net.out_dim, out);
        assert_eq!(store.get("fc.weight").unwrap().value.shape(), &[10, out]);
        let c1 = store.get("conv1.weight").unwrap().value.shape().to_vec();
        assert_eq!(
            c1,
            if stem == Stem::Cifar {
                vec![64, 3, 3, 3]
            } else {
                vec![64, 3, 7, 7]
            }
        );
        // zero_init_residual: the last BN of each block starts at 0.
        let last_bn = if arch == Arch::Resnet50 {
            "layer1.0.bn3.weight"
        } else {
            "layer1.0.bn2.weight"
        };
        assert!(store
            .get(last_bn)
            .unwrap()
            .value
            .to_vec()
            .unwrap()
            .iter()
            .all(|&v| v == 0.0));
        assert!(store
            .get("layer1.0.bn1.weight")
            .unwrap()
            .value
            .to_vec()
            .unwrap()
            .iter()
            .all(|&v| v == 1.0));
    }
}

#[test]
fn resnet18_batch4_gpu_equals_cpu() {
    // Both kernel families on the test adapter (the hardware one forced on lavapipe).
    for g in both_families("resnet batch 4") {
        let (mut r, seed) = rng();
        let x = randn(&mut r, 4 * 3 * 32 * 32);
        // A random upstream gradient: a uniform one (loss = Σ f) makes every BN backward cancel
        // almost exactly, which measures rounding, not the kernels.
        let w = randn(&mut r, 4 * 64);
        let run = |dev: &Device| {
            let (net, mut store) = build(dev);
            let mut tape = Tape::new();
            let bound = store.bind(&mut tape, true);
            let xv = tape.input(t(&x, &[4, 3, 32, 32], dev));
            let f = net
                .forward(&mut tape, &mut store, &bound, xv, true)
                .unwrap();
            let fv = tape.value(f).to_vec().unwrap();
            let wv = tape.input(t(&w, &[4, 64], dev));
            let fw = tape.mul(f, wv).unwrap();
            let l = tape.sum(fw).unwrap();
            let grads = tape.backward(l).unwrap();
            let gw: Vec<Vec<f32>> = bound
                .iter()
                .map(|(_, v)| grads.get(v).unwrap().to_vec().unwrap())
                .collect();
            (fv, gw)
        };
        let (c, gg) = (run(&Device::Cpu), run(&g));
        assert_close(&format!("features seed {seed}"), &gg.0, &c.0, 1e-4, 1e-3);
        if std::env::var("VIEWCRAFT_TEST_VERBOSE").is_ok() {
            for (i, (a, b)) in gg.1.iter().zip(&c.1).enumerate() {
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                let d = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max) as f64;
                eprintln!("grad {i}: normwise {:.2e}", d / scale);
            }
        }
        // The errors are bimodal: most draws agree to ~1e-5 of the largest gradient, a few move
        // the earlier layers' gradients by up to a few 1e-2 of their scale from one layer on —
        // the signature of a ReLU input within rounding of 0 routed differently by the two paths.
        // A wrong kernel is off by O(1).
        for (i, (a, b)) in gg.1.iter().zip(&c.1).enumerate() {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            assert_close(
                &format!("grad {i} seed {seed}"),
                a,
                b,
                5e-2 * scale + 1e-6,
                0.0,
            );
        }
    }
}
