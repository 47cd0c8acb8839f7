//! The pre-training loader: the views a run's view specs ask for, produced by worker threads
//! ahead of the trainer (a bounded queue of ready batches), deterministic for a seed whatever
//! the thread timing — every random choice of item `i` in epoch `e`, view `v` comes from its
//! own RNG seeded by (seed, e, i, v); choices shared by an image's views (object-aware crops'
//! proposal and order) from one seeded by (seed, e, i, u64::MAX).
//!
//! A view spec names its crop source, output size, RandomResizedCrop scale/ratio and
//! augmentation; the epoch's [`CropMode`] (plain RRC during warm-ups, the box table, the
//! proposal table) decides how box- and object-sourced views are cropped.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::augment::{hflip, normalize, resized_crop, ssl_view_after_crop, Jitter, Rgb};
use super::masking::{high_pass_view, plan_and_fill, BatchNoise, MaskRecipe, Strategy};
use super::strong::rand_augment;
use super::ImageSet;
use crate::crop::object::ObjectCrop;
use crate::crop::sampler::{BoxF, ContrastiveCrop, Crop, RrcParams, WHOLE_IMAGE};
use crate::crop::semantic::SemanticCrop;
use crate::error::Result;

/// Where a view's crop comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropSource {
    /// The run's crop kind: RRC (rcrop, warm-ups), ContrastiveCrop in the image's box
    /// (ccrop), SemanticCrop's pair-aware sampler in the box (semanticcrop; later box views of
    /// an image are pushed away from its first).
    Box,
    /// RandomResizedCrop of the whole image, whatever the crop kind.
    Scene,
    /// RandomResizedCrop of the tight region of the image's drawn proposal (objectcrop).
    Object,
    /// RandomResizedCrop of the dilated region of the drawn proposal (objectcrop).
    Dilated,
    /// The tight region of the drawn proposal, resized whole (object–scene's second view).
    ObjectWhole,
}

impl CropSource {
    pub const NAMES: [&'static str; 5] = ["box", "scene", "object", "dilated", "object_whole"];

    pub fn parse(s: &str) -> Option<CropSource> {
        Some(match s {
            "box" => CropSource::Box,
            "scene" => CropSource::Scene,
            "object" => CropSource::Object,
            "dilated" => CropSource::Dilated,
            "object_whole" => CropSource::ObjectWhole,
            _ => return None,
        })
    }

    /// Sources that need object proposals.
    pub fn is_object(self) -> bool {
        matches!(
            self,
            CropSource::Object | CropSource::Dilated | CropSource::ObjectWhole
        )
    }

    /// Whether a view of this source can be made by a run whose crop kind is objectcrop
    /// (`objects`) or not; the error says why.
    pub fn fits_kind(self, objects: bool) -> std::result::Result<(), &'static str> {
        if self.is_object() && !objects {
            Err("object-sourced views (object, dilated, object_whole) need crop.kind = \"objectcrop\"")
        } else if self == CropSource::Box && objects {
            Err("`box` views follow the heatmap box, which objectcrop does not compute: use object, dilated, object_whole or scene")
        } else {
            Ok(())
        }
    }
}

/// What happens to a view after its crop is resized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Augment {
    /// The pre-training recipe (`ssl`, also called `weak`): flip, colour jitter, greyscale
    /// (and blur when enabled).
    Ssl,
    /// CLSA's strong recipe: the weak one, then RandAugment (5 of 14 ops, `data::strong`).
    Strong,
    /// Horizontal flip (p 0.5) only.
    Flip,
    /// Nothing (normalisation only).
    None,
}

impl Augment {
    pub const NAMES: [&'static str; 5] = ["ssl", "weak", "strong", "flip", "none"];

    pub fn parse(s: &str) -> Option<Augment> {
        Some(match s {
            "ssl" | "weak" => Augment::Ssl,
            "strong" => Augment::Strong,
            "flip" => Augment::Flip,
            "none" => Augment::None,
            _ => return None,
        })
    }
}

/// A view's part in saliency-guided masking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewMask {
    /// Not masked (keys, and every view of a run without masking).
    None,
    /// A masked query ("pos" mode), masked from its own saliency.
    Pos,
    /// A hard negative ("neg" mode): a copy of the nearest earlier unmasked view (the key),
    /// masked from that view's saliency. Its own crop settings are not used.
    Neg,
}

impl ViewMask {
    pub const NAMES: [&'static str; 3] = ["none", "pos", "neg"];

    pub fn parse(s: &str) -> Option<ViewMask> {
        Some(match s {
            "none" => ViewMask::None,
            "pos" => ViewMask::Pos,
            "neg" => ViewMask::Neg,
            _ => return None,
        })
    }
}

/// One view of every image (a config's `count` repeats a spec).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewSpec {
    pub source: CropSource,
    /// Output height and width in pixels.
    pub size: usize,
    pub rrc: RrcParams,
    pub augment: Augment,
    pub mask: ViewMask,
}

