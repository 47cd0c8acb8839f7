//! The linear probe (SPEC A.6, DDP_linear.py): the pre-trained backbone frozen and in eval
//! mode (BN uses its running statistics), a new `fc` = Linear(D, classes) with weights
//! N(0, 0.01) and bias 0, SGD with momentum and MultiStep decay (×0.1 for every milestone
//! strictly below the 1-based epoch), training views RandomResizedCrop(scale) + horizontal
//! flip + normalisation, test images normalisation only. Test top-1 is measured after every
//! epoch; both the best and the last epoch are reported (the reference reports the best,
//! which is model selection on the test set).
//!
//! `feature_norm = "standardize"` (the default; `none` is the paper's protocol) puts a fixed
//! per-dimension affine map in front of `fc`: the mean and std of the training split's
//! un-augmented eval-mode features, estimated once before epoch 1 and applied unchanged to
//! every training view and to the test features. It folds into `fc` (W' = W·diag(1/σ),
//! b' = b − W'μ), so the probe is still exactly a linear classifier on the backbone's
//! features; unlike a batch-statistics BN it is deterministic and the same at train and test
//! time; and it makes SGD's step size independent of the feature scale (raw pooled features
//! of a briefly trained backbone have norms ~30, on which SGD at lr 1 diverges).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::autograd::Tape;
use crate::config::LinearCfg;
use crate::crop::sampler::RrcParams;
use crate::data::augment::{hflip, normalize, resized_crop, Rgb};
use crate::data::loader::mix;
use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::eval::knn::{backbone_features, backbone_features_of};
use crate::nn::resnet::ResNet;
use crate::nn::{Linear, ParamStore};
use crate::optim::{momentum_buffers, sgd_store};
use crate::tensor::{Device, Tensor};

#[derive(Clone, Debug, Serialize)]
pub struct LinearEpoch {
    pub epoch: usize,
    pub lr: f64,
    /// Mean cross-entropy of the epoch's mini-batches (before each step).
    pub loss: f64,
    /// Top-1 of the epoch's mini-batches (before each step).
    pub train_top1: f64,
    pub test_top1: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LinearResult {
    pub best_top1: f64,
    pub best_epoch: usize,
    pub last_top1: f64,
    /// The last epoch's training loss and top-1 ([`LinearEpoch::loss`], `train_top1`).
    pub train_loss: f64,
    pub train_top1: f64,
    /// The epoch losses look diverging ([`divergence`]); a warning was printed.
    pub diverging: bool,
    /// `none` | `standardize` (`linear.feature_norm`).
    pub feature_norm: String,
    /// The inputs were high-passed (`linear.high_pass`: a run that masked with `hp`).
    pub high_pass: bool,
    pub epochs: usize,
    pub train_images: usize,
    pub test_images: usize,
    pub feature_dim: usize,
    pub history: Vec<LinearEpoch>,
}

impl LinearResult {
    /// Every field but the per-epoch history, as a JSON object: the `linear` event of
    /// `metrics.jsonl` and the head of `linear_eval.json`.
    pub fn summary(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        m.remove("history");
        m
    }
}

/// MultiStep: lr · 0.1^(number of milestones strictly below `epoch`).
pub fn multistep_lr(lr: f64, epoch: usize, milestones: &[usize]) -> f64 {
    lr * 0.1f64.powi(milestones.iter().filter(|&&m| m < epoch).count() as i32)
}

/// The fixed per-dimension map of `feature_norm = "standardize"`: x ↦ (x − mean) / std.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Mean and population std of every dimension of `feats` [N, D], accumulated in f64. A
    /// dimension whose std is at most 1e-6 × the largest std (constant on these images, e.g.
    /// a channel the ReLU never lets through) gets std 1 instead: it carries nothing to
    /// standardise, and dividing by a floor that small would blow up the images of another
    /// split on which the channel does fire. The one estimate both the probe and `embed
    /// --standardize` use.
    pub fn fit(feats: &[f32], dim: usize) -> Standardizer {
        let n = feats.len().checked_div(dim).unwrap_or(0);
        let mut sum = vec![0f64; dim];
        for row in feats.chunks_exact(dim.max(1)).take(n) {
            sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n.max(1) as f64).collect();
        let mut sq = vec![0f64; dim];
        for row in feats.chunks_exact(dim.max(1)).take(n) {
            for ((q, &v), m) in sq.iter_mut().zip(row).zip(&mean) {
                *q += (v as f64 - m).powi(2);
            }
        }
        let std: Vec<f64> = sq.iter().map(|q| (q / n.max(1) as f64).sqrt()).collect();
        let floor = 1e-6 * std.iter().copied().fold(0.0, f64::max);
        Standardizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: std
                .iter()
                .map(|&s| if s > floor { s as f32 } else { 1.0 })
                .collect(),
        }
    }

    /// Map every row of `feats` [N, D] in place.
    pub fn apply(&self, feats: &mut [f32]) {
        for row in feats.chunks_exact_mut(self.mean.len().max(1)) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
    }
}

