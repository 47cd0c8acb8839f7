//! Self-supervised methods over one trait: a method owns its encoder(s) and heads (in one
//! named parameter store) and its loss; the trainer owns the loop, the optimiser and the
//! data. The losses are pure tape functions in [`losses`].

/// The accessors every method implements the same way, from its `store` and `backbone`
/// fields.
macro_rules! method_accessors {
    ($name:literal) => {
        fn name(&self) -> &'static str {
            $name
        }
        fn store(&self) -> &crate::nn::ParamStore {
            &self.store
        }
        fn store_mut(&mut self) -> &mut crate::nn::ParamStore {
            &mut self.store
        }
        fn backbone(&self) -> &crate::nn::resnet::ResNet {
            &self.backbone
        }
    };
}

pub mod byol;
pub mod clsa;
pub mod losses;
pub mod moco;
pub mod simclr;
pub mod simsiam;

use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::nn::resnet::ResNet;
use crate::nn::{Bound, ParamStore};

pub trait Method {
    fn name(&self) -> &'static str;
    /// Every parameter and buffer of the method (trainable entries are optimised).
    fn store(&self) -> &ParamStore;
    fn store_mut(&mut self) -> &mut ParamStore;
    /// The online backbone (features for kNN, linear evaluation and heatmaps). Its
    /// parameters are the store entries whose names do not start with a head prefix.
    fn backbone(&self) -> &ResNet;
    /// How many views the loss takes (the run's view specs must give exactly these).
    fn view_count(&self) -> usize {
        2
    }
    /// Record one step's loss for the views of a batch, each [B, 3, H_v, W_v] (sizes may
    /// differ: the backbone pools globally), `view_count()` of them.
    fn loss(&mut self, tape: &mut Tape, bound: &Bound, views: &[Var]) -> Result<Var>;
    /// Hook before the step's parameters are bound to the tape (momentum / target encoder
    /// EMA, which the references apply at the start of every forward). `step` counts from 0
    /// over the whole run, `total` is the run's number of steps.
    fn before_step(&mut self, _step: usize, _total: usize) -> Result<()> {
        Ok(())
    }
    /// State beside the store that a checkpoint must keep (e.g. MoCo's queue pointer).
    fn extra_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn load_extra_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    /// Hook after the optimiser step (queues).
    fn after_step(&mut self) -> Result<()> {
        Ok(())
    }
    /// Named parts of the last step's loss, as one-element tensors on the run's device (read
    /// back only when a step is logged): CLSA's `loss_ddm`.
    fn loss_parts(&self) -> Vec<(&'static str, crate::tensor::Tensor)> {
        Vec::new()
    }
    /// Parameters whose learning rate stays at its initial value (SimSiam's predictor).
    fn fixed_lr(&self, _name: &str) -> bool {
        false
    }
}

/// The hard negatives a contrastive method adds to its loss (saliency-guided masking): the
/// views after the query and the key, each forwarded without gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HardNegCfg {
    /// Hard-negative views per image.
    pub count: usize,
    /// Factor of their logits.
    pub alpha: f32,
    /// One negative per image (false: the reference's quirk, every query against image m's
    /// negative m, embedded from a batch of one).
    pub per_sample: bool,
}

impl Default for HardNegCfg {
    fn default() -> Self {
        Self {
            count: 0,
            alpha: 2.0,
            per_sample: true,
        }
    }
}

/// The query, the key and the hard-negative views of a contrastive method's loss, or a shape
/// error naming the method.
pub(crate) fn views_with_negatives<'a>(
    method: &'static str,
    views: &'a [Var],
    hard: &HardNegCfg,
) -> Result<(Var, Var, &'a [Var])> {
    if views.len() != 2 + hard.count {
        return Err(crate::error::Error::shape(
            method,
            format!(
                "takes {} views per step (a query, a key, {} hard negatives), got {}",
                2 + hard.count,
                hard.count,
                views.len()
            ),
        ));
    }
    Ok((views[0], views[1], &views[2..]))
}

