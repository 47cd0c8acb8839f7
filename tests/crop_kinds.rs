//! Every method trains with `semanticcrop` and with `objectcrop` on the CIFAR-10 subset for a
//! few epochs past the warm-up: the loss falls, the boxes / proposals are updated on schedule
//! and logged (with `proposals_mean` for objectcrop), and an objectcrop checkpoint keeps its
//! proposals for the resume.

mod common;
use common::*;
use viewcraft::crop::object::{ObjectCrop, ObjectPair};
use viewcraft::crop::{CropKind, ObjectCfg};
use viewcraft::ssl::Method;
use viewcraft::tensor::Device;
use viewcraft::train::{pretrain, Event, PretrainConfig};

fn method(name: &str, dev: &Device) -> Box<dyn Method> {
    method_named(name, 8, 5, (64, 16, 0.99), dev)
}

fn objects(pair: ObjectPair) -> CropKind {
    CropKind::ObjectCrop(ObjectCfg {
        crop: ObjectCrop::default(),
        pair,
        max_proposals: 10,
        fixed: None,
        swap: true,
    })
}

fn train(name: &str, kind: CropKind) -> Vec<Event> {
    let dev = Device::Cpu;
    let mut m = method(name, &dev);
    let mut events = Vec::new();
    let lr = if name == "simclr" || name == "moco" {
        0.3
    } else {
        0.05
    };
    pretrain(
        m.as_mut(),
        cifar_train(128),
        &PretrainConfig {
            crop: kind,
            box_thresh: 0.5,
            warmup_epochs: 1,
            loc_interval: 2,
            ..pretrain_config(6, 32, lr, 4)
        },
        &dev,
        |e| events.push(e.clone()),
    )
    .unwrap();
    events
}

fn check(name: &str, kind: CropKind) {
    let label = format!("{name} + {}", kind.name());
    let events = train(name, kind.clone());
    let crops: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Epoch { crop, .. } => Some(*crop),
            _ => None,
        })
        .collect();
    let mut want = vec![kind.name(); 6];
    want[0] = "rcrop";
    assert_eq!(crops, want, "{label}: warm-up, then the kind");
    let updates: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Boxes(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        updates.iter().map(|s| s.epoch).collect::<Vec<_>>(),
        [2, 4],
        "{label}: updates"
    );
    for s in &updates {
        let line = serde_json::to_string(&Event::Boxes(s.clone())).unwrap();
        match kind {
            CropKind::ObjectCrop(_) => {
                let p = s.proposals_mean.expect("proposals_mean");
                assert!((1.0..=10.0).contains(&p), "{label}: {p}");
                assert!(line.contains("\"proposals_mean\""), "{line}");
            }
            _ => assert!(!line.contains("proposals_mean"), "{line}"),
        }
        assert!(
            s.box_mean_area > 0.0 && s.box_mean_area < 1.0,
            "{label}: {s:?}"
        );
    }
    let losses: Vec<f32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Step { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect();
    assert_eq!(losses.len(), 24);
    // MoCo's loss first rises while real keys replace the random queue (2 steps here).
    let from = if name == "moco" { 2 } else { 0 };
    let head = losses[from..from + 4].iter().sum::<f32>() / 4.0;
    let tail = losses[20..].iter().sum::<f32>() / 4.0;
    eprintln!("{label}: loss {head:.4} -> {tail:.4}");
    assert!(tail < head, "{label}: loss should fall: {losses:?}");
}

#[test]
fn every_method_trains_with_semanticcrop() {
    for m in ["simclr", "moco", "byol", "simsiam"] {
        check(m, CropKind::SemanticCrop { sigma: Some(0.3) });
    }
}

#[test]
fn every_method_trains_with_objectcrop() {
    for m in ["simclr", "moco", "byol", "simsiam"] {
        check(m, objects(ObjectPair::Dilate));
    }
    check("simclr", objects(ObjectPair::Scene));
}

#[test]
fn objectcrop_checkpoints_keep_the_proposals() {
    use viewcraft::train::checkpoint;
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("vc_objckpt_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut m = method("simclr", &dev);
    let data = cifar_train(64);
    let cfg = PretrainConfig {
        crop: objects(ObjectPair::Dilate),
        box_thresh: 0.5,
        warmup_epochs: 1,
        loc_interval: 1,
        checkpoint_dir: Some(dir.clone()),
        ..pretrain_config(3, 32, 0.3, 4)
    };
    pretrain(m.as_mut(), data.clone(), &cfg, &dev, |_| {}).unwrap();
    let mut m2 = method("simclr", &dev);
    let mut bufs = viewcraft::optim::momentum_buffers(m2.store(), &dev).unwrap();
    let r = checkpoint::load(
        &dir.join("epoch_2.safetensors"),
        m2.as_mut(),
        &mut bufs,
        &dev,
    )
    .unwrap();
    let p = r.proposals.expect("proposals in an objectcrop checkpoint");
    assert_eq!(p.len(), 64);
    assert!(p.iter().all(|l| (1..=10).contains(&l.len())));
    assert!(
        p.iter().flatten().any(|b| *b != [0.0, 0.0, 1.0, 1.0]),
        "proposals from the heatmaps, not the initial whole image"
    );
    // Resuming from epoch 2 ends exactly as the uninterrupted run.
    let last = tensors(&dir.join("epoch_3.safetensors"));
    let mut m3 = method("simclr", &dev);
    let dir2 = dir.join("resumed");
    pretrain(
        m3.as_mut(),
        data,
        &PretrainConfig {
            resume: Some(dir.join("epoch_2.safetensors")),
            checkpoint_dir: Some(dir2.clone()),
            ..cfg
        },
        &dev,
        |_| {},
    )
    .unwrap();
    assert!(
        tensors(&dir2.join("epoch_3.safetensors")) == last,
        "resume is bit-exact (every tensor, the proposals included)"
    );
}