/// Why a probe's epoch losses (`losses[e]` is epoch e+1) look diverging, or `None`. Any of:
/// a non-finite loss; a final loss more than 0.05 above ln(classes), the loss of the all-zero
/// classifier (the optimum is below it, and on standardised features `fc` ~ N(0, 0.01)
/// starts within ~0.01 of it, so a probe that ends above it has not converged); or a rising
/// tail: the mean of the last min(3, n−1) epochs above 1.1 × the best earlier epoch + 0.01
/// (the margins absorb the epoch-to-epoch noise of augmented views).
pub fn divergence(losses: &[f64], classes: usize) -> Option<String> {
    let n = losses.len();
    if let Some(e) = losses.iter().position(|l| !l.is_finite()) {
        return Some(format!("epoch {} loss is {}", e + 1, losses[e]));
    }
    let last = *losses.last()?;
    let chance = (classes.max(2) as f64).ln();
    if last > chance + 0.05 {
        return Some(format!(
            "final loss {last:.3} (epoch {n}) is above the chance level ln {classes} = {chance:.3} (epoch 1: {:.3})",
            losses[0]
        ));
    }
    let w = n.saturating_sub(1).min(3);
    if w == 0 {
        return None;
    }
    let (best_i, best) = losses[..n - w]
        .iter()
        .copied()
        .enumerate()
        .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
    let tail = losses[n - w..].iter().sum::<f64>() / w as f64;
    (tail > 1.1 * best + 0.01).then(|| {
        format!(
            "mean loss of epochs {}-{n} is {tail:.3}, up from {best:.3} at epoch {}",
            n - w + 1,
            best_i + 1
        )
    })
}

/// The fixed features a probe trains and is tested on.
pub struct ProbeFeatures<'a> {
    /// Un-augmented eval-mode training features [N, D]: the standardisation statistics, and
    /// the training inputs of every epoch unless per-epoch views are given.
    pub train: &'a [f32],
    pub train_labels: &'a [u32],
    /// Test features [M, D].
    pub test: &'a [f32],
    pub test_labels: &'a [u32],
    pub dim: usize,
    pub classes: usize,
}