/// The hard-negative images the loss embeds: every image of each view (per sample), or image
/// m of view m alone (the reference's quirk).
pub(crate) fn negative_batches(
    tape: &mut Tape,
    negs: &[Var],
    hard: &HardNegCfg,
) -> Result<Vec<Var>> {
    negs.iter()
        .enumerate()
        .map(|(m, &t)| {
            if hard.per_sample {
                Ok(t)
            } else {
                let n = tape.value(t).shape()[0];
                tape.slice_batch(t, m.min(n - 1), 1)
            }
        })
        .collect()
}

/// Forward views `xs` (each [N, …], the same N) through `f` in ghost-BN groups of `group`
/// consecutive images (`train.bn_group`): group g forwards the g-th slice of every view as one
/// batch, so BatchNorm normalises over that group only — what a rank of a data-parallel run
/// with N/group ranks computes — and running statistics follow the first group only (the
/// reference's rank 0, whose buffers DDP broadcasts). `group` ≥ N: one batch of all the views.
/// Returns `out[v][o]`: output `o` of `f` for view `v`, the groups concatenated.
pub(crate) fn ghost_bn<M>(
    m: &mut M,
    tape: &mut Tape,
    xs: &[Var],
    group: usize,
    store: fn(&mut M) -> &mut ParamStore,
    f: impl Fn(&mut M, &mut Tape, Var) -> Result<Vec<Var>>,
) -> Result<Vec<Vec<Var>>> {
    let n = tape.value(xs[0]).shape()[0];
    let g = group.clamp(1, n.max(1));
    let sizes: Vec<usize> = (0..n).step_by(g).map(|s| g.min(n - s)).collect();
    let parts: Vec<Vec<Var>> = if sizes.len() == 1 {
        xs.iter().map(|&x| vec![x]).collect()
    } else {
        xs.iter()
            .map(|&x| tape.split(x, &sizes))
            .collect::<Result<_>>()?
    };
    let frozen = store(m).freeze_running_stats;
    // outs[v][o][group]
    let mut outs: Vec<Vec<Vec<Var>>> = vec![Vec::new(); xs.len()];
    for (gi, &size) in sizes.iter().enumerate() {
        let slices: Vec<Var> = parts.iter().map(|p| p[gi]).collect();
        let input = if slices.len() == 1 {
            slices[0]
        } else {
            tape.concat(&slices)?
        };
        store(m).freeze_running_stats = frozen || gi > 0;
        let ys = f(m, tape, input);
        store(m).freeze_running_stats = frozen;
        for (o, y) in ys?.into_iter().enumerate() {
            let per_view = if xs.len() == 1 {
                vec![y]
            } else {
                tape.split(y, &vec![size; xs.len()])?
            };
            for (v, yv) in per_view.into_iter().enumerate() {
                if outs[v].len() <= o {
                    outs[v].push(Vec::new());
                }
                outs[v][o].push(yv);
            }
        }
    }
    outs.into_iter()
        .map(|per_out| {
            per_out
                .into_iter()
                .map(|gs| {
                    if gs.len() == 1 {
                        Ok(gs[0])
                    } else {
                        tape.concat(&gs)
                    }
                })
                .collect()
        })
        .collect()
}

/// The two views of a two-view method's loss, or a shape error naming the method.
pub(crate) fn two_views(method: &'static str, views: &[Var]) -> Result<(Var, Var)> {
    match views {
        &[a, b] => Ok((a, b)),
        _ => Err(crate::error::Error::shape(
            method,
            format!("takes 2 views per step, got {}", views.len()),
        )),
    }
}

/// Backbone features [N, D] of images [N, 3, H, W] in eval mode, without gradients.
pub fn embed(method: &mut dyn Method, tape: &mut Tape, x: Var) -> Result<Var> {
    let backbone = method.backbone().clone();
    let store = method.store_mut();
    let bound = store.bind(tape, false);
    tape.no_grad(|t| backbone.forward(t, store, &bound, x, false))
}

/// The last-stage feature map [N, C, h, w] (heatmaps), eval mode, no gradients.
pub fn feature_map(method: &mut dyn Method, tape: &mut Tape, x: Var) -> Result<Var> {
    let backbone = method.backbone().clone();
    let store = method.store_mut();
    let bound = store.bind(tape, false);
    tape.no_grad(|t| backbone.forward_features(t, store, &bound, x, false))
}

