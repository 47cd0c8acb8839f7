//! The pre-training loop: epochs with a per-epoch cosine learning rate, the method's views of
//! every image from the loader (RandomResizedCrop during the warm-up, then the crop kind's
//! boxes or object proposals), the method's loss, backward, SGD on every trainable parameter
//! (weight decay on all, as the reference), the method's after-step hook, and box / proposal
//! updates on schedule. On a GPU a step is recorded and submitted as one command buffer; the
//! loss is read back only every `log_interval` steps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

pub mod atomic;
pub mod checkpoint;
pub mod masking;
pub mod parallel;
pub mod run_dir;

use crate::autograd::Tape;
use crate::crop::object::ObjectPair;
use crate::crop::sampler::{BoxF, RrcParams, WHOLE_IMAGE};
use crate::crop::schedule::{update_boxes, update_proposals, BoxPass, BoxStats, Schedule};
use crate::crop::CropKind;
use crate::data::augment::Jitter;
use crate::data::loader::{
    epoch_shard, Augment, CropMode, CropSource, ViewConfig, ViewMask, ViewSpec,
};
use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::optim::{momentum_buffers, update_store, warmup_cosine_lr};
use crate::ssl::Method;
use crate::tensor::{Device, Tensor};
use checkpoint::Position;

#[derive(Clone, Debug)]
pub struct PretrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Cosine floor as a fraction of lr.
    pub decay_rate: f64,
    /// Linear LR warm-up epochs before the cosine (0: none, as the reference).
    pub lr_warmup_epochs: usize,
    /// LARS instead of SGD for parameters with more than one dimension.
    pub lars: bool,
    /// No weight decay on 1-D parameters (BN weights / biases, biases); the reference decays
    /// every parameter.
    pub exclude_bn_bias_wd: bool,
    pub seed: u64,
    pub workers: usize,
    pub log_interval: usize,
    /// How box- and object-sourced views are cropped after the warm-up.
    pub crop: CropKind,
    /// The views of every image (empty: the crop kind's defaults, [`default_views`]).
    pub views: Vec<ViewSpec>,
    /// Saliency-guided masking (None: off).
    pub mask: Option<masking::MaskTraining>,
    pub alpha: f64,
    pub box_thresh: f32,
    pub warmup_epochs: usize,
    pub loc_interval: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Gaussian blur in the views (ImageNet recipe).
    pub blur: bool,
    /// Every image's box before the first update: the whole image, or SimCCrop's fixed
    /// centre box (0.25, 0.25, 0.75, 0.75) with `warmup_epochs = 0` and
    /// `loc_interval > epochs` (never updated).
    pub init_box: BoxF,
    /// Where `epoch_<e>.safetensors` and `last.safetensors` go (none: no checkpoints).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Save every this many epochs (and always after the last one).
    pub save_interval: usize,
    /// Continue from this checkpoint (epoch, step, weights, buffers, momentum, boxes).
    pub resume: Option<std::path::PathBuf>,
    /// RandomResizedCrop scale / ratio (also ContrastiveCrop's crop sizes).
    pub rrc: RrcParams,
    /// The run's resolved configuration, stored in every checkpoint's metadata.
    pub config_text: String,
    /// The kNN monitor, if any.
    pub knn: Option<KnnMonitor>,
    /// Set (e.g. by Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Behave as if `stop` were set after this global step (tests of the interruption path;
    /// the CLI reads it from VIEWCRAFT_STOP_AT_STEP).
    pub stop_at_step: Option<usize>,
}

/// The views a run makes when its config lists none: two `box` views at the image size with
/// the run's RRC (every kind but objectcrop: today's two views); for objectcrop the pair's
/// two views (object + dilated, or scene + the whole object region). With masking, the first
/// view is the masked query and `hard_negatives` masked copies of the second follow.
pub fn default_views(
    kind: &CropKind,
    size: usize,
    rrc: RrcParams,
    mask: Option<&masking::MaskTraining>,
) -> Vec<ViewSpec> {
    let view = |source| ViewSpec {
        source,
        size,
        rrc,
        augment: Augment::Ssl,
        mask: ViewMask::None,
    };
    let mut views = match kind {
        CropKind::ObjectCrop(o) if o.pair == ObjectPair::Dilate => {
            vec![view(CropSource::Object), view(CropSource::Dilated)]
        }
        CropKind::ObjectCrop(_) => vec![view(CropSource::Scene), view(CropSource::ObjectWhole)],
        _ => vec![view(CropSource::Box); 2],
    };
    if let Some(m) = mask {
        views[0].mask = ViewMask::Pos;
        let neg = ViewSpec {
            mask: ViewMask::Neg,
            ..views[1]
        };
        views.extend(std::iter::repeat_n(neg, m.hard_negatives));
    }
    views
}