/// Train and evaluate the probe on backbone features: `feature_norm` per `cfg`, `fc`
/// initialised N(0, 0.01) / 0 from `cfg.seed`, then `cfg.epochs` epochs of shuffled
/// mini-batch SGD (weight decay on weight and bias, as everywhere in this codebase). The
/// training inputs of epoch e are `views(e)` [N, D] (raw features of augmented images) when
/// given, else `f.train`. `on` sees every epoch; a diverging probe prints one `warning:` line.
pub fn train_probe_on_features(
    f: &ProbeFeatures,
    mut views: Option<&mut dyn FnMut(usize) -> Result<Vec<f32>>>,
    cfg: &LinearCfg,
    device: &Device,
    mut on: impl FnMut(&LinearEpoch),
) -> Result<LinearResult> {
    let (dim, classes, n) = (f.dim, f.classes, f.train_labels.len());
    let shapes = format!(
        "train {} values for {n} labels, test {} values for {} labels, D = {dim}",
        f.train.len(),
        f.test.len(),
        f.test_labels.len()
    );
    if f.train.len() != n * dim || f.test.len() != f.test_labels.len() * dim {
        return Err(Error::shape("linear probe", shapes));
    }
    if let Some(&l) = f
        .train_labels
        .iter()
        .chain(f.test_labels)
        .find(|&&l| l as usize >= classes)
    {
        return Err(Error::shape(
            "linear probe",
            format!("label {l} with {classes} classes"),
        ));
    }
    let norm = match cfg.feature_norm.as_str() {
        "none" => None,
        "standardize" => Some(Standardizer::fit(f.train, dim)),
        other => {
            return Err(Error::Config {
                field: "linear.feature_norm".into(),
                msg: format!("`{other}` is not one of none, standardize"),
            })
        }
    };
    let normed = |mut x: Vec<f32>| {
        if let Some(s) = &norm {
            s.apply(&mut x);
        }
        x
    };
    let test_feats = normed(f.test.to_vec());
    let fixed_train = if views.is_none() {
        normed(f.train.to_vec())
    } else {
        Vec::new()
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut store = ParamStore::default();
    let fc = Linear::new(&mut store, "fc", dim, classes, true, &mut rng, device)?;
    store.params[fc.weight].value = Tensor::randn(&[classes, dim], 0.01, &mut rng, device)?;
    if let Some(b) = fc.bias {
        store.params[b].value = Tensor::zeros(&[classes], device)?;
    }
    let mut bufs = momentum_buffers(&store, device)?;
    let mut history = Vec::new();
    for ep in 1..=cfg.epochs {
        let lr = multistep_lr(cfg.lr, ep, &cfg.milestones);
        let augmented;
        let feats: &[f32] = match views.as_mut() {
            None => &fixed_train,
            Some(v) => {
                augmented = normed(v(ep)?);
                if augmented.len() != n * dim {
                    return Err(Error::shape(
                        "linear probe",
                        format!(
                            "epoch {ep} views: {} values, want {n} × {dim}",
                            augmented.len()
                        ),
                    ));
                }
                &augmented
            }
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(mix(
            cfg.seed,
            ep as u64,
            u64::MAX,
            7,
        )));
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for chunk in order.chunks(cfg.batch_size.max(1)) {
            let b = chunk.len();
            let x: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| feats[i * dim..(i + 1) * dim].iter().copied())
                .collect();
            let labels: Vec<f32> = chunk.iter().map(|&i| f.train_labels[i] as f32).collect();
            let mut tape = Tape::new();
            let bound = store.bind(&mut tape, true);
            let xv = tape.input(Tensor::from_vec(x, &[b, dim], device)?);
            let logits = fc.forward(&mut tape, &bound, xv)?;
            let loss = tape.cross_entropy(logits, &Tensor::from_vec(labels, &[b], device)?)?;
            let lv = tape.value(loss).item()? as f64;
            let pred = argmax_rows(&tape.value(logits).to_vec()?, classes);
            correct += chunk
                .iter()
                .zip(&pred)
                .filter(|(&i, &p)| f.train_labels[i] as usize == p)
                .count();
            let grads = tape.backward(loss)?;
            drop(tape);
            sgd_store(
                &mut store,
                &bound,
                &grads,
                &mut bufs,
                |_| (lr as f32, cfg.weight_decay),
                cfg.momentum,
            )?;
            loss_sum += lv * b as f64;
        }
        let test_top1 = accuracy(
            &store,
            &fc,
            &test_feats,
            f.test_labels,
            dim,
            classes,
            device,
        )?;
        let e = LinearEpoch {
            epoch: ep,
            lr,
            loss: loss_sum / n.max(1) as f64,
            train_top1: correct as f64 / n.max(1) as f64,
            test_top1,
        };
        on(&e);
        history.push(e);
    }
    let (best_epoch, best_top1) = history
        .iter()
        .map(|e| (e.epoch, e.test_top1))
        .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
    let losses: Vec<f64> = history.iter().map(|e| e.loss).collect();
    let diverging = match divergence(&losses, classes) {
        Some(why) => {
            let hint = if cfg.feature_norm == "none" {
                "try feature_norm = \"standardize\" or a lower linear.lr"
            } else {
                "try a lower linear.lr"
            };
            eprintln!(
                "warning: the linear probe (feature_norm = \"{}\", lr {}) looks diverging: {why}; {hint}",
                cfg.feature_norm, cfg.lr
            );
            true
        }
        None => false,
    };
    let last = history.last();
    Ok(LinearResult {
        best_top1,
        best_epoch,
        last_top1: last.map_or(0.0, |e| e.test_top1),
        train_loss: last.map_or(f64::NAN, |e| e.loss),
        train_top1: last.map_or(0.0, |e| e.train_top1),
        diverging,
        feature_norm: cfg.feature_norm.clone(),
        high_pass: cfg.high_pass == Some(true),
        epochs: cfg.epochs,
        train_images: n,
        test_images: f.test_labels.len(),
        feature_dim: dim,
        history,
    })
}

