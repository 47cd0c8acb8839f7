//! CLSA (Wang & Qi, "Contrastive Learning with Stronger Augmentations"; SPEC B.4, D.10): MoCo
//! v2 (key encoder EMA, queue, shuffled ghost BN for the keys — [`Moco`] underneath, the same
//! parameter names) with weak queries contrasted against every in-batch key and the queue, and
//! strongly augmented queries whose distribution over the same keys learns to match the weak
//! ones' (DDM at T₂). Views: [key, weak queries…, strong queries…] (single-crop: one of each;
//! multi-crop: five of each at five sizes); total loss Σ CE_weak + α·Σ DDM over every
//! (weak, strong) pair, as the reference with `sym = 0`.

use rand::Rng;

use super::losses::clsa_loss;
use super::moco::{Moco, MocoConfig};
use super::Method;
use crate::autograd::{Tape, Var};
use crate::crop::sampler::RrcParams;
use crate::data::loader::{Augment, CropSource, ViewMask, ViewSpec};
use crate::error::{Error, Result};
use crate::nn::resnet::{ResNet, ResNetConfig};
use crate::nn::{Bound, ParamStore};
use crate::tensor::{Device, Tensor};

#[derive(Clone, Debug)]
pub struct ClsaConfig {
    pub moco: MocoConfig,
    /// Weight of the DDM terms.
    pub alpha: f32,
    /// DDM temperature T₂.
    pub t2: f32,
    /// Weak and strong queries per image (after the key view).
    pub weak: usize,
    pub strong: usize,
}

impl Default for ClsaConfig {
    fn default() -> Self {
        Self {
            moco: MocoConfig::default(),
            alpha: 1.0,
            t2: 0.2,
            weak: 1,
            strong: 1,
        }
    }
}

/// The reference's crop specs: output sizes at 224 px and RandomResizedCrop scale ranges.
pub const REFERENCE_SIZES: [usize; 5] = [224, 192, 160, 128, 96];
pub const MIN_SCALES: [f64; 5] = [0.2, 0.172, 0.143, 0.114, 0.086];
pub const MAX_SCALES: [f64; 5] = [1.0, 0.86, 0.715, 0.571, 0.429];

/// Crop spec `i`'s output size for images of `size` pixels: the reference's size scaled by
/// size/224, rounded (CIFAR: 32, 27, 23, 18, 14; STL-10: 96, 82, 69, 55, 41).
pub fn spec_size(i: usize, size: usize) -> usize {
    ((REFERENCE_SIZES[i] * size) as f64 / 224.0)
        .round()
        .max(1.0) as usize
}

/// The views of a recipe: the key (weak, at the image size, `key` RRC), then the weak
/// queries, then the strong ones. Single-crop: a weak query from spec 0 and a strong one from
/// spec 4 (the reference's `--size_crops 224 96`, `pick_weak 0`, `pick_strong 1`);
/// multi-crop: all five of each. Weak views (and the key) come from `weak_source` (the run's
/// crop kind: ContrastiveCrop's boxes with ccrop), strong ones are RandomResizedCrops of the
/// whole image, as the reference's independent crops.
pub fn recipe_views(
    multi: bool,
    size: usize,
    key: RrcParams,
    weak_source: CropSource,
) -> Vec<ViewSpec> {
    let spec = |i: usize, source, augment| ViewSpec {
        source,
        size: spec_size(i, size),
        rrc: if i == 0 {
            key
        } else {
            RrcParams {
                scale: (MIN_SCALES[i], MAX_SCALES[i]),
                ratio: key.ratio,
            }
        },
        augment,
        mask: ViewMask::None,
    };
    let specs: Vec<usize> = if multi { (0..5).collect() } else { vec![0] };
    let strong: Vec<usize> = if multi { (0..5).collect() } else { vec![4] };
    let mut views = vec![spec(0, weak_source, Augment::Ssl)];
    views.extend(specs.iter().map(|&i| spec(i, weak_source, Augment::Ssl)));
    views.extend(
        strong
            .iter()
            .map(|&i| spec(i, CropSource::Scene, Augment::Strong)),
    );
    views
}

/// (weak, strong) query counts of a view list in the CLSA order.
pub fn query_counts(views: &[ViewSpec]) -> (usize, usize) {
    let strong = views
        .iter()
        .filter(|v| v.augment == Augment::Strong)
        .count();
    (views.len().saturating_sub(1 + strong), strong)
}

pub struct Clsa {
    pub cfg: ClsaConfig,
    moco: Moco,
    /// Σ DDM of the last step (a one-element tensor on the run's device).
    last_ddm: Option<Tensor>,
}

impl Clsa {
    pub fn new(
        model: ResNetConfig,
        cfg: ClsaConfig,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Clsa> {
        if cfg.weak == 0 || cfg.strong == 0 {
            return Err(Error::Config {
                field: "views".into(),
                msg: "CLSA needs at least one weak and one strong query view".into(),
            });
        }
        let moco = Moco::new(model, cfg.moco.clone(), rng, device)?;
        Ok(Clsa {
            cfg,
            moco,
            last_ddm: None,
        })
    }

    pub fn moco(&self) -> &Moco {
        &self.moco
    }
}

impl Method for Clsa {
    fn name(&self) -> &'static str {
        "clsa"
    }
    fn store(&self) -> &ParamStore {
        self.moco.store()
    }
    fn store_mut(&mut self) -> &mut ParamStore {
        self.moco.store_mut()
    }
    fn backbone(&self) -> &ResNet {
        self.moco.backbone()
    }
    fn view_count(&self) -> usize {
        1 + self.cfg.weak + self.cfg.strong
    }
    fn before_step(&mut self, step: usize, total: usize) -> Result<()> {
        self.moco.before_step(step, total)
    }
    fn extra_state(&self) -> serde_json::Value {
        self.moco.extra_state()
    }
    fn load_extra_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.moco.load_extra_state(state)
    }
    fn after_step(&mut self) -> Result<()> {
        self.moco.after_step()
    }
    fn loss(&mut self, tape: &mut Tape, b: &Bound, views: &[Var]) -> Result<Var> {
        if views.len() != self.view_count() {
            return Err(Error::shape(
                "clsa",
                format!(
                    "takes {} views per step (a key, {} weak and {} strong queries), got {}",
                    self.view_count(),
                    self.cfg.weak,
                    self.cfg.strong,
                    views.len()
                ),
            ));
        }
        // Every rank's keys (shuffled BN across the ranks), enqueued and contrasted against.
        let (_, k_all) = self.moco.keys_all(tape, b, views[0])?;
        self.moco.set_pending(&k_all)?;
        let mut weak = Vec::with_capacity(self.cfg.weak);
        for &x in &views[1..1 + self.cfg.weak] {
            weak.push(self.moco.queries(tape, b, x)?);
        }
        let mut strong = Vec::with_capacity(self.cfg.strong);
        for &x in &views[1 + self.cfg.weak..] {
            strong.push(self.moco.queries(tape, b, x)?);
        }
        let queue = self.moco.queue().clone();
        let temps = (self.cfg.moco.temperature, self.cfg.t2, self.cfg.alpha);
        let offset = crate::dist::place().rank * tape.value(views[0]).shape()[0];
        let (total, ddm) = clsa_loss(tape, &weak, &strong, (&k_all, offset), &queue, temps)?;
        self.last_ddm = Some(tape.value(ddm).clone());
        Ok(total)
    }
    fn loss_parts(&self) -> Vec<(&'static str, Tensor)> {
        self.last_ddm
            .iter()
            .map(|t| ("loss_ddm", t.clone()))
            .collect()
    }
}
