//! Checkpoints: k epochs + save + resume in a fresh process state gives bit-for-bit the same
//! parameters, buffers and boxes as the uninterrupted run (CPU path), for SimCLR with
//! ContrastiveCrop box updates and for MoCo (queue, pointer, key encoder, key shuffles);
//! files are written atomically and bad files give named errors.

mod common;
use common::*;
use rand::SeedableRng;
use std::path::PathBuf;
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

fn resume_equals_uninterrupted(tag: &str, dev: &Device, make: &dyn Fn(u64) -> Box<dyn Method>) {
    let data = cifar_train(64);
    let dev = dev.clone();
    let (a, c) = (dir(&format!("{tag}-a")), dir(&format!("{tag}-c")));
    let cfg = PretrainConfig {
        crop: viewcraft::crop::CropKind::Ccrop,
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
    resume_equals_uninterrupted("simclr", &Device::Cpu, &|seed| {
        simclr_on(seed, &Device::Cpu)
    });
}

fn simclr_on(seed: u64, dev: &Device) -> Box<dyn Method> {
    Box::new(
        SimClr::new(
            resnet18(4),
            SimClrConfig::default(),
            &mut rand::rngs::StdRng::seed_from_u64(seed),
            dev,
        )
        .unwrap(),
    )
}

/// The same on the adapter: its kernels are deterministic, so a resumed run repeats the
/// uninterrupted one bit for bit there too.
#[test]
fn simclr_ccrop_resume_is_exact_on_the_adapter() {
    let Some(g) = gpu() else { return };
    resume_equals_uninterrupted("simclr-gpu", &g, &|seed| simclr_on(seed, &g));
}

#[test]
fn moco_resume_is_exact() {
    resume_equals_uninterrupted("moco", &Device::Cpu, &|seed| {
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
    let mut m = simclr(4, 0, &dev);
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
        &[],
        checkpoint::Position {
            epoch: 1,
            step: 4,
            batch: 0,
        },
        16,
        "test",
    )
    .unwrap();
    let e = checkpoint::load(&p, &mut m, &mut bufs, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("method `moco`"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn export_has_torchvision_names_and_round_trips() {
    let data = cifar_train(32);
    let dev = Device::Cpu;
    let d = dir("export");
    let mut m = simclr(8, 0, &dev);
    let cfg = PretrainConfig {
        checkpoint_dir: Some(d.clone()),
        ..pretrain_config(1, 16, 0.1, 2)
    };
    pretrain(&mut m, data.clone(), &cfg, &dev, |_| {}).unwrap();
    let out = d.join("backbone.safetensors");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_viewcraft"))
        .args([
            "export",
            "--checkpoint",
            d.join("last.safetensors").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    // torchvision resnet18's state dict without `fc`: 60 weights, 20 BNs × (mean, var, count).
    assert_eq!(names.len(), 120, "{names:?}");
    assert!(
        names.contains(&"conv1.weight".to_string())
            && names.contains(&"layer2.0.downsample.0.weight".to_string())
    );
    assert!(names.contains(&"bn1.num_batches_tracked".to_string()));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("fc") || n.starts_with("param/")));
    assert_eq!(st.tensor("conv1.weight").unwrap().shape(), &[8, 3, 3, 3]);
    // Re-import by name into a fresh ResNet: the same eval-mode features as the trained one.
    let (net, mut store) = {
        let mut store = viewcraft::nn::ParamStore::default();
        let net = viewcraft::nn::resnet::ResNet::new(
            resnet18(8),
            &mut store,
            &mut rand::rngs::StdRng::seed_from_u64(9),
            &dev,
        )
        .unwrap();
        (net, store)
    };
    for p in &mut store.params {
        let t = st.tensor(&p.name).unwrap();
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        p.value = viewcraft::tensor::Tensor::from_vec(v, p.value.shape(), &dev).unwrap();
    }
    let (mean, std) = viewcraft::data::augment::mean_std("cifar10").unwrap();
    let x = data.eval_batch(0..4, mean, std, &dev).unwrap();
    let mut tape = viewcraft::Tape::new();
    let xv = tape.input(x.clone());
    let want = viewcraft::ssl::embed(&mut m, &mut tape, xv).unwrap();
    let want = tape.value(want).to_vec().unwrap();
    let mut tape = viewcraft::Tape::new();
    let b = store.bind(&mut tape, false);
    let xv = tape.input(x);
    let got = net.forward(&mut tape, &mut store, &b, xv, false).unwrap();
    assert_eq!(
        tape.value(got).to_vec().unwrap(),
        want,
        "re-imported backbone gives the same features"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// The library's resume refuses a checkpoint written with another batch size (its position
/// counts batches of that size) or another configuration, naming the file and the field.
#[test]
fn resume_with_another_batch_size_or_config_is_refused() {
    let data = cifar_train(32);
    let dev = Device::Cpu;
    let d = dir("guard");
    let text = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        viewcraft::config::Config::load(None, &sets)
            .unwrap()
            .to_toml()
    };
    let cfg = PretrainConfig {
        checkpoint_dir: Some(d.clone()),
        config_text: text(&["train.batch_size=16"]),
        ..pretrain_config(1, 16, 0.1, 2)
    };
    let mut m = simclr(4, 0, &dev);
    pretrain(&mut m, data.clone(), &cfg, &dev, |_| {}).unwrap();
    let ckpt = d.join("last.safetensors");
    let resume = |batch: usize, config_text: String| {
        let mut m = simclr(4, 0, &dev);
        let c = PretrainConfig {
            resume: Some(ckpt.clone()),
            checkpoint_dir: None,
            batch_size: batch,
            config_text,
            epochs: 2,
            ..cfg.clone()
        };
        pretrain(&mut m, data.clone(), &c, &dev, |_| {}).map(|_| ())
    };
    let e = resume(8, String::new()).unwrap_err().to_string();
    assert!(
        e.contains("last.safetensors") && e.contains("batch_size = 16"),
        "{e}"
    );
    let e = resume(16, text(&["train.batch_size=16", "crop.alpha=0.5"]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("last.safetensors") && e.contains("[crop]"),
        "{e}"
    );
    // The device and the loader's threads may change.
    resume(
        16,
        text(&["train.batch_size=16", "train.device=cpu", "data.workers=1"]),
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&d);
}

/// Atomic writes sync the file and its directory (the rename must survive a power loss, or
/// an "atomic" checkpoint can come back empty), leave no temporary file, and replace the
/// old content whole.
#[test]
fn atomic_writes_sync_the_file_and_its_directory() {
    use viewcraft::train::atomic::{copy_atomic, syncs_on_this_thread, write_atomic};
    let d = dir("atomic");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("a.json");
    let before = syncs_on_this_thread();
    write_atomic(&p, b"first").unwrap();
    write_atomic(&p, b"second, longer").unwrap();
    let q = d.join("b.json");
    copy_atomic(&p, &q).unwrap();
    let syncs = syncs_on_this_thread() - before;
    if cfg!(unix) {
        assert_eq!(syncs, 6, "file + directory sync for each of three writes");
    }
    assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
    assert_eq!(std::fs::read(&q).unwrap(), b"second, longer");
    let names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    // A destination in a missing directory is an error naming it, not a panic.
    let e = write_atomic(&d.join("missing/c.json"), b"x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing/c.json"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
