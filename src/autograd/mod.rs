//! The tape. Every recorded op appends a node holding its value, its inputs and a backward
//! closure; node indices are therefore already a topological order, and backward walks them
//! in reverse, summing gradients where a value was used more than once.
//!
//! `detach` and `no_grad` cut the graph (SimSiam's and BYOL's stop-gradient; the momentum
//! encoder's forward). Parameters are ordinary leaves created with `requires_grad = true`.

pub mod profile;

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::time::Instant;

/// A value on the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(pub(crate) usize);

impl Var {
    pub fn index(self) -> usize {
        self.0
    }
}

/// Maps the gradient of an op's output to the gradients of its inputs (`None`: no gradient
/// flows to that input). The second argument says which inputs need a gradient: an op skips
/// the work for the others (the images' gradient at the stem, MoCo's constant keys and
/// queue in the similarity matmul).
pub type BackwardFn = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send>;

struct Node {
    value: Tensor,
    inputs: Vec<Var>,
    backward: Option<BackwardFn>,
    requires_grad: bool,
    op: &'static str,
}

pub struct Tape {
    nodes: Vec<Node>,
    grad_enabled: bool,
    /// When the last node was added (profiling only: an op's forward is timed from there).
    last_node: Option<Instant>,
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

/// Gradients from one backward pass, indexed by `Var`.
#[derive(Debug)]
pub struct Grads {
    grads: Vec<Option<Tensor>>,
}

impl Grads {
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        self.grads.get(v.0).and_then(|g| g.as_ref())
    }
    pub fn take(&mut self, v: Var) -> Option<Tensor> {
        self.grads.get_mut(v.0).and_then(|g| g.take())
    }
    /// Replace the gradient of `v` (e.g. by its average over the ranks).
    pub fn set(&mut self, v: Var, g: Tensor) {
        if let Some(slot) = self.grads.get_mut(v.0) {
            *slot = Some(g);
        }
    }
}

impl Tape {
    pub fn new() -> Self {
        Self {
            nodes: Vec::new(),
            grad_enabled: true,
            last_node: None,
        }
    }

    /// A leaf (input or parameter).
    pub fn leaf(&mut self, value: Tensor, requires_grad: bool) -> Var {
        self.time_forward("leaf");
        self.nodes.push(Node {
            value,
            inputs: Vec::new(),
            backward: None,
            requires_grad: requires_grad && self.grad_enabled,
            op: "leaf",
        });
        Var(self.nodes.len() - 1)
    }

    /// A constant input (no gradient).
    pub fn input(&mut self, value: Tensor) -> Var {
        self.leaf(value, false)
    }

    /// A parameter (gradient wanted).
    pub fn param(&mut self, value: Tensor) -> Var {
        self.leaf(value, true)
    }

    pub fn value(&self, v: Var) -> &Tensor {
        &self.nodes[v.0].value
    }

    pub fn requires_grad(&self, v: Var) -> bool {
        self.nodes[v.0].requires_grad
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Record an op's output. The backward closure is kept only when gradients are enabled and
    /// some input needs one.
    pub fn record(
        &mut self,
        op: &'static str,
        value: Tensor,
        inputs: &[Var],
        backward: impl FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + 'static,
    ) -> Var {
        self.time_forward(op);
        let requires_grad =
            self.grad_enabled && inputs.iter().any(|v| self.nodes[v.0].requires_grad);
        self.nodes.push(Node {
            value,
            inputs: inputs.to_vec(),
            backward: requires_grad.then(|| Box::new(backward) as BackwardFn),
            requires_grad,
            op,
        });
        Var(self.nodes.len() - 1)
    }

    /// With profiling on, charge the time since the last node to `op`'s forward.
    fn time_forward(&mut self, op: &'static str) {
        if !profile::enabled() {
            return;
        }
        let now = Instant::now();
        if let Some(t) = self.last_node {
            profile::add(op, false, now - t);
        }
        self.last_node = Some(now);
    }

    /// The same value, cut from the graph (stop-gradient).
    pub fn detach(&mut self, v: Var) -> Var {
        let value = self.nodes[v.0].value.clone();
        self.leaf(value, false)
    }

    /// Run `f` with gradient recording off: everything it records is constant.
    pub fn no_grad<R>(&mut self, f: impl FnOnce(&mut Tape) -> R) -> R {
        let prev = self.grad_enabled;
        self.grad_enabled = false;
        let r = f(self);
        self.grad_enabled = prev;
        r
    }

    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    /// Backward from a scalar (one-element) output with seed 1.
    pub fn backward(&mut self, loss: Var) -> Result<Grads> {
        let v = self.value(loss);
        if v.numel() != 1 {
            return Err(Error::Autograd(format!(
                "backward needs a scalar loss, got shape {:?} (use backward_with to seed a gradient)",
                v.shape()
            )));
        }
        let seed = Tensor::ones(v.shape(), &v.device())?;
        self.backward_with(loss, seed)
    }

    /// Backward from `out` seeded with `grad` (same shape as `out`). Consumes the backward
    /// closures: a tape is differentiated once. Gradients of intermediate nodes are released as
    /// soon as they have been propagated; leaf gradients are kept.
    pub fn backward_with(&mut self, out: Var, grad: Tensor) -> Result<Grads> {
        if grad.shape() != self.value(out).shape() {
            return Err(Error::Autograd(format!(
                "seed gradient shape {:?} does not match output shape {:?}",
                grad.shape(),
                self.value(out).shape()
            )));
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        grads[out.0] = Some(grad);
        for i in (0..=out.0).rev() {
            let Some(g) = grads[i].clone() else { continue };
            let node = &mut self.nodes[i];
            let Some(bw) = node.backward.take() else {
                continue;
            };
            let inputs = node.inputs.clone();
            let op = node.op;
            let needs: Vec<bool> = inputs
                .iter()
                .map(|v| self.nodes[v.0].requires_grad)
                .collect();
            let t0 = profile::enabled().then(Instant::now);
            let in_grads = bw(&g, &needs)?;
            if let Some(t0) = t0 {
                profile::add(op, true, t0.elapsed());
            }
            if in_grads.len() != inputs.len() {
                return Err(Error::Autograd(format!(
                    "{op}: backward returned {} gradients for {} inputs",
                    in_grads.len(),
                    inputs.len()
                )));
            }
            // Intermediate gradient no longer needed.
            grads[i] = None;
            for ((inp, ig), need) in inputs.into_iter().zip(in_grads).zip(needs) {
                let Some(ig) = ig else { continue };
                if !need {
                    continue;
                }
                if ig.shape() != self.nodes[inp.0].value.shape() {
                    return Err(Error::Autograd(format!(
                        "{op}: gradient shape {:?} for input of shape {:?}",
                        ig.shape(),
                        self.nodes[inp.0].value.shape()
                    )));
                }
                grads[inp.0] = Some(match grads[inp.0].take() {
                    None => ig,
                    Some(acc) => {
                        let t0 = profile::enabled().then(Instant::now);
                        let sum = crate::ops::elementwise::add(&acc, &ig)?;
                        if let Some(t0) = t0 {
                            profile::add("gradient sum", true, t0.elapsed());
                        }
                        sum
                    }
                });
            }
        }
        Ok(Grads { grads })
    }
}
