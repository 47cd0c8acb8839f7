//! MoCo v2: queue wrap-around, shuffle/un-shuffle restoring the order exactly, the key EMA
//! happening before the keys, a short run (ghost-BN groups, shuffled keys) whose loss
//! decreases once the queue is full, and one step on the adapter equal to the CPU.

mod common;
use common::*;
use rand::SeedableRng;
use std::sync::Arc;
use viewcraft::ops::shape_ops::{inverse_permutation, permute_rows};
use viewcraft::ssl::moco::{Moco, MocoConfig, KEY};
use viewcraft::ssl::Method;
use viewcraft::tensor::{Device, Tensor};
use viewcraft::train::{pretrain, Event};
use viewcraft::Tape;

#[test]
fn queue_wraps_around() {
    let dev = Device::Cpu;
    let cfg = MocoConfig {
        dim: 4,
        k: 8,
        ..Default::default()
    };
    let mut m = Moco::new(
        resnet18(4),
        cfg,
        &mut rand::rngs::StdRng::seed_from_u64(0),
        &dev,
    )
    .unwrap();
    let q0 = m.queue().to_vec().unwrap();
    for step in 0..3 {
        let keys: Vec<f32> = (0..12).map(|i| (step * 100 + i) as f32).collect();
        m.enqueue(&Tensor::from_vec(keys, &[3, 4], &dev).unwrap())
            .unwrap();
    }
    assert_eq!(m.queue_ptr(), 1, "9 keys into a queue of 8");
    let q = m.queue().to_vec().unwrap();
    // Row 0 holds the third batch's last key (wrapped), rows 1..8 the rest in order.
    assert_eq!(&q[0..4], &[208.0, 209.0, 210.0, 211.0]);
    assert_eq!(
        &q[4..8],
        &[4.0, 5.0, 6.0, 7.0],
        "row 1: the first batch's second key"
    );
    assert_eq!(&q[24..28], &[200.0, 201.0, 202.0, 203.0]);
    assert_ne!(q, q0);
    // The initial queue holds unit rows.
    for r in q0.chunks(4) {
        assert!((r.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn shuffle_then_unshuffle_is_exact() {
    let mut devs = vec![Device::Cpu];
    devs.extend(gpu());
    let (mut r, seed) = rng();
    let x = randn(&mut r, 7 * 5);
    let perm = vec![3, 0, 6, 1, 5, 2, 4];
    for d in devs {
        let t = Tensor::from_slice(&x, &[7, 5], &d).unwrap();
        let s = permute_rows(&t, &perm).unwrap();
        assert_eq!(
            &s.to_vec().unwrap()[0..5],
            &x[15..20],
            "row 0 is row perm[0] = 3"
        );
        let back = permute_rows(&s, &inverse_permutation(&perm)).unwrap();
        assert_eq!(
            back.to_vec().unwrap(),
            x,
            "un-shuffle restores the order exactly on {d:?} (seed {seed})"
        );
        // The gradient of a shuffle is the un-shuffle.
        let mut tape = Tape::new();
        let v = tape.param(t.clone());
        let p = tape.permute_rows(v, &perm).unwrap();
        let w =
            tape.input(Tensor::from_vec((0..35).map(|i| i as f32).collect(), &[7, 5], &d).unwrap());
        let m = tape.mul(p, w).unwrap();
        let l = tape.sum(m).unwrap();
        let g = tape.backward(l).unwrap().get(v).unwrap().to_vec().unwrap();
        assert_eq!(
            g[15], 0.0,
            "x row 3 went to position 0 and met weights 0..5"
        );
        assert_eq!(g[0], 5.0, "x row 0 went to position 1");
    }
    assert!(permute_rows(&Tensor::zeros(&[3, 2], &Device::Cpu).unwrap(), &[0, 0, 1]).is_err());
}

#[test]
fn key_ema_runs_before_the_keys() {
    let dev = Device::Cpu;
    let mut m = Moco::new(
        resnet18(4),
        MocoConfig {
            k: 64,
            momentum: 0.9,
            ..Default::default()
        },
        &mut rand::rngs::StdRng::seed_from_u64(1),
        &dev,
    )
    .unwrap();
    let name = "layer1.0.conv1.weight";
    assert_eq!(
        m.store().get(name).unwrap().value.to_vec().unwrap(),
        m.store()
            .get(&format!("{KEY}{name}"))
            .unwrap()
            .value
            .to_vec()
            .unwrap(),
        "key encoder starts as a copy"
    );
    assert!(m
        .store()
        .params
        .iter()
        .filter(|p| p.name.starts_with(KEY))
        .all(|p| !p.trainable()));
    // Move the online weights, then the pre-step hook averages the key weights towards them.
    let id = m.store().id(name).unwrap();
    let k0 = m
        .store()
        .get(&format!("{KEY}{name}"))
        .unwrap()
        .value
        .to_vec()
        .unwrap();
    let moved: Vec<f32> = k0.iter().map(|v| v + 1.0).collect();
    m.store_mut().params[id].value = Tensor::from_vec(moved, &[4, 4, 3, 3], &dev).unwrap();
    m.before_step(0, 1).unwrap();
    let k1 = m
        .store()
        .get(&format!("{KEY}{name}"))
        .unwrap()
        .value
        .to_vec()
        .unwrap();
    for (a, b) in k1.iter().zip(&k0) {
        assert!((a - (b + 0.1)).abs() < 1e-6);
    }
}

#[test]
fn learns_and_matches_on_the_adapter() {
    let data = cifar_train(128);
    let mk = |dev: &Device| {
        Moco::new(
            resnet18(8),
            MocoConfig {
                k: 256,
                bn_group: 16,
                momentum: 0.99,
                ..Default::default()
            },
            &mut rand::rngs::StdRng::seed_from_u64(2),
            dev,
        )
        .unwrap()
    };
    let run = |m: &mut Moco, epochs: usize, dev: &Device, data: &Arc<viewcraft::data::ImageSet>| {
        let mut losses = Vec::new();
        pretrain(
            m,
            data.clone(),
            &pretrain_config(epochs, 32, 0.1, 9),
            dev,
            |e| {
                if let Event::Step { loss, .. } = e {
                    losses.push(*loss)
                }
            },
        )
        .unwrap();
        losses
    };
    let mut m = mk(&Device::Cpu);
    let l = run(&mut m, 6, &Device::Cpu, &data);
    eprintln!("moco losses {l:?}");
    // The loss first rises towards ln(K + 1) while the random initial queue fills with real
    // keys (8 steps here); from then on it must fall.
    let (head, tail) = (
        l[8..12].iter().sum::<f32>() / 4.0,
        l[20..].iter().sum::<f32>() / 4.0,
    );
    assert!(
        tail < head - 0.05,
        "MoCo loss should decrease once the queue is full: {l:?}"
    );
    assert_eq!(m.queue_ptr(), (24 * 32) % 256);
    // One step under both kernel families on the test adapter.
    for g in both_families("one step") {
        let small = Arc::new(data.as_ref().clone().truncate(32));
        let checks = step_checks("fc.0", "fc.2");
        let weights = |m: &Moco| -> Vec<Vec<f32>> {
            checks
                .iter()
                .map(|c| m.store().get(&c.name).unwrap().value.to_vec().unwrap())
                .collect()
        };
        let one = |dev: &Device| {
            let mut m = mk(dev);
            let w0 = weights(&m);
            let l = run(&mut m, 1, dev, &small);
            (l[0], w0, weights(&m), m.queue().to_vec().unwrap())
        };
        let (c, gg) = (one(&Device::Cpu), one(&g));
        assert_close("moco loss", &[gg.0], &[c.0], 1e-4, 1e-4);
        for (k, check) in checks.iter().enumerate() {
            assert_update_close(
                &format!("moco {}: one step's update", check.name),
                check,
                &c.1[k],
                &gg.2[k],
                &c.2[k],
            );
        }
        assert_close("moco queue after a step", &gg.3, &c.3, 1e-4, 1e-3);
    }
}

#[test]
fn ghost_bn_running_stats_follow_the_first_group_only() {
    // The query encoder over two ghost groups must leave the same running statistics as a
    // train-mode forward of the first group alone (the reference's rank 0).
    let dev = Device::Cpu;
    let mut m = Moco::new(
        resnet18(4),
        MocoConfig {
            dim: 8,
            k: 32,
            bn_group: 4,
            ..Default::default()
        },
        &mut rand::rngs::StdRng::seed_from_u64(3),
        &dev,
    )
    .unwrap();
    let (mut r, _) = rng();
    let x1 = randn(&mut r, 8 * 3 * 8 * 8);
    let x2 = randn(&mut r, 8 * 3 * 8 * 8);
    // The reference: the same backbone and weights, the first 4 query images, train mode.
    let backbone = m.backbone().clone();
    let mut alone = m.store().clone();
    {
        let mut tape = Tape::new();
        let b = alone.bind(&mut tape, true);
        let x = tape.input(Tensor::from_slice(&x1[..4 * 3 * 64], &[4, 3, 8, 8], &dev).unwrap());
        backbone
            .forward(&mut tape, &mut alone, &b, x, true)
            .unwrap();
    }
    let mut tape = Tape::new();
    let b = m.store().bind(&mut tape, true);
    let v1 = tape.input(Tensor::from_slice(&x1, &[8, 3, 8, 8], &dev).unwrap());
    let v2 = tape.input(Tensor::from_slice(&x2, &[8, 3, 8, 8], &dev).unwrap());
    m.loss(&mut tape, &b, &[v1, v2]).unwrap();
    let mut checked = 0;
    for p in &m.store().params {
        if p.name.starts_with(KEY) || !p.name.contains("running_") || p.name.starts_with("fc") {
            continue;
        }
        let want = alone.get(&p.name).unwrap().value.to_vec().unwrap();
        assert_close(&p.name, &p.value.to_vec().unwrap(), &want, 1e-6, 1e-5);
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
}