/// EMA of every weight named `{prefix}X` towards the weight `X` (BN buffers are not
/// averaged: each encoder keeps its own running statistics, as the references).
pub fn ema_towards_online(store: &mut crate::nn::ParamStore, prefix: &str, m: f32) -> Result<()> {
    let pairs: Vec<(usize, usize)> = store
        .params
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind != crate::nn::Kind::Buffer)
        .filter_map(|(t, p)| {
            p.name
                .strip_prefix(prefix)
                .and_then(|n| store.id(n))
                .map(|o| (t, o))
        })
        .collect();
    for (t, o) in pairs {
        let online = store.params[o].value.clone();
        crate::optim::ema_update(&mut store.params[t].value, &online, m)?;
    }
    Ok(())
}

/// MoCo's library configuration from its `[method]` keys (MoCo's, or CLSA's MoCo base).
fn moco_config(
    m: &crate::config::MocoCfg,
    cfg: &crate::config::Config,
    hard: HardNegCfg,
) -> moco::MocoConfig {
    moco::MocoConfig {
        dim: m.dim,
        k: m.queue,
        momentum: m.momentum,
        temperature: m.temperature,
        bn_group: cfg.train.bn_group_for(&cfg.method),
        shuffle: m.shuffle,
        seed: cfg.train.seed,
        hard,
    }
}

/// The hard negatives of a run configuration.
fn hard_negatives(cfg: &crate::config::Config) -> HardNegCfg {
    HardNegCfg {
        count: cfg.mask.hard_negatives(&cfg.method),
        alpha: cfg.mask.alpha,
        per_sample: !cfg.mask.reference_batch_negative,
    }
}

/// The method a run configuration asks for, freshly initialised from `rng` on `device`.
pub fn build(
    cfg: &crate::config::Config,
    rng: &mut impl rand::Rng,
    device: &crate::tensor::Device,
) -> Result<Box<dyn Method>> {
    use crate::config::MethodCfg;
    let model = cfg.resnet()?;
    let mut method: Box<dyn Method> = match &cfg.method {
        MethodCfg::Simclr(m) => Box::new(simclr::SimClr::new(
            model,
            simclr::SimClrConfig {
                dim: m.dim,
                temperature: m.temperature,
                loss_scale: m.loss_scale(),
                hard: hard_negatives(cfg),
                bn_group: cfg.train.bn_group_for(&cfg.method),
                gather: m.gather,
            },
            rng,
            device,
        )?),
        MethodCfg::Moco(m) => Box::new(moco::Moco::new(
            model,
            moco_config(m, cfg, hard_negatives(cfg)),
            rng,
            device,
        )?),
        MethodCfg::Byol(m) => Box::new(byol::Byol::new(
            model,
            byol::ByolConfig {
                hidden: m.hidden,
                dim: m.dim,
                pred_hidden: m.pred_hidden,
                momentum: m.momentum,
                schedule: if m.momentum_schedule == "cosine" {
                    byol::MomentumSchedule::Cosine
                } else {
                    byol::MomentumSchedule::Constant
                },
                target_init: if m.target_init == "copy" {
                    byol::TargetInit::Copy
                } else {
                    byol::TargetInit::Independent
                },
                bn_group: cfg.train.bn_group_for(&cfg.method),
            },
            rng,
            device,
        )?),
        MethodCfg::Clsa(m) => {
            // The counts do not depend on the image size.
            let (weak, strong) = clsa::query_counts(&cfg.view_specs(32));
            Box::new(clsa::Clsa::new(
                model,
                clsa::ClsaConfig {
                    moco: moco_config(&m.moco(), cfg, HardNegCfg::default()),
                    alpha: m.alpha,
                    t2: m.t2,
                    weak,
                    strong,
                },
                rng,
                device,
            )?)
        }
        MethodCfg::Simsiam(m) => Box::new(simsiam::SimSiam::new(
            model,
            simsiam::SimSiamConfig {
                dim: m.dim,
                pred_dim: m.pred_dim,
                fix_pred_lr: m.fix_pred_lr,
                bn_group: cfg.train.bn_group_for(&cfg.method),
            },
            rng,
            device,
        )?),
    };
    method.store_mut().sync_bn = cfg.train.sync_bn;
    Ok(method)
}
