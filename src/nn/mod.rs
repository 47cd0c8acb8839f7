//! Layers over the op set, with parameters kept in a named store (torchvision names and
//! layouts, so state dicts map 1:1 onto `torchvision.models`).

pub mod resnet;

use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::batchnorm::BatchNorm;
use crate::ops::conv2d::Conv2d;
use crate::tensor::{Device, Tensor};

/// What a store entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Optimised: gets a gradient and an optimiser update.
    Trainable,
    /// A weight that takes part in forward passes but is not optimised (momentum / target
    /// encoders updated by EMA, SimSiam's frozen projector bias).
    Frozen,
    /// Not a weight (BN running statistics, queues).
    Buffer,
}

/// A named tensor.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub kind: Kind,
}

impl Param {
    pub fn trainable(&self) -> bool {
        self.kind == Kind::Trainable
    }
}

/// All parameters and buffers of a model, in registration order.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    pub params: Vec<Param>,
    /// Train-mode BN normalises with batch statistics but leaves the running statistics
    /// alone while this is set (MoCo's ghost-BN groups after the first: the reference keeps
    /// rank 0's buffers, updated once per forward).
    pub freeze_running_stats: bool,
    /// Train-mode BN takes its statistics over every rank's batch (`train.sync_bn`, data
    /// parallelism; no effect on one rank).
    pub sync_bn: bool,
}

/// Tape variables for the trainable entries of a store (`None` for buffers).
pub struct Bound {
    vars: Vec<Option<Var>>,
}

impl Bound {
    pub fn var(&self, id: usize) -> Result<Var> {
        self.vars
            .get(id)
            .copied()
            .flatten()
            .ok_or_else(|| Error::Autograd(format!("parameter #{id} is not bound to the tape")))
    }
    /// (store id, var) of every bound parameter.
    pub fn iter(&self) -> impl Iterator<Item = (usize, Var)> + '_ {
        self.vars
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
    }
}

impl ParamStore {
    /// Add a weight (`trainable`) or a buffer.
    pub fn add(&mut self, name: impl Into<String>, value: Tensor, trainable: bool) -> usize {
        self.add_kind(
            name,
            value,
            if trainable {
                Kind::Trainable
            } else {
                Kind::Buffer
            },
        )
    }

    pub fn add_kind(&mut self, name: impl Into<String>, value: Tensor, kind: Kind) -> usize {
        self.params.push(Param {
            name: name.into(),
            value,
            kind,
        });
        self.params.len() - 1
    }

