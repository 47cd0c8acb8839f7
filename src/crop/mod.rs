//! Crops: ContrastiveCrop's semantic boxes ([`heatmap`]), object proposals ([`proposals`],
//! [`object`]), the samplers ([`sampler`], [`semantic`]) and the schedule.

pub mod heatmap;
pub mod object;
pub mod proposals;
pub mod saliency;
pub mod sampler;
pub mod schedule;
pub mod semantic;
pub mod viz;

use std::sync::Arc;

use sampler::BoxF;

/// A run's crop kind (`[crop] kind`).
#[derive(Clone, Debug, PartialEq)]
pub enum CropKind {
    /// RandomResizedCrop throughout (the R-Crop baseline).
    Rcrop,
    /// ContrastiveCrop: per-axis Beta(α, α) positions in the heatmap box.
    Ccrop,
    /// SemanticCrop: ContrastiveCrop's boxes with view 2's position pushed away from view
    /// 1's (`sigma`, see [`semantic`]); `sigma = None` draws independently.
    SemanticCrop { sigma: Option<f64> },
    /// Object-aware crops from heatmap proposals (or a proposals file).
    ObjectCrop(ObjectCfg),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ObjectCfg {
    pub crop: object::ObjectCrop,
    pub pair: object::ObjectPair,
    /// Proposals kept per image (heatmap components).
    pub max_proposals: usize,
    /// Proposals read from a file (dataset order): used from epoch 1, never recomputed.
    pub fixed: Option<Arc<Vec<Vec<BoxF>>>>,
    /// Swap the two views with probability 0.5 (the reference's order swap).
    pub swap: bool,
}

impl CropKind {
    pub fn name(&self) -> &'static str {
        match self {
            CropKind::Rcrop => "rcrop",
            CropKind::Ccrop => "ccrop",
            CropKind::SemanticCrop { .. } => "semanticcrop",
            CropKind::ObjectCrop(_) => "objectcrop",
        }
    }

    /// Whether the kind computes heatmaps (boxes or proposals) on a schedule.
    pub fn uses_heatmaps(&self) -> bool {
        match self {
            CropKind::Rcrop => false,
            CropKind::ObjectCrop(o) => o.fixed.is_none(),
            _ => true,
        }
    }
}