/// The views of a run and what they share.
#[derive(Clone, Debug)]
pub struct ViewConfig {
    pub views: Vec<ViewSpec>,
    pub jitter: Jitter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Saliency-guided masking (None: off; `mask` of the specs is then ignored).
    pub mask: Option<MaskRecipe>,
}

impl ViewConfig {
    /// The view whose saliency decides view `v`'s mask (itself for "pos", the nearest earlier
    /// unmasked view for "neg"), or None when `v` is not masked.
    pub fn saliency_source(&self, v: usize) -> Option<usize> {
        self.mask?;
        match self.views[v].mask {
            ViewMask::None => None,
            ViewMask::Pos => Some(v),
            ViewMask::Neg => (0..v).rev().find(|&u| self.views[u].mask == ViewMask::None),
        }
    }
}

impl ViewConfig {
    /// Today's two views: `Box`-sourced, at `size`, with the run's RRC, the SSL recipe.
    pub fn two_views(
        size: usize,
        rrc: RrcParams,
        jitter: Jitter,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Self {
        let spec = ViewSpec {
            source: CropSource::Box,
            size,
            rrc,
            augment: Augment::Ssl,
            mask: ViewMask::None,
        };
        Self {
            views: vec![spec; 2],
            jitter,
            mean,
            std,
            mask: None,
        }
    }
}

/// How the views of an epoch are cropped.
#[derive(Clone, Debug)]
pub enum CropMode {
    /// Every view a RandomResizedCrop of the whole image with its own scale/ratio (rcrop, and
    /// every kind's warm-up).
    Rrc,
    /// Box-sourced views in each image's box: one sampler per view (its spec's sizes).
    Boxes {
        samplers: Vec<SemanticCrop>,
        boxes: Arc<Vec<BoxF>>,
    },
    /// Object-sourced views from one proposal per image and access, drawn uniformly; with
    /// `swap` the first two views trade places with probability 0.5 (the reference's order
    /// swap; only between views of one size).
    Objects {
        crop: ObjectCrop,
        proposals: Arc<Vec<Vec<BoxF>>>,
        swap: bool,
    },
}

impl CropMode {
    /// ContrastiveCrop (`sigma` = None) or SemanticCrop in `boxes`, for the views of `cfg`.
    pub fn boxes(
        cfg: &ViewConfig,
        alpha: f64,
        sigma: Option<f64>,
        boxes: Arc<Vec<BoxF>>,
    ) -> Result<CropMode> {
        let samplers = cfg
            .views
            .iter()
            .map(|v| {
                Ok(SemanticCrop {
                    cc: ContrastiveCrop::new(v.rrc, alpha)?,
                    sigma,
                })
            })
            .collect::<Result<_>>()?;
        Ok(CropMode::Boxes { samplers, boxes })
    }
}

/// One batch: `views[v]` is [B, 3, sizes[v], sizes[v]] normalised f32 (high-passed when the
/// run masks with `hp`); `indices` are dataset indices. With masking, per view (empty where
/// it does not apply): `plain[v]` the views before the high-pass (saliency sources of `hp`
/// runs), `plans[v]` [B, plan_len] and `fills[v]` [B, 3, S, S] of the masked views.
pub struct Batch {
    pub views: Vec<Vec<f32>>,
    pub sizes: Vec<usize>,
    pub indices: Vec<usize>,
    pub labels: Vec<u32>,
    pub plain: Vec<Vec<f32>>,
    pub plans: Vec<Vec<f32>>,
    pub fills: Vec<Vec<f32>>,
}

/// One image's masking inputs, per view (empty where they do not apply).
#[derive(Default)]
pub struct ImageMasks {
    pub plain: Vec<Vec<f32>>,
    pub plans: Vec<Vec<f32>>,
    pub fills: Vec<Vec<f32>>,
}

/// The masking inputs of image `i`'s views `views` (high-passed in place for `hp`), with the
/// batch's noise patches `noise` (one per view).
pub fn mask_inputs(
    views: &mut [Vec<f32>],
    i: usize,
    cfg: &ViewConfig,
    noise: &[BatchNoise],
    seed: u64,
    epoch: u64,
) -> ImageMasks {
    let Some(recipe) = &cfg.mask else {
        return ImageMasks::default();
    };
    let nv = views.len();
    let mut out = ImageMasks {
        plain: vec![Vec::new(); nv],
        plans: vec![Vec::new(); nv],
        fills: vec![Vec::new(); nv],
    };
    let hp = recipe.strategy == Strategy::HighPass;
    if hp {
        for v in 0..nv {
            if let Some(s) = cfg.saliency_source(v) {
                if out.plain[s].is_empty() {
                    out.plain[s] = views[s].clone();
                }
            }
        }
        // Hard negatives are copies of their keys: filtered once, copied.
        let copy_of = |v: usize| cfg.saliency_source(v).filter(|&s| s != v);
        for (v, x) in views.iter_mut().enumerate() {
            if copy_of(v).is_none() {
                *x = high_pass_view(x, cfg.views[v].size);
            }
        }
        for v in 0..nv {
            if let Some(s) = copy_of(v) {
                views[v] = views[s].clone();
            }
        }
    }
    for v in 0..nv {
        if cfg.saliency_source(v).is_none() {
            continue;
        }
        let positive = cfg.views[v].mask == ViewMask::Pos;
        let mut rng = StdRng::seed_from_u64(mix(seed, epoch, i as u64, (1 << 32) | v as u64));
        let (plan, fill) = plan_and_fill(
            &views[v],
            cfg.views[v].size,
            recipe,
            positive,
            &noise[v],
            &mut rng,
        );
        out.plans[v] = plan;
        out.fills[v] = fill;
    }
    out
}

pub(crate) fn mix(seed: u64, epoch: u64, index: u64, view: u64) -> u64 {
    // SplitMix64 over the packed tuple: independent streams per (epoch, item, view).
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ view.wrapping_mul(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every view of image `i` in epoch `epoch`, in spec order.
pub fn make_views(
    set: &ImageSet,
    i: usize,
    mode: &CropMode,
    cfg: &ViewConfig,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<f32>> {
    let (hgt, wid) = (set.height, set.width);
    let img = Rgb::new(hgt, wid, set.image(i).to_vec());
    // Choices shared by the image's views.
    let (proposal, swapped) = match mode {
        CropMode::Objects {
            proposals, swap, ..
        } => {
            let mut rng = StdRng::seed_from_u64(mix(seed, epoch, i as u64, u64::MAX));
            let list = &proposals[i];
            let j = rng.random_range(0..list.len().max(1));
            let bx = list.get(j).copied().unwrap_or(WHOLE_IMAGE);
            let same_size = cfg.views.len() >= 2 && cfg.views[0].size == cfg.views[1].size;
            (bx, *swap && same_size && rng.random_bool(0.5))
        }
        _ => (WHOLE_IMAGE, false),
    };
    let mut first_uv = None;
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(cfg.views.len());
    for (v, spec) in cfg.views.iter().enumerate() {
        // A hard negative starts as a copy of its key (below, after any swap).
        if cfg.saliency_source(v).is_some_and(|s| s != v) {
            out.push(Vec::new());
            continue;
        }
        let view = {
            let mut rng = StdRng::seed_from_u64(mix(seed, epoch, i as u64, v as u64));
            let crop = match (mode, spec.source) {
                (CropMode::Boxes { samplers, boxes }, CropSource::Box) => {
                    let (c, uv) = samplers[v].sample(&mut rng, hgt, wid, boxes[i], first_uv);
                    first_uv = first_uv.or(uv);
                    c
                }
                (CropMode::Objects { crop, .. }, s) if s.is_object() => {
                    let region = crop.region(proposal, hgt, wid, s == CropSource::Dilated);
                    if s == CropSource::ObjectWhole {
                        region
                    } else {
                        let c = spec.rrc.sample(&mut rng, region.height, region.width);
                        Crop {
                            top: region.top + c.top,
                            left: region.left + c.left,
                            ..c
                        }
                    }
                }
                _ => spec.rrc.sample(&mut rng, hgt, wid),
            };
            let view = resized_crop(&img, crop, spec.size, spec.size);
            let view = match spec.augment {
                Augment::Ssl => ssl_view_after_crop(&view, &cfg.jitter, &mut rng),
                Augment::Strong => {
                    let weak = ssl_view_after_crop(&view, &cfg.jitter, &mut rng);
                    rand_augment(&weak, &mut rng)
                }
                Augment::Flip if rng.random_bool(0.5) => hflip(&view),
                _ => view,
            };
            normalize(&view, cfg.mean, cfg.std)
        };
        out.push(view);
    }
    if swapped {
        out.swap(0, 1);
    }
    for v in 0..out.len() {
        if let Some(s) = cfg.saliency_source(v).filter(|&s| s != v) {
            out[v] = out[s].clone();
        }
    }
    out
}

/// The shuffled dataset order of `epoch` (drop_last: only whole batches).
pub fn epoch_order(n: usize, batch: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(mix(seed, epoch, u64::MAX, 0)));
    idx.truncate(n / batch * batch);
    idx
}

/// Batches of one epoch, produced by `workers` threads with at most `prefetch` batches
/// waiting. Dropping the iterator stops the workers.
pub struct EpochIter {
    rx: Receiver<(usize, Batch)>,
    pending: std::collections::BTreeMap<usize, Batch>,
    next: usize,
    total: usize,
    handles: Vec<JoinHandle<()>>,
}

impl Iterator for EpochIter {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.total {
            return None;
        }
        // Workers finish out of order; hand batches out in order.
        while !self.pending.contains_key(&self.next) {
            // Workers only stop early when one panicked: that is a bug, and a short epoch
            // would silently desynchronise the ranks of a data-parallel run.
            let (k, b) = self.rx.recv().unwrap_or_else(|_| {
                panic!(
                    "the loader's workers stopped before batch {} of {}",
                    self.next, self.total
                )
            });
            self.pending.insert(k, b);
        }
        let b = self.pending.remove(&self.next);
        self.next += 1;
        b
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Unblock senders, then wait for them.
        while self.rx.try_recv().is_ok() {}
        let handles = std::mem::take(&mut self.handles);
        drop(std::mem::replace(&mut self.rx, sync_channel(1).1));
        for h in handles {
            let _ = h.join();
        }
    }
}

/// The batches of `epoch` from batch `start` on (a run resumed mid-epoch skips the ones it
/// has trained on; every batch is the same whatever `start` is).
#[allow(clippy::too_many_arguments)]
pub fn epoch(
    set: Arc<ImageSet>,
    mode: CropMode,
    cfg: ViewConfig,
    batch: usize,
    seed: u64,
    epoch: u64,
    workers: usize,
    prefetch: usize,
    start: usize,
) -> EpochIter {
    epoch_shard(
        set,
        mode,
        cfg,
        batch,
        seed,
        epoch,
        workers,
        prefetch,
        start,
        (0, 1),
    )
}

/// [`epoch`] for rank `shard.0` of `shard.1`: global batch k is `order[k·B..(k+1)·B]` of the
/// epoch's permutation and this rank takes its `shard.0`-th contiguous slice of B/N images
/// (B a multiple of N), with every view exactly as a single process makes it.
#[allow(clippy::too_many_arguments)]
pub fn epoch_shard(
    set: Arc<ImageSet>,
    mode: CropMode,
    cfg: ViewConfig,
    batch: usize,
    seed: u64,
    epoch: u64,
    workers: usize,
    prefetch: usize,
    start: usize,
    (rank, ranks): (usize, usize),
) -> EpochIter {
    let order = Arc::new(epoch_order(set.len(), batch, seed, epoch));
    let total = order.len() / batch;
    let (tx, rx) = sync_channel(prefetch.max(1));
    let workers = workers.max(1);
    let handles = (0..workers)
        .map(|w| {
            let (set, mode, cfg, order, tx) = (
                set.clone(),
                mode.clone(),
                cfg.clone(),
                order.clone(),
                tx.clone(),
            );
            std::thread::spawn(move || {
                for k in (start + w..total).step_by(workers) {
                    let per = batch / ranks.max(1);
                    let first = k * batch + rank * per;
                    let indices = order[first..first + per].to_vec();
                    let nv = cfg.views.len();
                    let (mut views, mut plain, mut plans, mut fills) = (
                        vec![Vec::new(); nv],
                        vec![Vec::new(); nv],
                        vec![Vec::new(); nv],
                        vec![Vec::new(); nv],
                    );
                    let noise: Vec<BatchNoise> = match &cfg.mask {
                        Some(recipe) => (0..nv)
                            .map(|v| {
                                BatchNoise::draw(
                                    recipe,
                                    cfg.views[v].size,
                                    cfg.views[v].mask == ViewMask::Pos,
                                    (seed, epoch, k as u64, v as u64),
                                )
                            })
                            .collect(),
                        None => Vec::new(),
                    };
                    for &i in &indices {
                        let mut vs = make_views(&set, i, &mode, &cfg, seed, epoch);
                        let m = mask_inputs(&mut vs, i, &cfg, &noise, seed, epoch);
                        for (v, x) in vs.into_iter().enumerate() {
                            views[v].extend(x);
                        }
                        for (v, x) in m.plain.into_iter().enumerate() {
                            plain[v].extend(x);
                        }
                        for (v, x) in m.plans.into_iter().enumerate() {
                            plans[v].extend(x);
                        }
                        for (v, x) in m.fills.into_iter().enumerate() {
                            fills[v].extend(x);
                        }
                    }
                    let sizes = cfg.views.iter().map(|v| v.size).collect();
                    let labels = indices.iter().map(|&i| set.labels[i]).collect();
                    if tx
                        .send((
                            k,
                            Batch {
                                views,
                                sizes,
                                indices,
                                labels,
                                plain,
                                plans,
                                fills,
                            },
                        ))
                        .is_err()
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    EpochIter {
        rx,
        pending: Default::default(),
        next: start,
        total,
        handles,
    }
}
