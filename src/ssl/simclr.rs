//! SimCLR (SPEC A.5): ResNet backbone, projector Linear(D, D) → ReLU → Linear(D, dim) with
//! biases and no BN (named `fc.0`, `fc.2` as the reference's nn.Sequential), NT-Xent over
//! both views forwarded as one batch of 2B (shared BN statistics, as the reference; views of
//! two sizes are forwarded one after the other), with
//! temperature τ and the `loss_scale` factor (τ/base_τ with base_τ = 0.07, as the reference).
//! With saliency-guided masking, hard-negative views follow the two views: each is embedded
//! by the same encoder without gradient and enters both views' denominators as α·(z·t)/τ.

use rand::Rng;

use super::losses::{nt_xent_gathered, nt_xent_hard};
use super::{negative_batches, views_with_negatives, HardNegCfg, Method};
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::nn::resnet::{ResNet, ResNetConfig};
use crate::nn::{Bound, Linear, ParamStore};
use crate::tensor::Device;

/// The reference's base temperature: the loss is multiplied by τ / `BASE_TEMPERATURE`.
pub const BASE_TEMPERATURE: f32 = 0.07;

#[derive(Clone, Debug)]
pub struct SimClrConfig {
    pub dim: usize,
    pub temperature: f32,
    pub loss_scale: f32,
    /// Hard negatives in the denominator (saliency-guided masking; none by default).
    pub hard: HardNegCfg,
    /// Ghost-BN group (`train.bn_group`; `usize::MAX`: the whole batch).
    pub bn_group: usize,
    /// With several ranks: every rank's embeddings as negatives (`method.gather`).
    pub gather: bool,
}

impl SimClrConfig {
    /// The reference's loss factor for temperature `tau`: τ / 0.07.
    pub fn reference_loss_scale(tau: f32) -> f32 {
        tau / BASE_TEMPERATURE
    }
}

impl Default for SimClrConfig {
    fn default() -> Self {
        Self {
            dim: 128,
            temperature: 0.5,
            loss_scale: Self::reference_loss_scale(0.5),
            hard: HardNegCfg::default(),
            bn_group: usize::MAX,
            gather: true,
        }
    }
}

pub struct SimClr {
    pub cfg: SimClrConfig,
    store: ParamStore,
    backbone: ResNet,
    fc1: Linear,
    fc2: Linear,
}

impl SimClr {
    pub fn new(
        model: ResNetConfig,
        cfg: SimClrConfig,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<SimClr> {
        let mut store = ParamStore::default();
        let backbone = ResNet::new(
            ResNetConfig {
                num_classes: None,
                ..model
            },
            &mut store,
            rng,
            device,
        )?;
        let d = backbone.out_dim;
        let fc1 = Linear::new(&mut store, "fc.0", d, d, true, rng, device)?;
        let fc2 = Linear::new(&mut store, "fc.2", d, cfg.dim, true, rng, device)?;
        Ok(SimClr {
            cfg,
            store,
            backbone,
            fc1,
            fc2,
        })
    }

    /// Projections [N, dim] of images [N, 3, H, W]; `train` selects batch statistics (the
    /// loss) or the running ones (collapse checks, which batch statistics would hide).
    pub fn project(&mut self, tape: &mut Tape, bound: &Bound, x: Var, train: bool) -> Result<Var> {
        let f = self
            .backbone
            .forward(tape, &mut self.store, bound, x, train)?;
        let h = self.fc1.forward(tape, bound, f)?;
        let h = tape.relu(h)?;
        self.fc2.forward(tape, bound, h)
    }
}

impl Method for SimClr {
    method_accessors!("simclr");
    fn view_count(&self) -> usize {
        2 + self.cfg.hard.count
    }
    fn loss(&mut self, tape: &mut Tape, bound: &Bound, views: &[Var]) -> Result<Var> {
        let hard = self.cfg.hard;
        let (v1, v2, negs) = views_with_negatives("simclr", views, &hard)?;
        let g = self.cfg.bn_group;
        let project = |m: &mut Self, t: &mut Tape, x: Var| Ok(vec![m.project(t, bound, x, true)?]);
        let parts = if tape.value(v1).shape() == tape.value(v2).shape() {
            // Both views as one batch of 2B: shared BN statistics, as the reference (per
            // ghost group: the group's images of both views).
            let z = super::ghost_bn(self, tape, &[v1, v2], g, |m| &mut m.store, project)?;
            vec![z[0][0], z[1][0]]
        } else {
            // Views of two sizes cannot share a batch: each its own BN statistics.
            let z1 = super::ghost_bn(self, tape, &[v1], g, |m| &mut m.store, project)?;
            let z2 = super::ghost_bn(self, tape, &[v2], g, |m| &mut m.store, project)?;
            vec![z1[0][0], z2[0][0]]
        };
        // Hard negatives: embedded by the same encoder without gradient, BN on their own
        // batch statistics without touching the running ones.
        let negs = negative_batches(tape, negs, &hard)?;
        let mut t = Vec::with_capacity(negs.len());
        for x in negs {
            self.store.freeze_running_stats = true;
            let z = tape.no_grad(|tp| self.project(tp, bound, x, true));
            self.store.freeze_running_stats = false;
            t.push(z?);
        }
        let loss = if self.cfg.gather {
            nt_xent_gathered
        } else {
            nt_xent_hard
        };
        loss(
            tape,
            parts[0],
            parts[1],
            &t,
            hard.alpha,
            self.cfg.temperature,
            self.cfg.loss_scale,
        )
    }
}
