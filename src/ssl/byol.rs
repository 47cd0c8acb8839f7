//! BYOL (SPEC A.5): online backbone + projector Linear(D, 512) → BN1d → ReLU → Linear(512,
//! 128) + predictor Linear(128, 512) → BN1d → ReLU → Linear(512, 128); a target backbone +
//! projector of the same shape (`target.` names, frozen), updated before every step by
//! t ← m·t + (1 − m)·o with m constant (0.996, the reference) or cosine-ramped to 1. The
//! target starts as a copy of the online network or, as the reference, from an independent
//! random init. Views are forwarded separately (per-view BN statistics); the target runs in
//! train mode; loss −2·(mean cos(p1, z2) + mean cos(p2, z1)) with z detached.

use rand::Rng;

use super::losses::symmetric_neg_cosine;
use super::{ema_towards_online, Method};
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::nn::resnet::{ResNet, ResNetConfig};
use crate::nn::{Bound, Kind, Layer, Mlp, ParamStore};
use crate::tensor::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetInit {
    Copy,
    Independent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MomentumSchedule {
    Constant,
    /// m_t = 1 − (1 − m)·(cos(π·t) + 1)/2 over training progress t ∈ [0, 1].
    Cosine,
}

#[derive(Clone, Debug)]
pub struct ByolConfig {
    pub hidden: usize,
    pub dim: usize,
    pub pred_hidden: usize,
    pub momentum: f32,
    pub schedule: MomentumSchedule,
    pub target_init: TargetInit,
    /// Ghost-BN group (`train.bn_group`; `usize::MAX`: the whole batch).
    pub bn_group: usize,
}

impl Default for ByolConfig {
    fn default() -> Self {
        Self {
            hidden: 512,
            dim: 128,
            pred_hidden: 512,
            momentum: 0.996,
            schedule: MomentumSchedule::Constant,
            target_init: TargetInit::Independent,
            bn_group: usize::MAX,
        }
    }
}

pub const TARGET: &str = "target.";

pub struct Byol {
    pub cfg: ByolConfig,
    store: ParamStore,
    backbone: ResNet,
    projector: Mlp,
    predictor: Mlp,
    t_backbone: ResNet,
    t_projector: Mlp,
}

fn projector_spec(d: usize, cfg: &ByolConfig) -> [Layer; 4] {
    [
        Layer::Linear {
            fin: d,
            fout: cfg.hidden,
            bias: true,
        },
        Layer::Bn {
            c: cfg.hidden,
            affine: true,
        },
        Layer::Relu,
        Layer::Linear {
            fin: cfg.hidden,
            fout: cfg.dim,
            bias: true,
        },
    ]
}

impl Byol {
    pub fn new(
        model: ResNetConfig,
        cfg: ByolConfig,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Byol> {
        let mut store = ParamStore::default();
        let model = ResNetConfig {
            num_classes: None,
            ..model
        };
        let backbone = ResNet::new(model.clone(), &mut store, rng, device)?;
        let d = backbone.out_dim;
        let projector = Mlp::new(
            &mut store,
            "projector",
            &projector_spec(d, &cfg),
            rng,
            device,
        )?;
        let pred = [
            Layer::Linear {
                fin: cfg.dim,
                fout: cfg.pred_hidden,
                bias: true,
            },
            Layer::Bn {
                c: cfg.pred_hidden,
                affine: true,
            },
            Layer::Relu,
            Layer::Linear {
                fin: cfg.pred_hidden,
                fout: cfg.dim,
                bias: true,
            },
        ];
        let predictor = Mlp::new(&mut store, "predictor", &pred, rng, device)?;
        let t_backbone = ResNet::new_prefixed(TARGET, model, &mut store, rng, device)?;
        let t_projector = Mlp::new(
            &mut store,
            &format!("{TARGET}projector"),
            &projector_spec(d, &cfg),
            rng,
            device,
        )?;
        store.set_kind(TARGET, Kind::Frozen);
        if cfg.target_init == TargetInit::Copy {
            ema_towards_online(&mut store, TARGET, 0.0)?;
        }
        Ok(Byol {
            cfg,
            store,
            backbone,
            projector,
            predictor,
            t_backbone,
            t_projector,
        })
    }

    pub fn momentum_at(&self, progress: f64) -> f32 {
        match self.cfg.schedule {
            MomentumSchedule::Constant => self.cfg.momentum,
            MomentumSchedule::Cosine => {
                1.0 - (1.0 - self.cfg.momentum)
                    * ((std::f64::consts::PI * progress.clamp(0.0, 1.0)).cos() as f32 + 1.0)
                    / 2.0
            }
        }
    }

    fn online(&mut self, tape: &mut Tape, b: &Bound, x: Var) -> Result<Var> {
        let f = self.backbone.forward(tape, &mut self.store, b, x, true)?;
        let z = self.projector.forward(tape, &mut self.store, b, f, true)?;
        self.predictor.forward(tape, &mut self.store, b, z, true)
    }

    fn target(&mut self, tape: &mut Tape, b: &Bound, x: Var) -> Result<Var> {
        let f = self.t_backbone.forward(tape, &mut self.store, b, x, true)?;
        self.t_projector.forward(tape, &mut self.store, b, f, true)
    }
}

impl Method for Byol {
    method_accessors!("byol");
    fn before_step(&mut self, step: usize, total: usize) -> Result<()> {
        let m = self.momentum_at(step as f64 / total.max(1) as f64);
        ema_towards_online(&mut self.store, TARGET, m)
    }
    fn loss(&mut self, tape: &mut Tape, b: &Bound, views: &[Var]) -> Result<Var> {
        let (v1, v2) = super::two_views("byol", views)?;
        let g = self.cfg.bn_group;
        let online = |m: &mut Self, t: &mut Tape, x: Var| Ok(vec![m.online(t, b, x)?]);
        let target = |m: &mut Self, t: &mut Tape, x: Var| Ok(vec![m.target(t, b, x)?]);
        let store: fn(&mut Self) -> &mut ParamStore = |m| &mut m.store;
        // Each view its own BN batch, as the reference (per ghost group).
        let p1 = super::ghost_bn(self, tape, &[v1], g, store, online)?[0][0];
        let p2 = super::ghost_bn(self, tape, &[v2], g, store, online)?[0][0];
        let (z1, z2) = tape.no_grad(|t| -> Result<(Var, Var)> {
            Ok((
                super::ghost_bn(self, t, &[v1], g, store, target)?[0][0],
                super::ghost_bn(self, t, &[v2], g, store, target)?[0][0],
            ))
        })?;
        symmetric_neg_cosine(tape, p1, p2, z1, z2, -2.0)
    }
}
