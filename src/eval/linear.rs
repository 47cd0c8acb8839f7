//! The linear probe (SPEC A.6, DDP_linear.py): the pre-trained backbone frozen and in eval
//! mode (BN uses its running statistics), a new `fc` = Linear(D, classes) with weights
//! N(0, 0.01) and bias 0, SGD with momentum and MultiStep decay (×0.1 for every milestone
//! strictly below the 1-based epoch), training views RandomResizedCrop(scale) + horizontal
//! flip + normalisation, test images normalisation only. Test top-1 is measured after every
//! epoch; both the best and the last epoch are reported (the reference reports the best,
//! which is model selection on the test set).

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
use crate::error::Result;
use crate::eval::knn::{backbone_features, backbone_features_of};
use crate::nn::resnet::ResNet;
use crate::nn::{Linear, ParamStore};
use crate::optim::{momentum_buffers, sgd_store};
use crate::tensor::{Device, Tensor};

#[derive(Clone, Debug, Serialize)]
pub struct LinearEpoch {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub train_top1: f64,
    pub test_top1: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LinearResult {
    pub best_top1: f64,
    pub best_epoch: usize,
    pub last_top1: f64,
    pub epochs: usize,
    pub train_images: usize,
    pub test_images: usize,
    pub feature_dim: usize,
    pub history: Vec<LinearEpoch>,
}

/// MultiStep: lr · 0.1^(number of milestones strictly below `epoch`).
pub fn multistep_lr(lr: f64, epoch: usize, milestones: &[usize]) -> f64 {
    lr * 0.1f64.powi(milestones.iter().filter(|&&m| m < epoch).count() as i32)
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

/// Train and evaluate the probe; `on` sees every epoch.
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
    mut on: impl FnMut(&LinearEpoch),
) -> Result<LinearResult> {
    let classes = train.classes.len().max(test.classes.len());
    let (test_feats, dim) = backbone_features(net, backbone, test, mean, std, device)?;
    let fixed_train = if cfg.augment {
        None
    } else {
        Some(backbone_features(net, backbone, train, mean, std, device)?.0)
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut store = ParamStore::default();
    let fc = Linear::new(&mut store, "fc", dim, classes, true, &mut rng, device)?;
    store.params[fc.weight].value = Tensor::randn(&[classes, dim], 0.01, &mut rng, device)?;
    if let Some(b) = fc.bias {
        store.params[b].value = Tensor::zeros(&[classes], device)?;
    }
    let mut bufs = momentum_buffers(&store, device)?;
    let rrc = RrcParams {
        scale: (cfg.scale[0], cfg.scale[1]),
        ..RrcParams::default()
    };
    rrc.validate()?;
    let (h, w) = (train.height, train.width);
    let mut history = Vec::new();
    for ep in 1..=cfg.epochs {
        let lr = multistep_lr(cfg.lr, ep, &cfg.milestones);
        let feats = match &fixed_train {
            Some(f) => f.clone(),
            None => {
                backbone_features_of(net, backbone, train.len(), |r| {
                    let n = r.len();
                    let x: Vec<f32> = r
                        .into_par_iter()
                        .flat_map_iter(|i| {
                            linear_view(train, i, rrc, cfg.seed, ep as u64, mean, std)
                        })
                        .collect();
                    Tensor::from_vec(x, &[n, 3, h, w], device)
                })?
                .0
            }
        };
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(mix(
            cfg.seed,
            ep as u64,
            u64::MAX,
            7,
        )));
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for chunk in order.chunks(cfg.batch_size.max(1)) {
            let n = chunk.len();
            let x: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| feats[i * dim..(i + 1) * dim].iter().copied())
                .collect();
            let labels: Vec<f32> = chunk.iter().map(|&i| train.labels[i] as f32).collect();
            let mut tape = Tape::new();
            let bound = store.bind(&mut tape, true);
            let xv = tape.input(Tensor::from_vec(x, &[n, dim], device)?);
            let logits = fc.forward(&mut tape, &bound, xv)?;
            let loss = tape.cross_entropy(logits, &Tensor::from_vec(labels, &[n], device)?)?;
            let lv = tape.value(loss).item()? as f64;
            let pred = argmax_rows(&tape.value(logits).to_vec()?, classes);
            correct += chunk
                .iter()
                .zip(&pred)
                .filter(|(&i, &p)| train.labels[i] as usize == p)
                .count();
            let grads = tape.backward(loss)?;
            sgd_store(
                &mut store,
                &bound,
                &grads,
                &mut bufs,
                |_| (lr as f32, cfg.weight_decay),
                cfg.momentum,
            )?;
            loss_sum += lv * n as f64;
        }
        let test_top1 = accuracy(&store, &fc, &test_feats, &test.labels, dim, classes, device)?;
        let e = LinearEpoch {
            epoch: ep,
            lr,
            loss: loss_sum / train.len().max(1) as f64,
            train_top1: correct as f64 / train.len().max(1) as f64,
            test_top1,
        };
        on(&e);
        history.push(e);
    }
    let (best_epoch, best_top1) = history
        .iter()
        .map(|e| (e.epoch, e.test_top1))
        .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
    Ok(LinearResult {
        best_top1,
        best_epoch,
        last_top1: history.last().map_or(0.0, |e| e.test_top1),
        epochs: cfg.epochs,
        train_images: train.len(),
        test_images: test.len(),
        feature_dim: dim,
        history,
    })
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
