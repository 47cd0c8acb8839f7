//! Commands that read a checkpoint: `embed`, `knn`, `linear-eval`. The dataset defaults to
//! the one the checkpoint was trained on (its resolved config is in the metadata), else the
//! shipped CIFAR-10 subset; `--data` / `--dataset` override it.

use std::path::{Path, PathBuf};

use crate::config::{Config, DataCfg, LinearEvalConfig};
use crate::data::{normalization, Split};
use crate::error::{Error, Result};
use crate::eval::knn::{backbone_features, knn_accuracy};
use crate::eval::linear::Standardizer;
use crate::tensor::Device;
use crate::train::checkpoint::{load_backbone, metadata, write_features};

/// The run configuration stored in a checkpoint, if it has a readable one.
pub fn checkpoint_config(ckpt: &Path) -> Result<Option<Config>> {
    let meta = metadata(ckpt)?;
    Ok(meta
        .get("config")
        .and_then(|t| Config::from_toml(t, &ckpt.display().to_string()).ok()))
}

/// The data section for a checkpoint: its run's, with `data` / `dataset` overriding.
pub fn checkpoint_data(ckpt: &Path, data: Option<&Path>, dataset: Option<&str>) -> Result<DataCfg> {
    let mut d = checkpoint_config(ckpt)?.map(|c| c.data).unwrap_or_default();
    if let Some(name) = dataset {
        d.dataset = name.into();
    }
    if let Some(root) = data {
        d.root = root.display().to_string();
    }
    Ok(d)
}

/// `viewcraft embed`: eval-mode pooled features of one split. `standardize` = `Some(subset)`
/// maps them as the probe's `feature_norm = "standardize"` does, with the statistics of the
/// first `subset` training images (`None`: the run's `data.subset`; 0 = all), and writes
/// those statistics too.
pub fn embed(
    ckpt: &Path,
    data: Option<&Path>,
    dataset: Option<&str>,
    split: &str,
    out: &Path,
    standardize: Option<Option<usize>>,
    device: &Device,
) -> Result<()> {
    let d = checkpoint_data(ckpt, data, dataset)?;
    let split = if split == "train" {
        Split::Train
    } else {
        Split::Test
    };
    let set = crate::data::open(&d.dataset, &d.root_path(), split, 0, d.image_size)?;
    let (mean, std) = normalization(&d.dataset);
    let (net, mut store) = load_backbone(ckpt, device)?;
    let input = (mean, std, run_high_pass(ckpt)?);
    let (mut feats, dim) = backbone_features(&net, &mut store, &set, input, device)?;
    let Some(subset) = standardize else {
        write_features(out, &feats, dim, &set.labels, &[])?;
        println!(
            "wrote features [{}, {dim}] and labels to {}",
            set.len(),
            out.display()
        );
        return Ok(());
    };
    let subset = subset.unwrap_or(d.subset);
    let stats_set = crate::data::open(
        &d.dataset,
        &d.root_path(),
        Split::Train,
        subset,
        d.image_size,
    )?;
    let stats = if split == Split::Train && stats_set.len() == set.len() {
        Standardizer::fit(&feats, dim)
    } else {
        Standardizer::fit(
            &backbone_features(&net, &mut store, &stats_set, input, device)?.0,
            dim,
        )
    };
    stats.apply(&mut feats);
    write_features(
        out,
        &feats,
        dim,
        &set.labels,
        &[("feature_mean", &stats.mean), ("feature_std", &stats.std)],
    )?;
    println!(
        "wrote standardised features [{}, {dim}] (statistics of {} training images), labels, feature_mean and feature_std to {}",
        set.len(),
        stats_set.len(),
        out.display()
    );
    Ok(())
}