/// One augmented training view of image `i` in `epoch`: RRC + flip + normalise.
fn linear_view(
    set: &ImageSet,
    i: usize,
    rrc: RrcParams,
    seed: u64,
    epoch: u64,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(mix(seed, epoch, i as u64, 7));
    let img = Rgb::new(set.height, set.width, set.image(i).to_vec());
    let crop = rrc.sample(&mut rng, set.height, set.width);
    let mut v = resized_crop(&img, crop, set.height, set.width);
    if rng.random_bool(0.5) {
        v = hflip(&v);
    }
    normalize(&v, mean, std)
}

/// Train and evaluate the probe of a frozen backbone on `train` / `test` (eval-mode pooled
/// features; augmented training views each epoch when `cfg.augment`); `on` sees every epoch.
#[allow(clippy::too_many_arguments)]
pub fn linear_probe(
    net: &ResNet,
    backbone: &mut ParamStore,
    train: &ImageSet,
    test: &ImageSet,
    mean: [f32; 3],
    std: [f32; 3],
    cfg: &LinearCfg,
    device: &Device,
    on: impl FnMut(&LinearEpoch),
) -> Result<LinearResult> {
    let hp = cfg.high_pass == Some(true);
    let (test_feats, dim) = backbone_features(net, backbone, test, (mean, std, hp), device)?;
    // The un-augmented training features: the inputs on fixed features, the standardisation
    // statistics either way (one extra pass over the split with augmented views).
    let (train_feats, _) = backbone_features(net, backbone, train, (mean, std, hp), device)?;
    let rrc = RrcParams {
        scale: (cfg.scale[0], cfg.scale[1]),
        ..RrcParams::default()
    };
    rrc.validate()?;
    let (h, w) = (train.height, train.width);
    let mut views = |ep: usize| -> Result<Vec<f32>> {
        Ok(backbone_features_of(net, backbone, train.len(), |r| {
            let n = r.len();
            let x: Vec<f32> = r
                .into_par_iter()
                .flat_map_iter(|i| {
                    let v = linear_view(train, i, rrc, cfg.seed, ep as u64, mean, std);
                    if hp {
                        crate::data::filters::high_pass(&v, (3, h, w)).unwrap_or(v)
                    } else {
                        v
                    }
                })
                .collect();
            Tensor::from_vec(x, &[n, 3, h, w], device)
        })?
        .0)
    };
    let f = ProbeFeatures {
        train: &train_feats,
        train_labels: &train.labels,
        test: &test_feats,
        test_labels: &test.labels,
        dim,
        classes: train.classes.len().max(test.classes.len()),
    };
    train_probe_on_features(
        &f,
        cfg.augment
            .then_some(&mut views as &mut dyn FnMut(usize) -> Result<Vec<f32>>),
        cfg,
        device,
        on,
    )
}

fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|r| {
            (0..r.len())
                .max_by(|&a, &b| r[a].total_cmp(&r[b]))
                .unwrap_or(0)
        })
        .collect()
}

fn accuracy(
    store: &ParamStore,
    fc: &Linear,
    feats: &[f32],
    labels: &[u32],
    dim: usize,
    classes: usize,
    device: &Device,
) -> Result<f64> {
    let mut correct = 0;
    for start in (0..labels.len()).step_by(1024) {
        let end = (start + 1024).min(labels.len());
        let mut tape = Tape::new();
        let bound = store.bind(&mut tape, false);
        let x = tape.input(Tensor::from_slice(
            &feats[start * dim..end * dim],
            &[end - start, dim],
            device,
        )?);
        let logits = tape.no_grad(|t| fc.forward(t, &bound, x))?;
        let pred = argmax_rows(&tape.value(logits).to_vec()?, classes);
        correct += pred
            .iter()
            .zip(&labels[start..end])
            .filter(|(&p, &l)| p == l as usize)
            .count();
    }
    Ok(correct as f64 / labels.len().max(1) as f64)
}