    /// Change every weight whose name starts with `prefix` to `kind` (buffers stay buffers).
    pub fn set_kind(&mut self, prefix: &str, kind: Kind) {
        for p in &mut self.params {
            if p.kind != Kind::Buffer && p.name.starts_with(prefix) {
                p.kind = kind;
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }

    /// Put every weight on the tape: trainable ones as leaves that need a gradient (when
    /// `trainable`; as constants otherwise, e.g. for evaluation), frozen ones as constants.
    /// Buffers are not bound.
    pub fn bind(&self, tape: &mut Tape, trainable: bool) -> Bound {
        let vars = self
            .params
            .iter()
            .map(|p| match p.kind {
                Kind::Trainable if trainable => Some(tape.param(p.value.clone())),
                Kind::Trainable | Kind::Frozen => Some(tape.input(p.value.clone())),
                Kind::Buffer => None,
            })
            .collect();
        Bound { vars }
    }

    /// Two distinct entries mutably (BN running mean and variance).
    pub fn pair_mut(&mut self, a: usize, b: usize) -> (&mut Tensor, &mut Tensor) {
        assert!(a < b, "pair_mut expects a < b");
        let (lo, hi) = self.params.split_at_mut(b);
        (&mut lo[a].value, &mut hi[0].value)
    }

    /// Copy values from `other` by name (shapes must match); returns how many were copied.
    pub fn load_from(&mut self, other: &ParamStore) -> Result<usize> {
        let mut n = 0;
        for p in &mut self.params {
            if let Some(o) = other.get(&p.name) {
                if o.value.shape() != p.value.shape() {
                    return Err(Error::shape(
                        "load",
                        format!(
                            "{}: shape {:?} vs {:?}",
                            p.name,
                            o.value.shape(),
                            p.value.shape()
                        ),
                    ));
                }
                p.value = o.value.to_device(&p.value.device())?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn to_device(&self, device: &Device) -> Result<ParamStore> {
        let params = self
            .params
            .iter()
            .map(|p| {
                Ok(Param {
                    name: p.name.clone(),
                    value: p.value.to_device(device)?,
                    kind: p.kind,
                })
            })
            .collect::<Result<_>>()?;
        Ok(ParamStore {
            params,
            freeze_running_stats: self.freeze_running_stats,
            sync_bn: self.sync_bn,
        })
    }
}

/// Kaiming-normal (fan_out, ReLU gain) conv weights, as torchvision's ResNet init.
fn kaiming_normal_fan_out(shape: &[usize], rng: &mut impl Rng, device: &Device) -> Result<Tensor> {
    let fan_out: usize = shape[0] * shape[2..].iter().product::<usize>();
    let std = (2.0 / fan_out as f32).sqrt();
    let n = Normal::new(0.0f32, std).map_err(|e| Error::Autograd(e.to_string()))?;
    Tensor::from_vec(
        (0..shape.iter().product()).map(|_| n.sample(rng)).collect(),
        shape,
        device,
    )
}

/// PyTorch's default Linear init: U(±1/√fan_in) for weight and bias.
fn linear_default(
    shape: &[usize],
    fan_in: usize,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<Tensor> {
    let b = 1.0 / (fan_in as f32).sqrt();
    let u = Uniform::new_inclusive(-b, b).map_err(|e| Error::Autograd(e.to_string()))?;
    Tensor::from_vec(
        (0..shape.iter().product()).map(|_| u.sample(rng)).collect(),
        shape,
        device,
    )
}

/// Convolution without bias.
#[derive(Clone, Debug)]
pub struct Conv {
    pub weight: usize,
    pub cfg: Conv2d,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Conv> {
        let w = kaiming_normal_fan_out(&[cout, cin, k, k], rng, device)?;
        Ok(Conv {
            weight: store.add(format!("{name}.weight"), w, true),
            cfg: Conv2d::new(stride, pad),
        })
    }
    pub fn forward(&self, tape: &mut Tape, b: &Bound, x: Var) -> Result<Var> {
        tape.conv2d(x, b.var(self.weight)?, self.cfg)
    }
}

/// Batch norm with running statistics in the store.
#[derive(Clone, Debug)]
pub struct Bn {
    pub weight: Option<usize>,
    pub bias: Option<usize>,
    pub running_mean: usize,
    pub running_var: usize,
    pub cfg: BatchNorm,
}

impl Bn {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        c: usize,
        affine: bool,
        device: &Device,
    ) -> Result<Bn> {
        let (weight, bias) = if affine {
            (
                Some(store.add(format!("{name}.weight"), Tensor::ones(&[c], device)?, true)),
                Some(store.add(format!("{name}.bias"), Tensor::zeros(&[c], device)?, true)),
            )
        } else {
            (None, None)
        };
        let running_mean = store.add(
            format!("{name}.running_mean"),
            Tensor::zeros(&[c], device)?,
            false,
        );
        let running_var = store.add(
            format!("{name}.running_var"),
            Tensor::ones(&[c], device)?,
            false,
        );
        Ok(Bn {
            weight,
            bias,
            running_mean,
            running_var,
            cfg: BatchNorm::default(),
        })
    }
    /// γ and β (when affine), whether the running statistics update, and whether the
    /// statistics are synchronised over the ranks.
    fn setup(
        &self,
        store: &ParamStore,
        b: &Bound,
        train: bool,
    ) -> Result<(Option<Var>, Option<Var>, bool, bool)> {
        let g = self.weight.map(|i| b.var(i)).transpose()?;
        let bb = self.bias.map(|i| b.var(i)).transpose()?;
        let update = train && !store.freeze_running_stats;
        let sync = train && store.sync_bn && crate::dist::parallel();
        Ok((g, bb, update, sync))
    }

    pub fn forward(
        &self,
        tape: &mut Tape,
        store: &mut ParamStore,
        b: &Bound,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        let (g, bb, update, sync) = self.setup(store, b, train)?;
        let (rm, rv) = store.pair_mut(self.running_mean, self.running_var);
        if sync {
            tape.batch_norm_sync(x, g, bb, rm, rv, self.cfg, update)
        } else {
            tape.batch_norm_with(x, g, bb, rm, rv, self.cfg, train, update)
        }
    }

    /// relu(BN(x) [+ residual]): one fused op (synchronised BN runs the three steps).
    pub fn forward_relu(
        &self,
        tape: &mut Tape,
        store: &mut ParamStore,
        b: &Bound,
        x: Var,
        train: bool,
        residual: Option<Var>,
    ) -> Result<Var> {
        let (g, bb, update, sync) = self.setup(store, b, train)?;
        if sync {
            let mut y = self.forward(tape, store, b, x, train)?;
            if let Some(r) = residual {
                y = tape.add(y, r)?;
            }
            return tape.relu(y);
        }
        let (rm, rv) = store.pair_mut(self.running_mean, self.running_var);
        tape.batch_norm_relu(x, g, bb, rm, rv, self.cfg, (train, update), residual)
    }
}

/// Linear layer, PyTorch layout (`weight` [out, in]).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: usize,
    pub bias: Option<usize>,
}

impl Linear {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        fin: usize,
        fout: usize,
        bias: bool,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Linear> {
        let weight = store.add(
            format!("{name}.weight"),
            linear_default(&[fout, fin], fin, rng, device)?,
            true,
        );
        let bias = if bias {
            Some(store.add(
                format!("{name}.bias"),
                linear_default(&[fout], fin, rng, device)?,
                true,
            ))
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
    pub fn forward(&self, tape: &mut Tape, b: &Bound, x: Var) -> Result<Var> {
        let bias = self.bias.map(|i| b.var(i)).transpose()?;
        tape.linear(x, b.var(self.weight)?, bias)
    }
}

/// One layer of an [`Mlp`].
#[derive(Clone, Copy, Debug)]
pub enum Layer {
    Linear { fin: usize, fout: usize, bias: bool },
    Bn { c: usize, affine: bool },
    Relu,
}

#[derive(Clone, Debug)]
enum Built {
    Linear(Linear),
    Bn(Bn),
    Relu,
}

/// A head as an `nn.Sequential`: layer i's parameters are named `{prefix}.{i}.weight` etc.
#[derive(Clone, Debug)]
pub struct Mlp {
    layers: Vec<Built>,
}

impl Mlp {
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        spec: &[Layer],
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Mlp> {
        let layers = spec
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let name = format!("{prefix}.{i}");
                Ok(match *l {
                    Layer::Linear { fin, fout, bias } => {
                        Built::Linear(Linear::new(store, &name, fin, fout, bias, rng, device)?)
                    }
                    Layer::Bn { c, affine } => Built::Bn(Bn::new(store, &name, c, affine, device)?),
                    Layer::Relu => Built::Relu,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Mlp { layers })
    }

    pub fn forward(
        &self,
        tape: &mut Tape,
        store: &mut ParamStore,
        b: &Bound,
        mut x: Var,
        train: bool,
    ) -> Result<Var> {
        for l in &self.layers {
            x = match l {
                Built::Linear(lin) => lin.forward(tape, b, x)?,
                Built::Bn(bn) => bn.forward(tape, store, b, x, train)?,
                Built::Relu => tape.relu(x)?,
            };
        }
        Ok(x)
    }
}
