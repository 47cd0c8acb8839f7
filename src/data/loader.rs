//! The pre-training loader: two augmented views per image, produced by worker threads ahead
//! of the trainer (a bounded queue of ready batches), deterministic for a seed whatever the
//! thread timing — every random choice of item `i` in epoch `e`, view `v` comes from its own
//! RNG seeded by (seed, e, i, v).
//!
//! Crops come from the schedule's current mode: plain RandomResizedCrop, or ContrastiveCrop
//! with the per-image box table (indexed by dataset index, read when the epoch starts).

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::augment::{normalize, resized_crop, ssl_view_after_crop, Jitter, Rgb};
use super::ImageSet;
use crate::crop::sampler::{BoxF, ContrastiveCrop, RrcParams};

/// How the views of an epoch are cropped.
#[derive(Clone, Debug)]
pub enum CropMode {
    Rrc(RrcParams),
    /// ContrastiveCrop with one box per dataset index.
    Contrastive {
        sampler: ContrastiveCrop,
        boxes: Arc<Vec<BoxF>>,
    },
}

#[derive(Clone, Debug)]
pub struct ViewConfig {
    pub size: usize,
    pub jitter: Jitter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// One batch: `views[v]` is [B, 3, size, size] normalised f32; `indices` are dataset indices.
pub struct Batch {
    pub views: [Vec<f32>; 2],
    pub indices: Vec<usize>,
    pub labels: Vec<u32>,
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

/// One view of image `i`.
pub fn make_view(
    set: &ImageSet,
    i: usize,
    mode: &CropMode,
    cfg: &ViewConfig,
    rng: &mut StdRng,
) -> Vec<f32> {
    let img = Rgb::new(set.height, set.width, set.image(i).to_vec());
    let crop = match mode {
        CropMode::Rrc(p) => p.sample(rng, set.height, set.width),
        CropMode::Contrastive { sampler, boxes } => {
            sampler.sample(rng, set.height, set.width, boxes[i])
        }
    };
    let v = resized_crop(&img, crop, cfg.size, cfg.size);
    normalize(
        &ssl_view_after_crop(&v, &cfg.jitter, rng),
        cfg.mean,
        cfg.std,
    )
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
            let (k, b) = self.rx.recv().ok()?;
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
                    let indices = order[k * batch..(k + 1) * batch].to_vec();
                    let mut views = [Vec::new(), Vec::new()];
                    for (v, out) in views.iter_mut().enumerate() {
                        for &i in &indices {
                            let mut rng =
                                StdRng::seed_from_u64(mix(seed, epoch, i as u64, v as u64));
                            out.extend(make_view(&set, i, &mode, &cfg, &mut rng));
                        }
                    }
                    let labels = indices.iter().map(|&i| set.labels[i]).collect();
                    if tx
                        .send((
                            k,
                            Batch {
                                views,
                                indices,
                                labels,
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
