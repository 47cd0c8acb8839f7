//! Self-supervised methods over one trait: a method owns its encoder(s) and heads (in one
//! named parameter store) and its loss; the trainer owns the loop, the optimiser and the
//! data. The losses are pure tape functions in [`losses`].

pub mod losses;
pub mod simclr;

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
    /// Record one step's loss for two views, each [B, 3, H, W].
    fn loss(&mut self, tape: &mut Tape, bound: &Bound, v1: Var, v2: Var) -> Result<Var>;
    /// Hook after the optimiser step (momentum encoders, queues).
    fn after_step(&mut self) -> Result<()> {
        Ok(())
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
