//! MoCo v2 (SPEC A.5, D.5): query encoder = backbone + MLP head Linear(D, D) → ReLU →
//! Linear(D, dim) (`fc.0`, `fc.2`); key encoder of the same shape (`key.` names, frozen,
//! initialised as a copy) updated by EMA *before* the keys are computed; a queue of K
//! normalised keys (one per row, a buffer in the store with its pointer) with wrap-around
//! enqueue after the step; InfoNCE at temperature T.
//!
//! One device emulates the reference's per-GPU BatchNorm: both encoders normalise over ghost
//! groups of `bn_group` images (each group is forwarded on its own), and the key batch is
//! shuffled across groups before the key encoder and un-shuffled after, so a query never
//! shares BN statistics with its own key. Running statistics are updated from the first
//! group only, once per forward, as the reference's rank 0 (whose buffers DDP broadcasts).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::losses::moco_infonce_hard;
use super::{ema_towards_online, negative_batches, views_with_negatives, HardNegCfg, Method};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::nn::resnet::{ResNet, ResNetConfig};
use crate::nn::{Bound, Kind, Layer, Mlp, ParamStore};
use crate::ops::shape_ops::{assign_rows, inverse_permutation};
use crate::tensor::{Device, Tensor};

#[derive(Clone, Debug)]
pub struct MocoConfig {
    pub dim: usize,
    /// Queue length K (a multiple of the batch size).
    pub k: usize,
    pub momentum: f32,
    pub temperature: f32,
    pub bn_group: usize,
    pub shuffle: bool,
    pub seed: u64,
    /// Hard negatives (saliency-guided masking; none by default).
    pub hard: HardNegCfg,
}

impl Default for MocoConfig {
    fn default() -> Self {
        Self {
            dim: 128,
            k: 65536,
            momentum: 0.999,
            temperature: 0.2,
            bn_group: 64,
            shuffle: true,
            seed: 0,
            hard: HardNegCfg::default(),
        }
    }
}

pub const KEY: &str = "key.";

pub struct Moco {
    pub cfg: MocoConfig,
    store: ParamStore,
    backbone: ResNet,
    head: Mlp,
    k_backbone: ResNet,
    k_head: Mlp,
    queue: usize,
    ptr: usize,
    rng: StdRng,
    /// Normalised keys of the current step, enqueued after it.
    pending: Option<Tensor>,
}

fn head_spec(d: usize, dim: usize) -> [Layer; 3] {
    [
        Layer::Linear {
            fin: d,
            fout: d,
            bias: true,
        },
        Layer::Relu,
        Layer::Linear {
            fin: d,
            fout: dim,
            bias: true,
        },
    ]
}

