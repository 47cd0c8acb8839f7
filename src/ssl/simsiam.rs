//! SimSiam (SPEC A.5): backbone with zero_init_residual; projector Linear(D, D, no bias) →
//! BN → ReLU → Linear(D, D, no bias) → BN → ReLU → Linear(D, dim) whose bias is frozen →
//! BN1d(dim, affine = False), with D the backbone's feature width (`prev_dim` in the
//! reference: 512 for ResNet-18 at width 64, 2048 for ResNet-50); predictor Linear(dim, 128, no bias) → BN → ReLU →
//! Linear(128, dim); loss −0.5·(mean cos(p1, z2) + mean cos(p2, z1)) with z detached; the
//! predictor keeps its initial learning rate (`fix_pred_lr`). Views are forwarded separately.

use rand::Rng;

use super::losses::symmetric_neg_cosine;
use super::Method;
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::nn::resnet::{ResNet, ResNetConfig};
use crate::nn::{Bound, Kind, Layer, Mlp, ParamStore};
use crate::tensor::Device;

#[derive(Clone, Debug)]
pub struct SimSiamConfig {
    pub dim: usize,
    pub pred_dim: usize,
    pub fix_pred_lr: bool,
    /// Ghost-BN group (`train.bn_group`; `usize::MAX`: the whole batch).
    pub bn_group: usize,
}

impl Default for SimSiamConfig {
    fn default() -> Self {
        Self {
            dim: 512,
            pred_dim: 128,
            fix_pred_lr: true,
            bn_group: usize::MAX,
        }
    }
}

pub struct SimSiam {
    pub cfg: SimSiamConfig,
    store: ParamStore,
    backbone: ResNet,
    projector: Mlp,
    predictor: Mlp,
}

impl SimSiam {
    pub fn new(
        model: ResNetConfig,
        cfg: SimSiamConfig,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<SimSiam> {
        let mut store = ParamStore::default();
        let backbone = ResNet::new(
            ResNetConfig {
                num_classes: None,
                zero_init_residual: true,
                ..model
            },
            &mut store,
            rng,
            device,
        )?;
        // The reference's projector is as wide as the backbone's features (`prev_dim`).
        let (d, h, p) = (backbone.out_dim, backbone.out_dim, cfg.pred_dim);
        let proj = [
            Layer::Linear {
                fin: d,
                fout: h,
                bias: false,
            },
            Layer::Bn { c: h, affine: true },
            Layer::Relu,
            Layer::Linear {
                fin: h,
                fout: h,
                bias: false,
            },
            Layer::Bn { c: h, affine: true },
            Layer::Relu,
            Layer::Linear {
                fin: h,
                fout: cfg.dim,
                bias: true,
            },
            Layer::Bn {
                c: cfg.dim,
                affine: false,
            },
        ];
        let projector = Mlp::new(&mut store, "projector", &proj, rng, device)?;
        store.set_kind("projector.6.bias", Kind::Frozen);
        let pred = [
            Layer::Linear {
                fin: cfg.dim,
                fout: p,
                bias: false,
            },
            Layer::Bn { c: p, affine: true },
            Layer::Relu,
            Layer::Linear {
                fin: p,
                fout: cfg.dim,
                bias: true,
            },
        ];
        let predictor = Mlp::new(&mut store, "predictor", &pred, rng, device)?;
        Ok(SimSiam {
            cfg,
            store,
            backbone,
            projector,
            predictor,
        })
    }

    fn branch(&mut self, tape: &mut Tape, b: &Bound, x: Var) -> Result<(Var, Var)> {
        let f = self.backbone.forward(tape, &mut self.store, b, x, true)?;
        let z = self.projector.forward(tape, &mut self.store, b, f, true)?;
        let p = self.predictor.forward(tape, &mut self.store, b, z, true)?;
        Ok((z, p))
    }
}

impl Method for SimSiam {
    method_accessors!("simsiam");
    fn fixed_lr(&self, name: &str) -> bool {
        self.cfg.fix_pred_lr && name.starts_with("predictor.")
    }
    fn loss(&mut self, tape: &mut Tape, b: &Bound, views: &[Var]) -> Result<Var> {
        let (v1, v2) = super::two_views("simsiam", views)?;
        let g = self.cfg.bn_group;
        let branch = |m: &mut Self, t: &mut Tape, x: Var| {
            let (z, p) = m.branch(t, b, x)?;
            Ok(vec![z, p])
        };
        let o1 = super::ghost_bn(self, tape, &[v1], g, |m| &mut m.store, branch)?;
        let o2 = super::ghost_bn(self, tape, &[v2], g, |m| &mut m.store, branch)?;
        let (z1, p1, z2, p2) = (o1[0][0], o1[0][1], o2[0][0], o2[0][1]);
        symmetric_neg_cosine(tape, p1, p2, z1, z2, -0.5)
    }
}
