//! The step's half of saliency-guided masking (SPEC B.3, D.7): the saliency of each masked
//! view's source (the model's own layer-4 map in eval mode — the map ContrastiveCrop's
//! heatmaps use — or a frozen external backbone's), then the device op that masks the view
//! from the loader's plan and fill. Everything stays on the run's device: no readback.

use std::collections::hash_map::{Entry, HashMap};
use std::path::PathBuf;

use crate::autograd::Tape;
use crate::data::loader::{Batch, ViewConfig, ViewMask, ViewSpec};
use crate::data::masking::MaskRecipe;
use crate::error::{Error, Result};
use crate::nn::resnet::ResNet;
use crate::nn::ParamStore;
use crate::ops::saliency_mask::{mask_views, plan_len};
use crate::ssl::{feature_map, Method};
use crate::tensor::{Device, Tensor};

/// A run's masking: the loader's recipe, the hard negatives the loss takes, and where the
/// saliency comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskTraining {
    pub recipe: MaskRecipe,
    /// Hard negatives per image (views with mask = neg).
    pub hard_negatives: usize,
    /// One negative per image (false: the reference's one-per-batch quirk).
    pub per_sample: bool,
    /// A frozen backbone file for the saliency (None: the model's own layer-4 map).
    pub saliency_backbone: Option<PathBuf>,
}

impl MaskTraining {
    /// The masking a run configuration asks for (None: `mask.strategy = "none"`).
    pub fn from_config(cfg: &crate::config::Config) -> Option<MaskTraining> {
        let m = &cfg.mask;
        Some(MaskTraining {
            recipe: m.recipe()?,
            hard_negatives: m.hard_negatives(&cfg.method),
            per_sample: !m.reference_batch_negative,
            saliency_backbone: m.saliency_backbone.as_ref().map(PathBuf::from),
        })
    }

    /// Every view must be at least the grid and the strategy's filters wide, and a hard
    /// negative (a copy of its key) its key's size.
    pub fn check_view_sizes(&self, specs: &[ViewSpec], defaults: bool) -> Result<()> {
        for (v, s) in specs.iter().enumerate() {
            let key = (0..v).rev().find(|&u| specs[u].mask == ViewMask::None);
            if let (ViewMask::Neg, Some(k)) = (s.mask, key) {
                if specs[k].size != s.size {
                    return Err(Error::Config {
                        field: "views".into(),
                        msg: format!(
                            "view {v} (mask = neg) copies view {k} of {} px but asks for {} px: give it its key's size",
                            specs[k].size, s.size
                        ),
                    });
                }
            }
        }
        let min = self.recipe.strategy.min_size().max(self.recipe.grid);
        match specs.iter().find(|s| s.size < min) {
            Some(s) => Err(Error::Config {
                field: if defaults { "mask.grid" } else { "views" }.into(),
                msg: format!(
                    "views of {} px are below the {min} px that mask.strategy = \"{}\" with mask.grid = {} needs",
                    s.size,
                    self.recipe.strategy.name(),
                    self.recipe.grid
                ),
            }),
            None => Ok(()),
        }
    }

    /// Hard-negative logits per step that enter the loss, for a batch of `b` images.
    pub fn negatives_per_step(&self, b: usize) -> usize {
        if self.per_sample {
            self.hard_negatives * b
        } else {
            self.hard_negatives
        }
    }
}

/// Masks a batch's views in the step.
pub struct Masker {
    recipe: MaskRecipe,
    external: Option<(ResNet, ParamStore)>,
}

impl Masker {
    pub fn new(cfg: &MaskTraining, device: &Device) -> Result<Masker> {
        let external = match &cfg.saliency_backbone {
            Some(p) => Some(crate::train::checkpoint::load_backbone(p, device)?),
            None => None,
        };
        Ok(Masker {
            recipe: cfg.recipe,
            external,
        })
    }

    /// A masker whose saliency comes from the trained model (`apply`'s method).
    pub fn with_recipe(recipe: MaskRecipe) -> Masker {
        Masker {
            recipe,
            external: None,
        }
    }

    /// A masker whose saliency comes from `net` (e.g. a checkpoint's backbone in `viz`).
    pub fn with_backbone(recipe: MaskRecipe, net: ResNet, store: ParamStore) -> Masker {
        Masker {
            recipe,
            external: Some((net, store)),
        }
    }

    /// The last-stage feature map [N, C, h, w] of images `x`, eval mode, no gradients: the
    /// external backbone's, else `method`'s.
    pub fn features<'m>(
        &mut self,
        method: Option<&mut (dyn Method + 'm)>,
        x: Tensor,
    ) -> Result<Tensor> {
        let mut tape = Tape::new();
        let xv = tape.input(x);
        let f = match (&mut self.external, method) {
            (Some((net, store)), _) => {
                let b = store.bind(&mut tape, false);
                tape.no_grad(|t| net.forward_features(t, store, &b, xv, false))?
            }
            (None, Some(m)) => feature_map(m, &mut tape, xv)?,
            (None, None) => {
                return Err(crate::error::Error::Autograd(
                    "saliency masking needs a model or a saliency backbone".into(),
                ))
            }
        };
        Ok(tape.value(f).clone())
    }

    /// Replace the masked views of `inputs` (the batch's views on `device`, in spec order)
    /// with their masked versions.
    pub fn apply(
        &mut self,
        mut method: Option<&mut dyn Method>,
        view: &ViewConfig,
        batch: &Batch,
        inputs: &mut [Tensor],
        device: &Device,
    ) -> Result<()> {
        let b = batch.indices.len();
        let g = self.recipe.grid;
        let mut features: HashMap<usize, Tensor> = HashMap::new();
        for v in 0..inputs.len() {
            let Some(s) = view.saliency_source(v) else {
                continue;
            };
            let f = match features.entry(s) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let size = batch.sizes[s];
                    let src = if batch.plain[s].is_empty() {
                        inputs[s].clone()
                    } else {
                        Tensor::from_vec(batch.plain[s].clone(), &[b, 3, size, size], device)?
                    };
                    e.insert(self.features(method.as_deref_mut(), src)?)
                }
            };
            let size = batch.sizes[v];
            let rule = self.recipe.rule(size, view.views[v].mask == ViewMask::Pos);
            let plan = Tensor::from_vec(batch.plans[v].clone(), &[b, plan_len(g)], device)?;
            let fill = Tensor::from_vec(batch.fills[v].clone(), &[b, 3, size, size], device)?;
            inputs[v] = mask_views(&inputs[v], f, &fill, &plan, g, rule)?;
        }
        Ok(())
    }
}
