//! ResNet-18/34 (BasicBlock) and ResNet-50 (Bottleneck, stride on the 3×3 as torchvision
//! v1.5), with the CIFAR stem (3×3 s1, no max-pool) or the ImageNet stem (7×7 s2 + 3×3 s2
//! max-pool), a base-width knob (64 = standard), torchvision's initialisation and parameter
//! names (`conv1.weight`, `layer2.0.downsample.0.weight`, `bn1.running_mean`, ...). The
//! classifier `fc` is optional: SSL methods build their own heads on the pooled features.

use rand::Rng;

use super::{Bn, Bound, Conv, Linear, ParamStore};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::pool::MaxPool;
use crate::tensor::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    Cifar,
    Imagenet,
}

#[derive(Clone, Debug)]
pub struct ResNetConfig {
    pub arch: Arch,
    pub stem: Stem,
    pub width: usize,
    pub zero_init_residual: bool,
    /// Classifier outputs (`fc`); `None` for a backbone.
    pub num_classes: Option<usize>,
}

#[derive(Clone, Debug)]
struct Block {
    convs: Vec<Conv>,
    bns: Vec<Bn>,
    downsample: Option<(Conv, Bn)>,
}

#[derive(Clone, Debug)]
pub struct ResNet {
    pub cfg: ResNetConfig,
    conv1: Conv,
    bn1: Bn,
    layers: Vec<Vec<Block>>,
    pub fc: Option<Linear>,
    /// Channels of the pooled features.
    pub out_dim: usize,
}