impl Moco {
    pub fn new(
        model: ResNetConfig,
        cfg: MocoConfig,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Moco> {
        if cfg.k == 0 || cfg.bn_group == 0 {
            return Err(Error::Config {
                field: "method.k / method.bn_group".into(),
                msg: "must be at least 1".into(),
            });
        }
        let mut store = ParamStore::default();
        let model = ResNetConfig {
            num_classes: None,
            ..model
        };
        let backbone = ResNet::new(model.clone(), &mut store, rng, device)?;
        let d = backbone.out_dim;
        let head = Mlp::new(&mut store, "fc", &head_spec(d, cfg.dim), rng, device)?;
        let k_backbone = ResNet::new_prefixed(KEY, model, &mut store, rng, device)?;
        let k_head = Mlp::new(
            &mut store,
            &format!("{KEY}fc"),
            &head_spec(d, cfg.dim),
            rng,
            device,
        )?;
        store.set_kind(KEY, Kind::Frozen);
        ema_towards_online(&mut store, KEY, 0.0)?;
        // The queue starts as random unit vectors (randn, normalised), one per row.
        let q = Tensor::randn(&[cfg.k, cfg.dim], 1.0, rng, &Device::Cpu)?;
        let q = crate::ops::l2norm::l2_normalize(&q)?.to_device(device)?;
        let queue = store.add_kind("queue", q, Kind::Buffer);
        let rng = StdRng::seed_from_u64(cfg.seed);
        Ok(Moco {
            cfg,
            store,
            backbone,
            head,
            k_backbone,
            k_head,
            queue,
            ptr: 0,
            rng,
            pending: None,
        })
    }

    pub fn queue(&self) -> &Tensor {
        &self.store.params[self.queue].value
    }
    pub fn queue_ptr(&self) -> usize {
        self.ptr
    }

    /// `f` over ghost-BN groups of `bn_group` images ([`super::ghost_bn`]).
    fn grouped(
        &mut self,
        tape: &mut Tape,
        x: Var,
        f: impl Fn(&mut Self, &mut Tape, Var) -> Result<Var>,
    ) -> Result<Var> {
        let g = self.cfg.bn_group;
        let out = super::ghost_bn(
            self,
            tape,
            &[x],
            g,
            |m| &mut m.store,
            |m, t, x| Ok(vec![f(m, t, x)?]),
        )?;
        Ok(out[0][0])
    }

    /// Query-encoder embeddings of `x` (backbone + head, ghost-BN groups), with gradient.
    pub(crate) fn queries(&mut self, tape: &mut Tape, b: &Bound, x: Var) -> Result<Var> {
        self.grouped(tape, x, |m, t, x| {
            let f = m.backbone.forward(t, &mut m.store, b, x, true)?;
            m.head.forward(t, &mut m.store, b, f, true)
        })
    }

    /// Remember the step's keys (un-normalised embeddings [B, dim]) for the enqueue after it.
    pub(crate) fn set_pending(&mut self, keys: &Tensor) -> Result<()> {
        self.pending = Some(crate::ops::l2norm::l2_normalize(keys)?);
        Ok(())
    }

    /// Key-encoder embeddings of `x` without gradient: shuffled across the ghost-BN groups
    /// (and the ranks) and un-shuffled after.
    pub(crate) fn keys(&mut self, tape: &mut Tape, b: &Bound, x: Var) -> Result<Var> {
        Ok(self.keys_all(tape, b, x)?.0)
    }

    /// (this rank's keys of `x`, every rank's keys in global batch order). The key images of
    /// every rank are gathered and shuffled with one permutation of the global batch (the
    /// same on every rank: it comes from (seed, step)); each rank encodes its slice of the
    /// shuffled batch — with its own BN statistics, as the reference's shuffle BN — and the
    /// keys are gathered and un-shuffled. One rank: the same with ghost groups standing in
    /// for the ranks.
    pub(crate) fn keys_all(&mut self, tape: &mut Tape, b: &Bound, x: Var) -> Result<(Var, Tensor)> {
        let place = crate::dist::place();
        let xv = tape.value(x).clone();
        let local = xv.shape()[0];
        let n = local * place.size;
        let mut perm: Vec<usize> = (0..n).collect();
        if self.cfg.shuffle {
            perm.shuffle(&mut self.rng);
        }
        if place.size == 1 {
            let k = tape.no_grad(|t| -> Result<Var> {
                let xs = t.permute_rows(x, &perm)?;
                let k = self.grouped(t, xs, |m, t, x| {
                    let f = m.k_backbone.forward(t, &mut m.store, b, x, true)?;
                    m.k_head.forward(t, &mut m.store, b, f, true)
                })?;
                t.permute_rows(k, &inverse_permutation(&perm))
            })?;
            let all = tape.value(k).clone();
            return Ok((k, all));
        }
        let device = xv.device();
        let all_x = crate::dist::all_gather(&xv.to_vec()?);
        let row = all_x.len() / n;
        let mut mine = Vec::with_capacity(local * row);
        for &src in &perm[place.rank * local..(place.rank + 1) * local] {
            mine.extend_from_slice(&all_x[src * row..(src + 1) * row]);
        }
        let xs = tape.input(Tensor::from_vec(mine, xv.shape(), &device)?);
        let k = tape.no_grad(|t| {
            self.grouped(t, xs, |m, t, x| {
                let f = m.k_backbone.forward(t, &mut m.store, b, x, true)?;
                m.k_head.forward(t, &mut m.store, b, f, true)
            })
        })?;
        let shuffled = crate::dist::all_gather(&tape.value(k).to_vec()?);
        let dim = shuffled.len() / n;
        let mut all = vec![0f32; n * dim];
        for (p, &src) in perm.iter().enumerate() {
            all[src * dim..(src + 1) * dim].copy_from_slice(&shuffled[p * dim..(p + 1) * dim]);
        }
        let mine = all[place.rank * local * dim..(place.rank + 1) * local * dim].to_vec();
        let k_local = tape.input(Tensor::from_vec(mine, &[local, dim], &device)?);
        Ok((k_local, Tensor::from_vec(all, &[n, dim], &device)?))
    }

    /// Enqueue `keys` [B, dim] at the pointer, wrapping around.
    pub fn enqueue(&mut self, keys: &Tensor) -> Result<()> {
        let (b, k) = (keys.shape()[0], self.cfg.k);
        if b > k {
            return Err(Error::Config {
                field: "method.k".into(),
                msg: format!("queue of {k} keys is shorter than the batch ({b})"),
            });
        }
        let first = b.min(k - self.ptr);
        let q = &mut self.store.params[self.queue].value;
        assign_rows(
            q,
            self.ptr,
            &crate::ops::shape_ops::slice_batch(keys, 0, first)?,
        )?;
        if first < b {
            assign_rows(
                q,
                0,
                &crate::ops::shape_ops::slice_batch(keys, first, b - first)?,
            )?;
        }
        self.ptr = (self.ptr + b) % k;
        Ok(())
    }
}

impl Method for Moco {
    method_accessors!("moco");
    fn before_step(&mut self, step: usize, _total: usize) -> Result<()> {
        // The key shuffle of each step comes from (seed, step): resumed runs repeat it.
        self.rng = StdRng::seed_from_u64(
            self.cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        ema_towards_online(&mut self.store, KEY, self.cfg.momentum)
    }
    fn extra_state(&self) -> serde_json::Value {
        serde_json::json!({ "queue_ptr": self.ptr })
    }
    fn load_extra_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let ptr = state["queue_ptr"]
            .as_u64()
            .ok_or_else(|| Error::Autograd("checkpoint: MoCo queue_ptr missing".into()))?
            as usize;
        if ptr >= self.cfg.k {
            return Err(Error::Config {
                field: "method.k".into(),
                msg: format!(
                    "checkpoint queue pointer {ptr} outside a queue of {}",
                    self.cfg.k
                ),
            });
        }
        self.ptr = ptr;
        Ok(())
    }
    fn view_count(&self) -> usize {
        2 + self.cfg.hard.count
    }
    fn loss(&mut self, tape: &mut Tape, b: &Bound, views: &[Var]) -> Result<Var> {
        let hard = self.cfg.hard;
        let (v1, v2, negs) = views_with_negatives("moco", views, &hard)?;
        let q = self.queries(tape, b, v1)?;
        let (k, k_all) = self.keys_all(tape, b, v2)?;
        // Every rank's keys are enqueued (the reference's concat_all_gather).
        self.set_pending(&k_all)?;
        // Hard negatives through the key encoder as the keys (shuffled ghost BN), not
        // enqueued, its running statistics left to the keys.
        let negs = negative_batches(tape, negs, &hard)?;
        let mut t = Vec::with_capacity(negs.len());
        for x in negs {
            let frozen = std::mem::replace(&mut self.store.freeze_running_stats, true);
            let e = self.keys(tape, b, x);
            self.store.freeze_running_stats = frozen;
            t.push(e?);
        }
        let queue = self.queue().clone();
        moco_infonce_hard(tape, q, k, &queue, &t, hard.alpha, self.cfg.temperature)
    }
    fn after_step(&mut self) -> Result<()> {
        if let Some(keys) = self.pending.take() {
            self.enqueue(&keys)?;
        }
        Ok(())
    }
}
