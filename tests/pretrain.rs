//! The pre-training loop: SimCLR with ContrastiveCrop on the shipped CIFAR-10 subset — the
//! schedule switches from RandomResizedCrop to ContrastiveCrop after the warm-up and updates
//! the boxes after the right epochs, the loss decreases, the projections do not collapse; and
//! one step on the adapter equals the same step on the CPU path.

mod common;
use common::*;
use rand::SeedableRng;
use viewcraft::ssl::simclr::{SimClr, SimClrConfig};
use viewcraft::ssl::Method;
use viewcraft::tensor::Device;
use viewcraft::train::{pretrain, Event, PretrainConfig};

/// One 20-step SimCLR + ContrastiveCrop run (loader seed `seed`): the schedule and box
/// updates checked here; (first steps' loss, last steps' loss, eval-mode feature spread).
fn simclr_ccrop_run(seed: u64) -> (f32, f32, f32) {
    let data = cifar_train(128);
    let dev = Device::Cpu;
    let mut m = simclr(8, 0, &dev);
    let mut events = Vec::new();
    let boxes = pretrain(
        &mut m,
        data.clone(),
        &PretrainConfig {
            crop: viewcraft::crop::CropKind::Ccrop,
            warmup_epochs: 2,
            loc_interval: 2,
            ..pretrain_config(5, 32, 0.3, seed)
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
    // No collapse: the eval-mode (running-statistics) features of 8 distinct images still
    // point in different directions.
    let spread = eval_feature_spread(&mut m, &data, 8, &dev);
    eprintln!(
        "seed {seed}: loss first {head:.3} last {tail:.3}, eval-mode feature spread {spread:.4}"
    );
    (head, tail, spread)
}

/// Learning on 20 steps of a width-8 network is a coin toss per seed (measured: feature
/// spreads 0.03–0.50 and one rising loss over seeds 1, 2, 3, 5, 7), so the learning checks
/// take a majority of three seeds; the schedule checks hold for every run.
#[test]
fn simclr_ccrop_schedule_learns_without_collapse() {
    let runs: Vec<_> = [3, 5, 7].into_iter().map(simclr_ccrop_run).collect();
    let good = runs
        .iter()
        .filter(|(head, tail, spread)| *tail < head - 0.05 && *spread > 0.05)
        .count();
    assert!(
        good >= 2,
        "the loss should fall without collapse in most runs: {runs:?}"
    );
}

#[test]
fn one_step_on_the_adapter_equals_cpu() {
    // Both kernel families on the test adapter (the hardware one forced on lavapipe).
    for g in both_families("one step") {
        let data = cifar_train(16);
        let cfg = pretrain_config(1, 16, 0.3, 3);
        let checks = step_checks("fc.0", "fc.2");
        let run = |dev: &Device| {
            let mut m = SimClr::new(
                resnet18(4),
                SimClrConfig::default(),
                &mut rand::rngs::StdRng::seed_from_u64(1),
                dev,
            )
            .unwrap();
            let weights = |m: &SimClr| -> Vec<Vec<f32>> {
                checks
                    .iter()
                    .map(|c| m.store().get(&c.name).unwrap().value.to_vec().unwrap())
                    .collect()
            };
            let w0 = weights(&m);
            let mut loss = 0.0;
            pretrain(&mut m, data.clone(), &cfg, dev, |e| {
                if let Event::Step { loss: l, .. } = e {
                    loss = *l;
                }
            })
            .unwrap();
            (loss, w0, weights(&m))
        };
        let (c, gg) = (run(&Device::Cpu), run(&g));
        assert_close("loss", &[gg.0], &[c.0], 1e-4, 1e-4);
        for (k, check) in checks.iter().enumerate() {
            assert_update_close(
                &format!("simclr {}: one step's update", check.name),
                check,
                &c.1[k],
                &gg.2[k],
                &c.2[k],
            );
        }
    }
}

#[test]
fn simccrop_uses_the_fixed_centre_box_from_epoch_one() {
    let data = cifar_train(32);
    let dev = Device::Cpu;
    let mut m = simclr(4, 0, &dev);
    let centre = [0.25f32, 0.25, 0.75, 0.75];
    let cfg = PretrainConfig {
        crop: viewcraft::crop::CropKind::Ccrop,
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

/// The kNN monitor extracts the features of its labelled split itself, not of the
/// pre-training set: here the two hold different images, and the monitor's number must be
/// the kNN accuracy of the trained model on the labelled split.
#[test]
fn knn_monitor_scores_the_labelled_split() {
    use viewcraft::data::cifar::{embedded_root, load, Split, Variant};
    use viewcraft::data::ImageSet;
    use viewcraft::eval::knn::{features, knn_accuracy};
    use viewcraft::train::KnnMonitor;
    let all = cifar_train(96);
    let part = |from: usize, to: usize| ImageSet {
        pixels: all.pixels[from * 3072..to * 3072].to_vec(),
        labels: all.labels[from..to].to_vec(),
        ..(*all).clone()
    };
    // Pre-train on images 32..96; the monitor's labelled split is images 0..48.
    let (pre, labelled) = (
        std::sync::Arc::new(part(32, 96)),
        std::sync::Arc::new(part(0, 48)),
    );
    let test = std::sync::Arc::new(
        load(&embedded_root(), Variant::Cifar10, Split::Test)
            .unwrap()
            .truncate(64),
    );
    let dev = Device::Cpu;
    let mut m = simclr(4, 0, &dev);
    let cfg = PretrainConfig {
        knn: Some(KnnMonitor {
            interval: 1,
            k: 5,
            temperature: 0.1,
            train: labelled.clone(),
            test: test.clone(),
            high_pass: false,
        }),
        ..pretrain_config(1, 32, 0.1, 3)
    };
    let mut reported = None;
    pretrain(&mut m, pre, &cfg, &dev, |e| {
        if let Event::Knn { knn_top1, .. } = e {
            reported = Some(*knn_top1)
        }
    })
    .unwrap();
    let (mean, std) = viewcraft::data::augment::mean_std("cifar10").unwrap();
    let (ftr, d) = features(&mut m, &labelled, (mean, std, false), 64, &dev).unwrap();
    let (fte, _) = features(&mut m, &test, (mean, std, false), 64, &dev).unwrap();
    let want = knn_accuracy(ftr, &labelled.labels, fte, &test.labels, d, 10, 5, 0.1);
    assert_eq!(reported, Some(want), "monitor vs kNN of the labelled split");
}

/// The heatmap kernel's size limit is checked before the first step, not at the first box
/// update after the warm-up: 160×160 images through the CIFAR stem give a 20×20 map.
#[test]
fn heatmap_size_limit_is_checked_before_training() {
    use viewcraft::data::ImageSet;
    let n = 8;
    let big = std::sync::Arc::new(ImageSet {
        pixels: (0..n * 3 * 160 * 160)
            .map(|i| (i * 31 % 251) as u8)
            .collect(),
        labels: vec![0; n],
        height: 160,
        width: 160,
        classes: vec!["a".into()],
    });
    let dev = Device::Cpu;
    let mut m = simclr(4, 0, &dev);
    let mut steps = 0;
    let cfg = PretrainConfig {
        crop: viewcraft::crop::CropKind::Ccrop,
        warmup_epochs: 1,
        loc_interval: 1,
        ..pretrain_config(2, 4, 0.1, 1)
    };
    let e = pretrain(&mut m, big.clone(), &cfg, &dev, |e| {
        if matches!(e, Event::Step { .. }) {
            steps += 1
        }
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("crop.kind") && e.contains("20×20"), "{e}");
    assert_eq!(steps, 0, "no step before the error");
    // A run that never updates its boxes (warm-up as long as the run) needs no heatmaps.
    let never = PretrainConfig {
        crop: viewcraft::crop::CropKind::Ccrop,
        warmup_epochs: 1,
        ..pretrain_config(1, 4, 0.1, 1)
    };
    pretrain(&mut m, big.clone(), &never, &dev, |_| {}).unwrap();
    // STL-10's 96×96 gives 12×12 = 144 cells, CIFAR's 32×32 4×4, ImageNet's 224² 7×7.
    let cifar = resnet18(4);
    assert_eq!(cifar.feature_hw(96, 96), (12, 12));
    assert_eq!(cifar.feature_hw(32, 32), (4, 4));
    let imagenet = viewcraft::nn::resnet::ResNetConfig {
        stem: viewcraft::nn::resnet::Stem::Imagenet,
        ..resnet18(4)
    };
    assert_eq!(imagenet.feature_hw(224, 224), (7, 7));
    assert_eq!(imagenet.feature_hw(160, 160), (5, 5));
}

/// Views of two sizes (32 and 24) through one training step: the loss on the adapter equals
/// the CPU path's, and both differ from the one-size run.
#[test]
fn views_of_two_sizes_train_on_the_cpu_path_and_the_adapter() {
    use viewcraft::data::loader::{Augment, CropSource, ViewSpec};
    let data = cifar_train(16);
    let spec = |source, size| ViewSpec {
        source,
        size,
        rrc: viewcraft::crop::sampler::RrcParams::default(),
        augment: Augment::Ssl,
        mask: viewcraft::data::loader::ViewMask::None,
    };
    let cfg = PretrainConfig {
        views: vec![spec(CropSource::Box, 32), spec(CropSource::Scene, 24)],
        ..pretrain_config(1, 16, 0.3, 3)
    };
    let run = |dev: &Device, cfg: &PretrainConfig| {
        let mut m = simclr(4, 1, dev);
        let mut loss = f32::NAN;
        pretrain(&mut m, data.clone(), cfg, dev, |e| {
            if let Event::Step { loss: l, .. } = e {
                loss = *l;
            }
        })
        .unwrap();
        loss
    };
    let cpu = run(&Device::Cpu, &cfg);
    assert!(cpu.is_finite());
    let one_size = run(&Device::Cpu, &pretrain_config(1, 16, 0.3, 3));
    assert_ne!(cpu, one_size, "the 24-pixel view changes the step");
    // Three views for a two-view method: a config error naming the views.
    let three = PretrainConfig {
        views: vec![spec(CropSource::Box, 32); 3],
        ..pretrain_config(1, 16, 0.3, 3)
    };
    let mut m = simclr(4, 0, &Device::Cpu);
    let e = pretrain(&mut m, data.clone(), &three, &Device::Cpu, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("views") && e.contains("takes 2 views"), "{e}");
    let Some(g) = gpu() else { return };
    let gpu_loss = run(&g, &cfg);
    assert_close("two sizes: loss", &[gpu_loss], &[cpu], 1e-4, 1e-4);
}