impl ResNet {
    pub fn new(
        cfg: ResNetConfig,
        store: &mut ParamStore,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<ResNet> {
        Self::new_prefixed("", cfg, store, rng, device)
    }

    /// A ResNet whose parameter names start with `prefix` (e.g. `target.` for BYOL's target
    /// encoder, which lives in the same store as the online one).
    pub fn new_prefixed(
        prefix: &str,
        cfg: ResNetConfig,
        store: &mut ParamStore,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<ResNet> {
        if cfg.width == 0 {
            return Err(Error::Config {
                field: "model.width".into(),
                msg: "must be at least 1".into(),
            });
        }
        let w = cfg.width;
        let conv1 = match cfg.stem {
            Stem::Cifar => Conv::new(store, &format!("{prefix}conv1"), 3, w, 3, 1, 1, rng, device)?,
            Stem::Imagenet => {
                Conv::new(store, &format!("{prefix}conv1"), 3, w, 7, 2, 3, rng, device)?
            }
        };
        let bn1 = Bn::new(store, &format!("{prefix}bn1"), w, true, device)?;
        let mut layers: Vec<Vec<Block>> = vec![Vec::new(); 4];
        let mut inplanes = w;
        for spec in cfg.blocks() {
            let name = format!("{prefix}layer{}.{}", spec.stage + 1, spec.index);
            let mut convs = Vec::new();
            let mut bns = Vec::new();
            // Every conv of the residual branch is followed by its BN; padding is kernel/2.
            for (i, &(k, cin, cout, s)) in spec.convs.iter().enumerate() {
                convs.push(Conv::new(
                    store,
                    &format!("{name}.conv{}", i + 1),
                    cin,
                    cout,
                    k,
                    s,
                    k / 2,
                    rng,
                    device,
                )?);
                bns.push(Bn::new(
                    store,
                    &format!("{name}.bn{}", i + 1),
                    cout,
                    true,
                    device,
                )?);
            }
            let downsample = match spec.downsample {
                Some((cin, cout, s)) => Some((
                    Conv::new(
                        store,
                        &format!("{name}.downsample.0"),
                        cin,
                        cout,
                        1,
                        s,
                        0,
                        rng,
                        device,
                    )?,
                    Bn::new(store, &format!("{name}.downsample.1"), cout, true, device)?,
                )),
                None => None,
            };
            if cfg.zero_init_residual {
                // The last BN of each residual branch starts at 0: the block is the identity.
                let last = bns.last().and_then(|b| b.weight).expect("affine BN");
                let shape = store.params[last].value.shape().to_vec();
                store.params[last].value = crate::tensor::Tensor::zeros(&shape, device)?;
            }
            inplanes = spec.convs.last().map_or(inplanes, |c| c.2);
            layers[spec.stage].push(Block {
                convs,
                bns,
                downsample,
            });
        }
        let fc = match cfg.num_classes {
            Some(k) => Some(Linear::new(
                store,
                &format!("{prefix}fc"),
                inplanes,
                k,
                true,
                rng,
                device,
            )?),
            None => None,
        };
        Ok(ResNet {
            cfg,
            conv1,
            bn1,
            layers,
            fc,
            out_dim: inplanes,
        })
    }

    /// The last stage's output [N, C, h, w] (after the final block's ReLU): the feature map
    /// ContrastiveCrop's heatmaps are made from.
    pub fn forward_features(
        &self,
        tape: &mut Tape,
        store: &mut ParamStore,
        b: &Bound,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        let mut h = self.conv1.forward(tape, b, x)?;
        h = self.bn1.forward_relu(tape, store, b, h, train, None)?;
        if self.cfg.stem == Stem::Imagenet {
            h = tape.max_pool2d(
                h,
                MaxPool {
                    k: 3,
                    stride: 2,
                    pad: 1,
                },
            )?;
        }
        for blocks in &self.layers {
            for blk in blocks {
                // relu(BN(conv(·))) inside the block; the last BN fused with the shortcut's
                // add and the block's ReLU.
                let identity = h;
                let mut y = h;
                let n = blk.convs.len();
                for (conv, bn) in blk.convs.iter().zip(&blk.bns).take(n - 1) {
                    y = conv.forward(tape, b, y)?;
                    y = bn.forward_relu(tape, store, b, y, train, None)?;
                }
                let sc = match &blk.downsample {
                    Some((conv, bn)) => {
                        let s = conv.forward(tape, b, identity)?;
                        bn.forward(tape, store, b, s, train)?
                    }
                    None => identity,
                };
                let (conv, bn) = (&blk.convs[n - 1], &blk.bns[n - 1]);
                y = conv.forward(tape, b, y)?;
                h = bn.forward_relu(tape, store, b, y, train, Some(sc))?;
            }
        }
        Ok(h)
    }

    /// Pooled features [N, out_dim] (or logits when `fc` exists).
    pub fn forward(
        &self,
        tape: &mut Tape,
        store: &mut ParamStore,
        b: &Bound,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        let h = self.forward_features(tape, store, b, x, train)?;
        let f = tape.global_avg_pool(h)?;
        match &self.fc {
            Some(fc) => fc.forward(tape, b, f),
            None => Ok(f),
        }
    }
}

/// One residual block of an architecture: its stage (0..4) and index in the stage, the
/// branch's convolutions as (kernel, in, out, stride), and the projection shortcut as
/// (in, out, stride) when the stride or width changes.
#[derive(Clone, Debug)]
pub struct BlockSpec {
    pub stage: usize,
    pub index: usize,
    pub convs: Vec<(usize, usize, usize, usize)>,
    pub downsample: Option<(usize, usize, usize)>,
}

impl ResNetConfig {
    /// Every residual block in order (torchvision's layout; Bottleneck v1.5 strides on the 3×3).
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let (depths, bottleneck) = match self.arch {
            Arch::Resnet18 => ([2, 2, 2, 2], false),
            Arch::Resnet34 => ([3, 4, 6, 3], false),
            Arch::Resnet50 => ([3, 4, 6, 3], true),
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let mut inplanes = self.width;
        let mut out = Vec::new();
        for (stage, &depth) in depths.iter().enumerate() {
            let planes = self.width << stage;
            for index in 0..depth {
                let s = if stage > 0 && index == 0 { 2 } else { 1 };
                let convs = if bottleneck {
                    vec![
                        (1, inplanes, planes, 1),
                        (3, planes, planes, s),
                        (1, planes, planes * expansion, 1),
                    ]
                } else {
                    vec![(3, inplanes, planes, s), (3, planes, planes, 1)]
                };
                let downsample = (s != 1 || inplanes != planes * expansion).then_some((
                    inplanes,
                    planes * expansion,
                    s,
                ));
                out.push(BlockSpec {
                    stage,
                    index,
                    convs,
                    downsample,
                });
                inplanes = planes * expansion;
            }
        }
        out
    }

    /// The last stage's feature map size (h, w) for an input of h×w (the heatmaps' grid).
    pub fn feature_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let (mut h, mut w) = match self.stem {
            Stem::Cifar => (h, w),
            Stem::Imagenet => (conv_out(h, 7, 2).div_ceil(2), conv_out(w, 7, 2).div_ceil(2)),
        };
        for spec in self.blocks() {
            for (k, _, _, st) in spec.convs {
                (h, w) = (conv_out(h, k, st), conv_out(w, k, st));
            }
        }
        (h, w)
    }

    /// Multiply-adds of one image's forward pass through the convolutions (the FLOPs that
    /// matter; BN, ReLU, pooling and heads are ignored) at input size h×w.
    pub fn forward_macs(&self, h: usize, w: usize) -> usize {
        let conv = |cin: usize, cout: usize, k: usize, s: usize, h: usize, w: usize| {
            let (oh, ow) = (conv_out(h, k, s), conv_out(w, k, s));
            (cin * cout * k * k * oh * ow, oh, ow)
        };
        let wd = self.width;
        let (mut total, mut h, mut w) = match self.stem {
            Stem::Cifar => conv(3, wd, 3, 1, h, w),
            Stem::Imagenet => {
                let (m, oh, ow) = conv(3, wd, 7, 2, h, w);
                (m, oh.div_ceil(2), ow.div_ceil(2))
            }
        };
        for spec in self.blocks() {
            let (h0, w0) = (h, w);
            for (k, cin, cout, st) in spec.convs {
                let (m, oh, ow) = conv(cin, cout, k, st, h, w);
                total += m;
                (h, w) = (oh, ow);
            }
            if let Some((cin, cout, s)) = spec.downsample {
                total += conv(cin, cout, 1, s, h0, w0).0;
            }
        }
        total
    }
}

/// Output length of a k×k convolution with stride `s` and padding k/2 along an axis of `len`.
fn conv_out(len: usize, k: usize, s: usize) -> usize {
    (len + 2 * (k / 2) - k) / s + 1
}
