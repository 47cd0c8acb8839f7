//! The pre-training loop: SimCLR with ContrastiveCrop on the shipped CIFAR-10 subset — the
//! schedule switches from RandomResizedCrop to ContrastiveCrop after the warm-up and updates
//! the boxes after the right epochs, the loss decreases, the projections do not collapse; and
//! one step on the adapter equals the same step on the CPU path.

mod common;
use common::*;
use rand::SeedableRng;
use viewcraft::ssl::simclr::{SimClr, SimClrConfig};
use viewcraft::ssl::Method;
use viewcraft::tensor::{Device, Tensor};
use viewcraft::train::{pretrain, Event, PretrainConfig};
use viewcraft::Tape;

#[test]
fn simclr_ccrop_schedule_learns_without_collapse() {
    let data = cifar_train(128);
    let dev = Device::Cpu;
    let mut m = simclr(8, 0, &dev);
    let mut events = Vec::new();
    let boxes = pretrain(
        &mut m,
        data.clone(),
        &PretrainConfig {
            ccrop: true,
            warmup_epochs: 2,
            loc_interval: 2,
            ..pretrain_config(5, 32, 0.3, 3)
        },
        &dev,
        |e| events.push(e.clone()),
    )
    .unwrap();
    let crops: Vec<&str> = events
        .iter()
        .filter_map(|e| {
            if let Event::Epoch { crop, .. } = e {
                Some(*crop)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        crops,
        ["rcrop", "rcrop", "ccrop", "ccrop", "ccrop"],
        "C-Crop from epoch warmup+1"
    );
    let updates: Vec<usize> = events
        .iter()
        .filter_map(|e| {
            if let Event::Boxes(s) = e {
                Some(s.epoch)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        updates,
        [2, 4],
        "boxes after epochs warmup and warmup+interval, never after the last"
    );
    assert_eq!(boxes.len(), 128);
    assert!(boxes
        .iter()
        .all(|b| b[0] <= b[2] && b[1] <= b[3] && b[2] <= 1.0));
    let losses: Vec<f32> = events
        .iter()
        .filter_map(|e| {
            if let Event::Step { loss, .. } = e {
                Some(*loss)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(losses.len(), 20);
    let head = losses[..4].iter().sum::<f32>() / 4.0;
    let tail = losses[16..].iter().sum::<f32>() / 4.0;
    eprintln!("loss first {head:.3} last {tail:.3}");
    assert!(
        tail < head - 0.05,
        "loss should decrease: first steps {head:.3}, last steps {tail:.3} ({losses:?})"
    );
    // No collapse: L2-normalised projections of different images still differ.
    let x: Vec<f32> = (0..2)
        .flat_map(|i| {
            data.image(i)
                .iter()
                .map(|&p| p as f32 / 255.0 - 0.5)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut tape = Tape::new();
    let bound = m.store().bind(&mut tape, false);
    let v = tape.input(Tensor::from_vec(x, &[2, 3, 32, 32], &dev).unwrap());
    let z = m.project(&mut tape, &bound, v, v).unwrap();
    let zn = tape.l2_normalize(z).unwrap();
    let zv = tape.value(zn).to_vec().unwrap();
    let d = zv.len() / 4;
    let std: f32 = {
        let mean: Vec<f32> = (0..d)
            .map(|j| (0..4).map(|i| zv[i * d + j]).sum::<f32>() / 4.0)
            .collect();
        ((0..4)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| (zv[i * d + j] - mean[j]).powi(2))
            .sum::<f32>()
            / (4 * d) as f32)
            .sqrt()
    };
    assert!(std > 0.01, "projections collapsed: std {std}");
}

#[test]
fn one_step_on_the_adapter_equals_cpu() {
    let Some(g) = gpu() else { return };
    let data = cifar_train(16);
    let cfg = pretrain_config(1, 16, 0.3, 3);
    let run = |dev: &Device| {
        let mut m = SimClr::new(
            resnet18(4),
            SimClrConfig::default(),
            &mut rand::rngs::StdRng::seed_from_u64(1),
            dev,
        )
        .unwrap();
        let mut loss = 0.0;
        pretrain(&mut m, data.clone(), &cfg, dev, |e| {
            if let Event::Step { loss: l, .. } = e {
                loss = *l;
            }
        })
        .unwrap();
        let w = m
            .store()
            .get("layer1.0.conv1.weight")
            .unwrap()
            .value
            .to_vec()
            .unwrap();
        let fc = m
            .store()
            .get("fc.2.weight")
            .unwrap()
            .value
            .to_vec()
            .unwrap();
        (loss, w, fc)
    };
    let (c, gg) = (run(&Device::Cpu), run(&g));
    assert_close("loss", &[gg.0], &[c.0], 1e-4, 1e-4);
    assert_close("conv weight after one SGD step", &gg.1, &c.1, 1e-5, 1e-4);
    assert_close(
        "projector weight after one SGD step",
        &gg.2,
        &c.2,
        1e-5,
        1e-4,
    );
}

#[test]
fn simccrop_uses_the_fixed_centre_box_from_epoch_one() {
    let data = cifar_train(32);
    let dev = Device::Cpu;
    let mut m = simclr(4, 0, &dev);
    let centre = [0.25f32, 0.25, 0.75, 0.75];
    let cfg = PretrainConfig {
        ccrop: true,
        warmup_epochs: 0,
        loc_interval: 3,
        init_box: centre,
        ..pretrain_config(2, 16, 0.1, 1)
    };
    let mut events = Vec::new();
    let boxes = pretrain(&mut m, data, &cfg, &dev, |e| events.push(e.clone())).unwrap();
    let crops: Vec<&str> = events
        .iter()
        .filter_map(|e| {
            if let Event::Epoch { crop, .. } = e {
                Some(*crop)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(crops, ["ccrop", "ccrop"]);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Boxes(_))),
        "never updated"
    );
    assert!(boxes.iter().all(|b| *b == centre));
}

#[test]
fn bn_and_bias_weight_decay_exclusion_touches_only_1d_parameters() {
    // One step from the same init: the first SGD step of a weight depends only on its own
    // gradient and decay, so excluding 1-D parameters from weight decay must change exactly
    // the 1-D parameters.
    let data = cifar_train(16);
    let dev = Device::Cpu;
    let run = |exclude: bool| {
        let mut m = simclr(8, 0, &dev);
        let cfg = PretrainConfig {
            weight_decay: 0.5,
            exclude_bn_bias_wd: exclude,
            ..pretrain_config(1, 16, 0.1, 5)
        };
        pretrain(&mut m, data.clone(), &cfg, &dev, |_| {}).unwrap();
        m.store()
            .params
            .iter()
            .filter(|p| p.trainable())
            .map(|p| (p.name.clone(), p.value.rank(), p.value.to_vec().unwrap()))
            .collect::<Vec<_>>()
    };
    let (a, b) = (run(false), run(true));
    let (mut same, mut differ) = (0, 0);
    for ((n, rank, x), (_, _, y)) in a.iter().zip(&b) {
        // BN biases start at 0, where decay does nothing.
        let zero_init = n.ends_with("bias") && (n.contains("bn") || n.contains("downsample.1"));
        if *rank <= 1 && !zero_init {
            assert!(x != y, "{n}: 1-D parameter should skip weight decay");
            differ += 1;
        } else if *rank <= 1 {
            assert!(x == y, "{n}");
        } else {
            assert!(x == y, "{n}: weight-decayed either way");
            same += 1;
        }
    }
    assert!(same > 10 && differ > 10, "{same} {differ}");
}