/// `specs`, or the run's default views when the config lists none ([`default_views`]).
pub fn views_or_default(
    specs: Vec<ViewSpec>,
    kind: &CropKind,
    size: usize,
    rrc: RrcParams,
    mask: Option<&masking::MaskTraining>,
) -> Vec<ViewSpec> {
    if specs.is_empty() {
        default_views(kind, size, rrc, mask)
    } else {
        specs
    }
}

/// This rank's share of a global batch of `batch` images (an equal share per rank).
pub fn local_batch(batch: usize) -> Result<usize> {
    let ranks = crate::dist::place().size;
    if !batch.is_multiple_of(ranks) {
        return Err(Error::Config {
            field: "train.batch_size".into(),
            msg: format!(
                "{batch} is not a multiple of the {ranks} ranks (each takes an equal share)"
            ),
        });
    }
    Ok(batch / ranks)
}

/// Weighted kNN of the online backbone's features (eval mode): the labelled `train` images
/// vote for the `test` images, every `interval` epochs and after the last.
#[derive(Clone, Debug)]
pub struct KnnMonitor {
    pub interval: usize,
    pub k: usize,
    pub temperature: f32,
    pub train: Arc<ImageSet>,
    pub test: Arc<ImageSet>,
    /// High-pass the inputs (a run masking with `hp`).
    pub high_pass: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Event {
    Step {
        epoch: usize,
        step: usize,
        loss: f32,
        lr: f64,
        /// Hard-negative logits that entered the step's loss (runs with masking).
        #[serde(skip_serializing_if = "Option::is_none")]
        hard_negatives: Option<usize>,
        /// CLSA's Σ DDM (the part of `loss` it weighs by α).
        #[serde(skip_serializing_if = "Option::is_none")]
        loss_ddm: Option<f32>,
    },
    Epoch {
        epoch: usize,
        images_per_s: f64,
        crop: &'static str,
    },
    Boxes(BoxStats),
    Checkpoint {
        epoch: usize,
        path: String,
    },
    Knn {
        epoch: usize,
        knn_top1: f64,
        k: usize,
    },
    /// The end of a data-parallel run: every rank's parameters compared bit for bit.
    Ranks {
        ranks: usize,
        parameters_identical: bool,
    },
}

impl PretrainConfig {
    pub fn validate(&self, n_images: usize) -> Result<()> {
        let bad = |f: &str, m: String| {
            Err(Error::Config {
                field: f.into(),
                msg: m,
            })
        };
        if self.epochs == 0 {
            return bad("train.epochs", "must be at least 1".into());
        }
        if self.batch_size < 2 || self.batch_size > n_images {
            return bad(
                "train.batch_size",
                format!(
                    "{} must be in 2..={n_images} (the dataset size)",
                    self.batch_size
                ),
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("train.lr", format!("{} must be > 0", self.lr));
        }
        if !(self.box_thresh > 0.0 && self.box_thresh < 1.0) {
            return bad(
                "crop.box_thresh",
                format!("{} must be in (0, 1)", self.box_thresh),
            );
        }
        if self.alpha <= 0.0 {
            return bad("crop.alpha", format!("{} must be > 0", self.alpha));
        }
        let objects = matches!(self.crop, CropKind::ObjectCrop(_));
        for (v, spec) in self.views.iter().enumerate() {
            spec.rrc.validate().map_err(|e| Error::Config {
                field: format!("views[{v}]"),
                msg: e.to_string(),
            })?;
            if spec.size == 0 {
                return bad(&format!("views[{v}].size"), "must be at least 1".into());
            }
            if let Err(m) = spec.source.fits_kind(objects) {
                return bad(&format!("views[{v}].crop"), m.into());
            }
        }
        if let CropKind::ObjectCrop(o) = &self.crop {
            if o.max_proposals == 0 {
                return bad("crop.max_proposals", "must be at least 1".into());
            }
            if !(o.crop.dilation >= 0.0 && o.crop.dilation.is_finite()) {
                return bad("crop.dilation", format!("{} must be ≥ 0", o.crop.dilation));
            }
        }
        if let CropKind::SemanticCrop { sigma: Some(s) } = self.crop {
            if !(s > 0.0 && s.is_finite()) {
                return bad("crop.suppress_sigma", format!("{s} must be > 0"));
            }
        }
        Ok(())
    }
}

/// The largest tensors of a step against the adapter's storage-buffer limit, before any step:
/// the stem's activations (SimCLR forwards both views of this rank's images as one batch) and
/// the similarity matrix of a method with a queue. A tensor over the limit is an error naming
/// it, its size, the limit and what to lower.
pub fn check_device_limits(
    method: &dyn Method,
    specs: &[ViewSpec],
    batch: usize,
    g: &crate::gpu::Gpu,
) -> Result<()> {
    let limit = g
        .limits
        .max_storage_buffer_binding_size
        .min(g.limits.max_buffer_size);
    let local = local_batch(batch)?;
    let net = &method.backbone().cfg;
    let size = specs.iter().map(|v| v.size).max().unwrap_or(0);
    let side = match net.stem {
        crate::nn::resnet::Stem::Cifar => size,
        crate::nn::resnet::Stem::Imagenet => size.div_ceil(2),
    };
    let images = if method.name() == "simclr" {
        2 * local
    } else {
        local
    };
    let mut tensors = vec![(
        "the stem's activations",
        images * net.width * side * side,
        "train.batch_size, model.width or the image size",
    )];
    if let Some(q) = method.store().get("queue") {
        let k = q.value.shape()[0];
        tensors.push((
            "the similarity matrix of the queries against the keys and the queue",
            local * (batch + k + (specs.len().saturating_sub(2)) * local),
            "train.batch_size or method.queue",
        ));
    }
    for (what, values, lower) in tensors {
        let bytes = values as u64 * 4;
        if bytes > limit {
            return Err(Error::Config {
                field: "train.batch_size".into(),
                msg: format!(
                    "{what} take {} MiB, more than {}'s storage-buffer limit of {} MiB: lower {lower} (or use the CPU path)",
                    bytes >> 20,
                    g.info.name,
                    limit >> 20
                ),
            });
        }
    }
    Ok(())
}

/// Train `method` on `data`; returns the final box table (dataset order).
pub fn pretrain(
    method: &mut dyn Method,
    data: Arc<ImageSet>,
    cfg: &PretrainConfig,
    device: &Device,
    mut on: impl FnMut(&Event),
) -> Result<Vec<BoxF>> {
    cfg.validate(data.len())?;
    // Events (metrics, progress) come from rank 0 only: each step is logged once.
    let root = crate::dist::place().is_root();
    let mut on = |e: &Event| {
        if root {
            on(e)
        }
    };
    let heatmaps = cfg.crop.uses_heatmaps();
    let sched = Schedule {
        epochs: cfg.epochs,
        warmup_epochs: if cfg.crop == CropKind::Rcrop {
            cfg.epochs
        } else {
            cfg.warmup_epochs
        },
        loc_interval: cfg.loc_interval,
    };
    if heatmaps && (1..=cfg.epochs).any(|e| sched.update_after(e)) {
        // The heatmap kernel's limit, checked before any training rather than at the first
        // box update after the warm-up (runs that never update boxes need no heatmaps).
        let (fh, fw) = method.backbone().cfg.feature_hw(data.height, data.width);
        if fh * fw > crate::crop::heatmap::MAX_CELLS {
            return Err(Error::Config {
                field: "crop.kind".into(),
                msg: format!(
                    "ContrastiveCrop's heatmaps take feature maps of at most {} cells; {}×{} images give {fh}×{fw} = {} with this stem: use model.stem = \"imagenet\", a smaller data.image_size, or crop.kind = \"rcrop\"",
                    crate::crop::heatmap::MAX_CELLS,
                    data.height,
                    data.width,
                    fh * fw,
                ),
            });
        }
    }
    let rrc = cfg.rrc;
    rrc.validate()?;
    let specs = views_or_default(
        cfg.views.clone(),
        &cfg.crop,
        data.height,
        rrc,
        cfg.mask.as_ref(),
    );
    if let Some(m) = &cfg.mask {
        m.check_view_sizes(&specs, cfg.views.is_empty())?;
    }
    if let Device::Gpu(g) = device {
        check_device_limits(method, &specs, cfg.batch_size, g)?;
    }
    if specs.len() != method.view_count() {
        return Err(Error::Config {
            field: "views".into(),
            msg: format!(
                "{} takes {} views per image, the config gives {}",
                method.name(),
                method.view_count(),
                specs.len()
            ),
        });
    }
    let view = ViewConfig {
        views: specs,
        jitter: Jitter {
            blur: cfg.blur,
            ..Jitter::default()
        },
        mean: cfg.mean,
        std: cfg.std,
        mask: cfg.mask.as_ref().map(|m| m.recipe),
    };
    let mut masker = match &cfg.mask {
        Some(m) => Some(masking::Masker::new(m, device)?),
        None => None,
    };
    let hard_negatives = cfg
        .mask
        .as_ref()
        .map(|m| m.negatives_per_step(cfg.batch_size));
    let mut boxes = vec![cfg.init_box; data.len()];
    let mut proposals: Vec<Vec<BoxF>> = match &cfg.crop {
        CropKind::ObjectCrop(o) => match &o.fixed {
            Some(f) if f.len() == data.len() => f.as_ref().clone(),
            Some(f) => {
                return Err(Error::Config {
                    field: "crop.proposals_file".into(),
                    msg: format!(
                        "holds proposals for {} images, the dataset has {}",
                        f.len(),
                        data.len()
                    ),
                })
            }
            None => vec![vec![WHOLE_IMAGE]; data.len()],
        },
        _ => Vec::new(),
    };
    // Momentum buffers, one per trainable parameter (zeros reproduce PyTorch's first step).
    let mut bufs = momentum_buffers(method.store(), device)?;
    // Parameter groups, one entry per store entry: (learning rate fixed at its initial
    // value — SimSiam's predictor; no weight decay — 1-D parameters when excluded; LARS —
    // weight matrices and kernels when asked, 1-D parameters always take plain SGD).
    let groups: Vec<(bool, bool, bool)> = method
        .store()
        .params
        .iter()
        .map(|p| {
            let one_d = p.value.rank() <= 1;
            (
                method.fixed_lr(&p.name),
                cfg.exclude_bn_bias_wd && one_d,
                cfg.lars && !one_d,
            )
        })
        .collect();
    let b = cfg.batch_size;
    // Data parallelism: this rank's share of every global batch of b images.
    let place = crate::dist::place();
    let local = local_batch(b)?;
    let mut pos = Position::default();
    if let Some(path) = &cfg.resume {
        checkpoint::check_resumable(path, &cfg.config_text, cfg.batch_size)?;
        let r = checkpoint::load(path, method, &mut bufs, device)?;
        if r.boxes.len() != data.len() {
            return Err(Error::file(
                path,
                format!(
                    "holds {} boxes for a dataset of {} images",
                    r.boxes.len(),
                    data.len()
                ),
            ));
        }
        boxes = r.boxes;
        pos = r.pos;
        if !proposals.is_empty() {
            if let Some(p) = r.proposals {
                if p.len() != data.len() {
                    return Err(Error::file(
                        path,
                        format!(
                            "holds proposals for {} images, the dataset has {}",
                            p.len(),
                            data.len()
                        ),
                    ));
                }
                proposals = p;
            }
        }
    }
    if place.size > 1 {
        // Every rank starts from rank 0's parameters and momentum buffers.
        parallel::broadcast_store(method.store_mut(), &mut bufs, device)?;
    }
    let total_steps = (cfg.epochs * (data.len() / b)).max(1);
    let mut last_saved: Option<std::path::PathBuf> = cfg.resume.clone();
    let save = |method: &dyn Method,
                bufs: &[Option<Tensor>],
                boxes: &[BoxF],
                proposals: &[Vec<BoxF>],
                pos: Position,
                name: &str|
     -> Result<Option<std::path::PathBuf>> {
        let Some(dir) = &cfg.checkpoint_dir else {
            return Ok(None);
        };
        let file = dir.join(name);
        checkpoint::save(
            &file,
            method,
            bufs,
            boxes,
            proposals,
            pos,
            cfg.batch_size,
            &cfg.config_text,
        )?;
        if name != "last.safetensors" {
            // The same bytes again: copy the file rather than read the GPU back twice.
            atomic::copy_atomic(&file, &dir.join("last.safetensors"))?;
        }
        Ok(Some(dir.join("last.safetensors")))
    };
    let not_finite = |l: f32, ep: usize, step: usize, last: &Option<std::path::PathBuf>| {
        Error::NotFinite(format!(
            "the loss became {l} at epoch {ep}, step {step}; training stopped{}",
            match last {
                Some(p) => format!(", the last good checkpoint is {}", p.display()),
                None => ", no checkpoint was written before it".into(),
            }
        ))
    };
    for ep in pos.epoch + 1..=cfg.epochs {
        let lr = warmup_cosine_lr(cfg.lr, ep, cfg.epochs, cfg.decay_rate, cfg.lr_warmup_epochs);
        let use_box = cfg.crop != CropKind::Rcrop && sched.use_box(ep);
        let mode = match &cfg.crop {
            CropKind::Rcrop => CropMode::Rrc,
            _ if !use_box => CropMode::Rrc,
            CropKind::Ccrop => CropMode::boxes(&view, cfg.alpha, None, Arc::new(boxes.clone()))?,
            CropKind::SemanticCrop { sigma } => {
                CropMode::boxes(&view, cfg.alpha, *sigma, Arc::new(boxes.clone()))?
            }
            CropKind::ObjectCrop(o) => CropMode::Objects {
                crop: o.crop,
                proposals: Arc::new(proposals.clone()),
                swap: o.swap,
            },
        };
        let t0 = Instant::now();
        let mut seen = 0;
        let skip = std::mem::take(&mut pos.batch);
        let mut last_loss: Option<Tensor> = None;
        for (k, mut batch) in epoch_shard(
            data.clone(),
            mode,
            view.clone(),
            b,
            cfg.seed,
            ep as u64,
            cfg.workers,
            4,
            skip,
            (place.rank, place.size),
        )
        .enumerate()
        {
            pos.step += 1;
            let step = pos.step;
            method.before_step(step - 1, total_steps)?;
            let mut tape = Tape::new();
            let store_bound = method.store().bind(&mut tape, true);
            let mut xs = Vec::with_capacity(batch.views.len());
            for (v, &s) in std::mem::take(&mut batch.views)
                .into_iter()
                .zip(&batch.sizes)
            {
                xs.push(Tensor::from_vec(v, &[local, 3, s, s], device)?);
            }
            if let Some(m) = &mut masker {
                m.apply(Some(&mut *method), &view, &batch, &mut xs, device)?;
            }
            drop(batch);
            let inputs: Vec<_> = xs.into_iter().map(|x| tape.input(x)).collect();
            let loss = method.loss(&mut tape, &store_bound, &inputs)?;
            let mut loss_value = tape.value(loss).clone();
            let mut grads = tape.backward(loss)?;
            let mut stop_here = cfg.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
                || cfg.stop_at_step == Some(step);
            let mut parts = method.loss_parts();
            if place.size > 1 {
                // One all-reduce: the gradients (averaged), whether any rank stops, and the
                // loss and its parts (averaged: every rank's is the mean over its share).
                let mut extras = vec![stop_here as u8 as f32, loss_value.item()?];
                for (_, t) in &parts {
                    extras.push(t.item()?);
                }
                parallel::average_grads(&mut grads, &store_bound, &mut extras, device)?;
                let n = place.size as f32;
                stop_here = extras[0] > 0.0;
                loss_value = Tensor::from_vec(vec![extras[1] / n], &[1], &Device::Cpu)?;
                for ((_, t), v) in parts.iter_mut().zip(&extras[2..]) {
                    *t = Tensor::from_vec(vec![v / n], &[1], &Device::Cpu)?;
                }
            }
            // The tape holds the parameters' values: drop it so the CPU path updates them
            // in place instead of copying every one.
            drop(tape);
            let group = |id: usize| {
                let (fixed, no_wd, lars) = groups[id];
                (
                    if fixed { cfg.lr as f32 } else { lr as f32 },
                    if no_wd { 0.0 } else { cfg.weight_decay },
                    lars,
                )
            };
            update_store(
                method.store_mut(),
                &store_bound,
                &grads,
                &mut bufs,
                group,
                cfg.momentum,
            )?;
            drop(grads);
            method.after_step()?;
            if place.size > 1 {
                parallel::broadcast_bn_stats(method.store_mut(), device)?;
            }
            if let Device::Gpu(g) = device {
                g.flush();
                // A device error (validation, out of memory, device loss) ends the run here
                // as `Error::Gpu`; the last checkpoint stays.
                g.check()?;
            }
            seen += b;
            if step % cfg.log_interval.max(1) == 0 {
                let l = loss_value.item()?;
                if !l.is_finite() {
                    return Err(not_finite(l, ep, step, &last_saved));
                }
                let mut loss_ddm = None;
                for (name, t) in &parts {
                    if *name == "loss_ddm" {
                        loss_ddm = Some(t.item()?);
                    }
                }
                on(&Event::Step {
                    epoch: ep,
                    step,
                    loss: l,
                    lr,
                    hard_negatives,
                    loss_ddm,
                });
            }
            last_loss = Some(loss_value);
            if stop_here {
                let here = Position {
                    epoch: ep - 1,
                    step,
                    batch: skip + k + 1,
                };
                let l = last_loss.as_ref().map_or(Ok(0.0), |t| t.item())?;
                if !l.is_finite() {
                    return Err(not_finite(l, ep, step, &last_saved));
                }
                let saved = save(method, &bufs, &boxes, &proposals, here, "last.safetensors")?;
                if place.size > 1 {
                    // The other ranks end once rank 0's checkpoint is written.
                    crate::dist::broadcast(&mut [0.0]);
                    if !root {
                        return Err(Error::Interrupted(format!(
                            "interrupted at epoch {ep}, step {step}; rank 0 saved the checkpoint"
                        )));
                    }
                }
                return Err(Error::Interrupted(match saved {
                    Some(p) => format!(
                        "interrupted at epoch {ep}, step {step}; checkpoint saved to {} (run again with --resume to continue)",
                        p.display()
                    ),
                    None => format!("interrupted at epoch {ep}, step {step} (no checkpoint directory)"),
                }));
            }
        }
        on(&Event::Epoch {
            epoch: ep,
            images_per_s: seen as f64 / t0.elapsed().as_secs_f64(),
            crop: if use_box { cfg.crop.name() } else { "rcrop" },
        });
        pos = Position {
            epoch: ep,
            step: pos.step,
            batch: 0,
        };
        // A checkpoint must never hold diverged weights: check the last loss first.
        if let Some(t) = &last_loss {
            let l = t.item()?;
            if !l.is_finite() {
                return Err(not_finite(l, ep, pos.step, &last_saved));
            }
        }
        if heatmaps && sched.update_after(ep) {
            let pass = BoxPass {
                mean: cfg.mean,
                std: cfg.std,
                k: cfg.box_thresh,
                batch: b,
            };
            let stats = match &cfg.crop {
                CropKind::ObjectCrop(o) => update_proposals(
                    method,
                    &data,
                    &mut proposals,
                    &pass,
                    o.max_proposals,
                    device,
                    ep,
                )?,
                _ => update_boxes(method, &data, &mut boxes, &pass, device, ep)?,
            };
            on(&Event::Boxes(stats));
        }
        // The kNN monitor runs on rank 0 (its result is only logged there).
        if let Some(m) = cfg.knn.as_ref().filter(|_| root) {
            if m.interval > 0 && (ep == cfg.epochs || ep.is_multiple_of(m.interval)) {
                let eval_batch = b.clamp(64, 256);
                // The labelled split's own images: the pre-training set may hold others
                // (STL-10's unlabeled images) or another order.
                let input = (cfg.mean, cfg.std, m.high_pass);
                let (ftr, d) =
                    crate::eval::knn::features(method, &m.train, input, eval_batch, device)?;
                let (fte, _) =
                    crate::eval::knn::features(method, &m.test, input, eval_batch, device)?;
                let classes = m.train.classes.len().max(m.test.classes.len());
                let acc = crate::eval::knn::knn_accuracy(
                    ftr,
                    &m.train.labels,
                    fte,
                    &m.test.labels,
                    d,
                    classes,
                    m.k,
                    m.temperature,
                );
                on(&Event::Knn {
                    epoch: ep,
                    knn_top1: acc,
                    k: m.k,
                });
            }
        }
        if ep == cfg.epochs || ep.is_multiple_of(cfg.save_interval.max(1)) {
            if let Some(p) = save(
                method,
                &bufs,
                &boxes,
                &proposals,
                pos,
                &format!("epoch_{ep}.safetensors"),
            )? {
                on(&Event::Checkpoint {
                    epoch: ep,
                    path: p.display().to_string(),
                });
                last_saved = Some(p);
            }
        }
    }
    if place.size > 1 {
        let identical = parallel::parameters_identical(method.store())?;
        on(&Event::Ranks {
            ranks: place.size,
            parameters_identical: identical,
        });
        if !identical {
            return Err(Error::Autograd(
                "the ranks' parameters diverged (a bug: please report it)".into(),
            ));
        }
    }
    Ok(boxes)
}