pub fn knn(
    ckpt: &Path,
    data: Option<&Path>,
    dataset: Option<&str>,
    k: usize,
    temperature: f32,
    out: Option<&Path>,
    device: &Device,
) -> Result<()> {
    if k == 0 {
        return Err(Error::Config {
            field: "--k".into(),
            msg: "must be at least 1".into(),
        });
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::Config {
            field: "--temperature".into(),
            msg: format!("{temperature} must be > 0"),
        });
    }
    let d = checkpoint_data(ckpt, data, dataset)?;
    let root = d.root_path();
    let train = crate::data::open(&d.dataset, &root, Split::Train, 0, d.image_size)?;
    let test = crate::data::open(&d.dataset, &root, Split::Test, 0, d.image_size)?;
    let (mean, std) = normalization(&d.dataset);
    let (net, mut store) = load_backbone(ckpt, device)?;
    let input = (mean, std, run_high_pass(ckpt)?);
    let (ftr, dim) = backbone_features(&net, &mut store, &train, input, device)?;
    let (fte, _) = backbone_features(&net, &mut store, &test, input, device)?;
    let classes = train.classes.len().max(test.classes.len());
    let acc = knn_accuracy(
        ftr,
        &train.labels,
        fte,
        &test.labels,
        dim,
        classes,
        k,
        temperature,
    );
    let v = serde_json::json!({
        "checkpoint": ckpt.display().to_string(),
        "dataset": d.dataset,
        "knn_top1": acc,
        "k": k,
        "temperature": temperature,
        "train_images": train.len(),
        "test_images": test.len(),
        "device": device.name(),
    });
    println!("{v}");
    if let Some(out) = out {
        crate::train::atomic::write_atomic(out, format!("{v:#}\n").as_bytes())?;
    }
    Ok(())
}

/// Where a checkpoint's evaluation results go by default: its run directory (the parent of
/// `checkpoints/`), else the checkpoint's folder.
pub fn default_result_path(ckpt: &Path, name: &str) -> PathBuf {
    let dir = ckpt.parent().unwrap_or(Path::new("."));
    let dir = if dir.file_name().is_some_and(|n| n == "checkpoints") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    dir.join(name)
}

/// Whether the checkpoint's run high-passed its inputs (masking with `hp`; its
/// `linear.high_pass`): evaluation then does the same.
pub fn run_high_pass(ckpt: &Path) -> Result<bool> {
    Ok(checkpoint_config(ckpt)?
        .is_some_and(|c| c.linear.high_pass.unwrap_or(c.mask.strategy == "hp")))
}

pub fn linear_eval(
    ckpt: &Path,
    config: Option<&Path>,
    sets: &[String],
    out: Option<&Path>,
    device_flag: Option<&str>,
) -> Result<()> {
    let base = checkpoint_config(ckpt)?.map(|c| c.data);
    let mut cfg = LinearEvalConfig::load(config, sets, base.as_ref())?;
    if cfg.linear.high_pass.is_none() {
        cfg.linear.high_pass = Some(run_high_pass(ckpt)?);
    }
    let device = super::select_device_or(device_flag, &cfg.train.device)?;
    let root = cfg.data.root_path();
    let train = crate::data::open(
        &cfg.data.dataset,
        &root,
        Split::Train,
        cfg.data.subset,
        cfg.data.image_size,
    )?;
    let test = crate::data::open(
        &cfg.data.dataset,
        &root,
        Split::Test,
        0,
        cfg.data.image_size,
    )?;
    let (mean, std) = normalization(&cfg.data.dataset);
    let (net, mut store) = load_backbone(ckpt, &device)?;
    eprintln!(
        "linear probe of {}: {} {} train / {} test images, {} epochs, lr {}, milestones {:?}, feature_norm {}, high_pass {}, on {}",
        ckpt.display(),
        train.len(),
        cfg.data.dataset,
        test.len(),
        cfg.linear.epochs,
        cfg.linear.lr,
        cfg.linear.milestones,
        cfg.linear.feature_norm,
        cfg.linear.high_pass == Some(true),
        device.name()
    );
    let r = crate::eval::linear::linear_probe(
        &net,
        &mut store,
        &train,
        &test,
        mean,
        std,
        &cfg.linear,
        &device,
        |e| {
            eprintln!(
                "  epoch {:3}  lr {:.4}  loss {:.4}  train {:.2}%  test {:.2}%",
                e.epoch,
                e.lr,
                e.loss,
                100.0 * e.train_top1,
                100.0 * e.test_top1
            )
        },
    )?;
    let mut m = r.summary();
    m.insert("checkpoint".into(), ckpt.display().to_string().into());
    m.insert("dataset".into(), cfg.data.dataset.clone().into());
    m.insert("device".into(), device.name().into());
    m.insert(
        "config".into(),
        serde_json::to_value(&cfg).unwrap_or_default(),
    );
    m.insert(
        "history".into(),
        serde_json::to_value(&r.history).unwrap_or_default(),
    );
    let v = serde_json::Value::Object(m);
    let path = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_result_path(ckpt, "linear_eval.json"));
    crate::train::atomic::write_atomic(&path, format!("{v:#}\n").as_bytes())?;
    let mut short = v.clone();
    if let Some(o) = short.as_object_mut() {
        o.remove("history");
        o.remove("config");
        o.insert("results".into(), path.display().to_string().into());
    }
    println!("{short}");
    Ok(())
}
