//! Checkpoints: k epochs + save + resume in a fresh process state gives bit-for-bit the same
//! parameters, buffers and boxes as the uninterrupted run (CPU path), for SimCLR with
//! ContrastiveCrop box updates and for MoCo (queue, pointer, key encoder, key shuffles);
//! files are written atomically and bad files give named errors.

mod common;
use common::*;
use rand::SeedableRng;
use std::path::PathBuf;
use std::sync::Arc;
use viewcraft::data::cifar::{self, Split, Variant};
use viewcraft::ssl::moco::{Moco, MocoConfig};
use viewcraft::ssl::simclr::{SimClr, SimClrConfig};
use viewcraft::ssl::Method;
use viewcraft::tensor::Device;
use viewcraft::train::{checkpoint, pretrain, PretrainConfig};

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("viewcraft-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn snapshot(m: &dyn Method) -> Vec<(String, Vec<f32>)> {
    m.store()
        .params
        .iter()
        .map(|p| (p.name.clone(), p.value.to_vec().unwrap()))
        .collect()
}

fn resume_equals_uninterrupted(tag: &str, make: &dyn Fn(u64) -> Box<dyn Method>) {
    let data = Arc::new(
        cifar::load(&cifar::embedded_root(), Variant::Cifar10, Split::Train)
            .unwrap()
            .truncate(64),
    );
    let dev = Device::Cpu;
    let (a, c) = (dir(&format!("{tag}-a")), dir(&format!("{tag}-c")));
    let cfg = PretrainConfig {
        ccrop: true,
        warmup_epochs: 1,
        loc_interval: 1,
        checkpoint_dir: Some(a.clone()),
        ..pretrain_config(3, 16, 0.1, 11)
    };
    let mut full = make(1);
    let boxes_full = pretrain(full.as_mut(), data.clone(), &cfg, &dev, |_| {}).unwrap();
    assert!(a.join("epoch_1.safetensors").exists() && a.join("last.safetensors").exists());
    assert!(
        std::fs::read_dir(&a).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "no temporary files left"
    );
    // A different initialisation: everything must come from the checkpoint.
    let mut resumed = make(2);
    let cfg_c = PretrainConfig {
        checkpoint_dir: Some(c.clone()),
        resume: Some(a.join("epoch_1.safetensors")),
        ..cfg.clone()
    };
    let boxes_resumed = pretrain(resumed.as_mut(), data, &cfg_c, &dev, |_| {}).unwrap();
    assert_eq!(boxes_resumed, boxes_full, "{tag}: boxes");
    for ((n, x), (_, y)) in snapshot(full.as_ref())
        .iter()
        .zip(snapshot(resumed.as_ref()))
    {
        assert!(x == &y, "{tag}: {n} differs after resume");
    }
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&c);
}

#[test]
fn simclr_ccrop_resume_is_exact() {
    resume_equals_uninterrupted("simclr", &|seed| {
        Box::new(
            SimClr::new(
                resnet18(4),
                SimClrConfig::default(),
                &mut rand::rngs::StdRng::seed_from_u64(seed),
                &Device::Cpu,
            )
            .unwrap(),
        )
    });
}

#[test]
fn moco_resume_is_exact() {
    resume_equals_uninterrupted("moco", &|seed| {
        let cfg = MocoConfig {
            k: 48,
            bn_group: 8,
            momentum: 0.99,
            seed: 3,
            ..Default::default()
        };
        Box::new(
            Moco::new(
                resnet18(4),
                cfg,
                &mut rand::rngs::StdRng::seed_from_u64(seed),
                &Device::Cpu,
            )
            .unwrap(),
        )
    });
}

#[test]
fn bad_checkpoints_are_named() {
    let d = dir("bad");
    std::fs::create_dir_all(&d).unwrap();
    let dev = Device::Cpu;
    let mut m = SimClr::new(
        resnet18(4),
        SimClrConfig::default(),
        &mut rand::rngs::StdRng::seed_from_u64(0),
        &dev,
    )
    .unwrap();
    let mut bufs = vec![None; m.store().params.len()];
    let junk = d.join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let e = checkpoint::load(&junk, &mut m, &mut bufs, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("junk.safetensors"), "{e}");
    let e = checkpoint::load(&d.join("missing.safetensors"), &mut m, &mut bufs, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing.safetensors") && e.contains("cannot read"),
        "{e}"
    );
    // A MoCo checkpoint does not load into SimCLR.
    let moco = Moco::new(
        resnet18(4),
        MocoConfig {
            k: 16,
            ..Default::default()
        },
        &mut rand::rngs::StdRng::seed_from_u64(0),
        &dev,
    )
    .unwrap();
    let p = d.join("moco.safetensors");
    checkpoint::save(
        &p,
        &moco,
        &vec![None; moco.store().params.len()],
        &[],
        1,
        4,
        "test",
    )
    .unwrap();
    let e = checkpoint::load(&p, &mut m, &mut bufs, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("method `moco`"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
