//! Checkpoints: one safetensors file with everything needed to continue a run exactly —
//! every store entry (`param/<name>`: weights, BN running statistics, EMA / target weights,
//! MoCo's queue), the optimiser's momentum buffers (`momentum/<name>`), the ContrastiveCrop
//! box table (`boxes`, dataset order), objectcrop's proposals (`proposals` [N, P, 4] zero-padded
//! past `proposal_counts` [N]), and in the metadata the epoch and step reached, the
//! method, its extra state (e.g. the queue pointer) and the run's configuration. Written
//! atomically: a temporary file in the same directory, synced, then renamed.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::crop::sampler::BoxF;
use crate::error::{Error, Result};
use crate::ssl::Method;
use crate::tensor::{Device, Tensor};
use rand::SeedableRng;

pub const FORMAT: &str = "viewcraft-checkpoint-1";

/// Where a run stands: `epoch` epochs complete, `step` optimiser steps in all, and `batch`
/// batches of epoch `epoch + 1` already trained on (non-zero only for a checkpoint written
/// mid-epoch, e.g. on Ctrl-C).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub epoch: usize,
    pub step: usize,
    pub batch: usize,
}

/// What a checkpoint restores beside the method's tensors.
#[derive(Clone, Debug)]
pub struct Resumed {
    pub pos: Position,
    pub boxes: Vec<BoxF>,
    /// Object proposals per image (objectcrop runs; `None` in other checkpoints).
    pub proposals: Option<Vec<Vec<BoxF>>>,
}

/// The metadata of a checkpoint (format, method, epoch, step, the run's config...).
/// Only the file's header is read (8-byte length + JSON), not its tensors.
pub fn metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |m: String| Error::file(path, m);
    let mut f =
        std::fs::File::open(path).map_err(|e| bad(format!("cannot read checkpoint: {e}")))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| bad(format!("not a safetensors checkpoint: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(bad(format!(
            "not a safetensors checkpoint: header of {n} bytes"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("not a safetensors checkpoint: {e}")))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a safetensors checkpoint: {e}")))?;
    Ok(v.get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default())
}

/// The run position recorded in a checkpoint's metadata (`batch` is absent in files written
/// before mid-epoch checkpoints existed: 0).
pub fn position(meta: &HashMap<String, String>, path: &Path) -> Result<Position> {
    let num = |k: &str| -> Result<usize> {
        meta.get(k)
            .ok_or_else(|| Error::file(path, format!("metadata `{k}` missing")))?
            .parse()
            .map_err(|e| Error::file(path, format!("metadata `{k}`: {e}")))
    };
    Ok(Position {
        epoch: num("epoch")?,
        step: num("step")?,
        batch: if meta.contains_key("batch") {
            num("batch")?
        } else {
            0
        },
    })
}

/// Refuse to continue a run from checkpoint `path` with another configuration: its
/// position counts batches of its own batch size, so another batch size would misread it,
/// and any other change would not continue the same run. `config_text` is the continuing
/// run's resolved configuration; the device and the loader's threads may differ. A
/// checkpoint without a readable configuration is checked on its recorded batch size.
pub fn check_resumable(path: &Path, config_text: &str, batch_size: usize) -> Result<()> {
    use crate::config::Config;
    let meta = metadata(path)?;
    let saved = meta
        .get("config")
        .and_then(|t| Config::from_toml(t, &path.display().to_string()).ok());
    let recorded = match meta.get("batch_size") {
        Some(b) => Some(
            b.parse::<usize>()
                .map_err(|e| Error::file(path, format!("metadata `batch_size`: {e}")))?,
        ),
        None => saved.as_ref().map(|c| c.train.batch_size),
    };
    match recorded {
        None => {
            return Err(Error::file(
                path,
                "records no batch size, so its position cannot be read: resume from a checkpoint viewcraft wrote",
            ))
        }
        Some(b) if b != batch_size => {
            return Err(Error::file(
                path,
                format!("was written with train.batch_size = {b}, not {batch_size}: resume with the run's own configuration"),
            ))
        }
        Some(_) => {}
    }
    // A data-parallel run resumes with its own number of ranks (they decide the BN groups).
    let ranks = crate::dist::place().size;
    if let Some(r) = meta.get("ranks").and_then(|r| r.parse::<usize>().ok()) {
        if r != ranks {
            return Err(Error::file(
                path,
                format!("was written by a run of {r} rank(s), this one has {ranks}: resume with the same number of processes"),
            ));
        }
    }
    let comparable = |c: &Config| {
        let mut c = c.clone();
        c.train.device.clear();
        c.data.workers = 0;
        c.moved_bn_group = false;
        c
    };
    // Either side without a configuration (a library caller's empty text, an unreadable
    // one) leaves the batch size as the check.
    let new = (!config_text.trim().is_empty())
        .then(|| Config::from_toml(config_text, "the run").ok())
        .flatten();
    if let (Some(old), Some(new)) = (saved, new) {
        let (old, new) = (comparable(&old), comparable(&new));
        let differs = [
            ("model", old.model != new.model),
            ("method", old.method != new.method),
            ("data", old.data != new.data),
            ("crop", old.crop != new.crop),
            ("train", old.train != new.train),
            ("knn", old.knn != new.knn),
            ("linear", old.linear != new.linear),
        ];
        if let Some((section, _)) = differs.iter().find(|(_, d)| *d) {
            return Err(Error::file(
                path,
                format!("was written by a run with a different configuration ([{section}] differs); resume with the same config or start a new run"),
            ));
        }
    }
    Ok(())
}

/// Little-endian f32 values of a tensor's bytes.
fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Write `path` atomically.
#[allow(clippy::too_many_arguments)]
pub fn save(
    path: &Path,
    method: &dyn Method,
    momentum: &[Option<Tensor>],
    boxes: &[BoxF],
    proposals: &[Vec<BoxF>],
    pos: Position,
    batch_size: usize,
    config: &str,
) -> Result<()> {
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (p, m) in method.store().params.iter().zip(momentum) {
        named.push((
            format!("param/{}", p.name),
            p.value.shape().to_vec(),
            bytes(&p.value.to_vec()?),
        ));
        if let Some(m) = m {
            named.push((
                format!("momentum/{}", p.name),
                m.shape().to_vec(),
                bytes(&m.to_vec()?),
            ));
        }
    }
    let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
    named.push(("boxes".into(), vec![boxes.len(), 4], bytes(&flat)));
    if !proposals.is_empty() {
        // [N, P, 4] padded with zeros past each image's `proposal_counts` entry.
        let p = proposals.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = vec![0f32; proposals.len() * p * 4];
        for (i, list) in proposals.iter().enumerate() {
            for (j, b) in list.iter().enumerate() {
                flat[(i * p + j) * 4..(i * p + j + 1) * 4].copy_from_slice(b);
            }
        }
        let counts: Vec<f32> = proposals.iter().map(|l| l.len() as f32).collect();
        named.push((
            "proposals".into(),
            vec![proposals.len(), p, 4],
            bytes(&flat),
        ));
        named.push((
            "proposal_counts".into(),
            vec![proposals.len()],
            bytes(&counts),
        ));
    }
    let views = named
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::file(path, format!("cannot encode checkpoint: {e}")))?;
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("method".to_string(), method.name().to_string()),
        ("epoch".to_string(), pos.epoch.to_string()),
        ("step".to_string(), pos.step.to_string()),
        ("batch".to_string(), pos.batch.to_string()),
        ("batch_size".to_string(), batch_size.to_string()),
        ("ranks".to_string(), crate::dist::place().size.to_string()),
        ("extra".to_string(), method.extra_state().to_string()),
        ("config".to_string(), config.to_string()),
    ]);
    let data = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::file(path, format!("cannot encode checkpoint: {e}")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::file(dir, format!("cannot create the checkpoint directory: {e}"))
        })?;
    }
    crate::train::atomic::write_atomic(path, &data)
}

/// Restore `method` and `momentum` from `path` onto `device`.
pub fn load(
    path: &Path,
    method: &mut dyn Method,
    momentum: &mut [Option<Tensor>],
    device: &Device,
) -> Result<Resumed> {
    let raw = std::fs::read(path)
        .map_err(|e| Error::file(path, format!("cannot read checkpoint: {e}")))?;
    let bad = |m: String| Error::file(path, m);
    let (_, meta) = SafeTensors::read_metadata(&raw)
        .map_err(|e| bad(format!("not a safetensors checkpoint: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| bad(format!("metadata `{k}` missing")))
    };
    if get("format")? != FORMAT {
        return Err(bad(format!("format `{}` is not {FORMAT}", get("format")?)));
    }
    if get("method")? != method.name() {
        return Err(bad(format!(
            "checkpoint of method `{}`, not `{}`",
            get("method")?,
            method.name()
        )));
    }
    let st = SafeTensors::deserialize(&raw).map_err(|e| bad(format!("corrupt checkpoint: {e}")))?;
    let read = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let t = st
            .tensor(name)
            .map_err(|_| bad(format!("tensor `{name}` missing")))?;
        if t.shape() != shape || t.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor `{name}` is {:?} {:?}, expected F32 {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        let v = f32s(t.data());
        Tensor::from_vec(v, shape, device)
    };
    let names: Vec<(String, Vec<usize>)> = method
        .store()
        .params
        .iter()
        .map(|p| (p.name.clone(), p.value.shape().to_vec()))
        .collect();
    for (i, (name, shape)) in names.iter().enumerate() {
        method.store_mut().params[i].value = read(&format!("param/{name}"), shape)?;
        if let Some(m) = momentum.get_mut(i).and_then(|m| m.as_mut()) {
            *m = read(&format!("momentum/{name}"), shape)?;
        }
    }
    let b = st
        .tensor("boxes")
        .map_err(|_| bad("tensor `boxes` missing".into()))?;
    let n = b.shape().first().copied().unwrap_or(0);
    let flat = read("boxes", &[n, 4])?.to_vec()?;
    let boxes = flat
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    let extra: serde_json::Value =
        serde_json::from_str(&get("extra")?).map_err(|e| bad(format!("metadata `extra`: {e}")))?;
    method.load_extra_state(&extra)?;
    let proposals = match st.tensor("proposals") {
        Err(_) => None,
        Ok(t) => {
            let &[n, p, 4] = t.shape() else {
                return Err(bad(format!(
                    "tensor `proposals` is {:?}, expected [N, P, 4]",
                    t.shape()
                )));
            };
            let flat = read("proposals", &[n, p, 4])?.to_vec()?;
            let counts = read("proposal_counts", &[n])?.to_vec()?;
            let mut out = Vec::with_capacity(n);
            for (i, &c) in counts.iter().enumerate() {
                if !(c >= 1.0 && c <= p as f32 && c.fract() == 0.0) {
                    return Err(bad(format!(
                        "tensor `proposal_counts`: entry {i} is {c}, expected a whole number in 1..={p}"
                    )));
                }
                let list = &flat[i * p * 4..(i * p + c as usize) * 4];
                out.push(
                    list.chunks_exact(4)
                        .map(|b| [b[0], b[1], b[2], b[3]])
                        .collect(),
                );
            }
            Some(out)
        }
    };
    Ok(Resumed {
        pos: position(&meta, path)?,
        boxes,
        proposals,
    })
}

/// Write the online backbone of checkpoint `ckpt` to `out` as a plain safetensors state dict
/// with bare torchvision names and layouts (`conv1.weight` [O, I, kH, kW], `bn1.running_mean`,
/// `layer2.0.downsample.0.weight`...), loadable with `load_state_dict(strict=True)` into a
/// torchvision ResNet whose `fc` is `Identity()` (and, for the CIFAR stem, `conv1` a 3×3 s1
/// conv and `maxpool` `Identity()`). Returns the number of tensors written.
pub fn export_backbone(ckpt: &Path, out: &Path) -> Result<usize> {
    let raw = std::fs::read(ckpt)
        .map_err(|e| Error::file(ckpt, format!("cannot read checkpoint: {e}")))?;
    let st = SafeTensors::deserialize(&raw)
        .map_err(|e| Error::file(ckpt, format!("not a safetensors checkpoint: {e}")))?;
    // Exactly the tensors of the architecture the checkpoint describes, each checked
    // against its expected shape (a file that does not fit is an error, not an export).
    let (_, store) = backbone_from(&st, ckpt, &Device::Cpu)?;
    let mut views = Vec::new();
    for p in &store.params {
        let name = format!("param/{}", p.name);
        let view = st
            .tensor(&name)
            .map_err(|_| Error::file(ckpt, format!("tensor `{name}` missing")))?;
        views.push((p.name.clone(), view));
    }
    // torchvision's BN state also has `num_batches_tracked` (int64 scalar): write it, with the
    // number of training steps, so that strict loading finds every key.
    let steps: i64 = SafeTensors::read_metadata(&raw)
        .ok()
        .and_then(|(_, m)| {
            m.metadata()
                .as_ref()
                .and_then(|m| m.get("step").and_then(|s| s.parse().ok()))
        })
        .unwrap_or(0);
    let step_bytes = steps.to_le_bytes();
    let bn: Vec<String> = views
        .iter()
        .filter_map(|(n, _)| {
            n.strip_suffix(".running_mean")
                .map(|p| format!("{p}.num_batches_tracked"))
        })
        .collect();
    for name in bn {
        let v = TensorView::new(Dtype::I64, vec![], &step_bytes)
            .map_err(|e| Error::file(out, format!("cannot encode: {e}")))?;
        views.push((name, v));
    }
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let n = views.len();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let data = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::file(out, format!("cannot encode: {e}")))?;
    crate::train::atomic::write_atomic(out, &data)?;
    Ok(n)
}

/// The online backbone of a checkpoint, rebuilt from its tensor names and shapes (arch from
/// the blocks present, stem from `conv1`'s kernel, width from `conv1`'s output channels),
/// on `device`, in a store of its own. Every tensor is checked against the architecture.
pub fn load_backbone(
    ckpt: &Path,
    device: &Device,
) -> Result<(crate::nn::resnet::ResNet, crate::nn::ParamStore)> {
    let raw = std::fs::read(ckpt)
        .map_err(|e| Error::file(ckpt, format!("cannot read checkpoint: {e}")))?;
    let st = SafeTensors::deserialize(&raw)
        .map_err(|e| Error::file(ckpt, format!("not a safetensors checkpoint: {e}")))?;
    backbone_from(&st, ckpt, device)
}

/// [`load_backbone`] on a parsed file.
fn backbone_from(
    st: &SafeTensors,
    ckpt: &Path,
    device: &Device,
) -> Result<(crate::nn::resnet::ResNet, crate::nn::ParamStore)> {
    use crate::nn::resnet::{Arch, ResNet, ResNetConfig, Stem};
    // A viewcraft checkpoint names its tensors `param/…`; an exported backbone (or a
    // torchvision state dict saved as safetensors) uses the bare names.
    let prefix = if st.tensor("param/conv1.weight").is_ok() {
        "param/"
    } else {
        ""
    };
    let conv1 = st.tensor(&format!("{prefix}conv1.weight")).map_err(|_| {
        Error::file(
            ckpt,
            "no `param/conv1.weight` or `conv1.weight`: neither a viewcraft checkpoint nor a ResNet state dict in torchvision names",
        )
    })?;
    // The shape decides the architecture, so it is checked before anything is built on it.
    let (width, k) = match *conv1.shape() {
        [w, 3, k, k2] if k == k2 && (k == 3 || k == 7) && w > 0 && w % 4 == 0 => (w, k),
        ref other => {
            return Err(Error::file(
                ckpt,
                format!(
                    "tensor `{prefix}conv1.weight` has shape {other:?}, not a ResNet stem [width, 3, 3 or 7, 3 or 7] with a width that is a positive multiple of 4"
                ),
            ))
        }
    };
    let has = |n: &str| st.tensor(&format!("{prefix}{n}")).is_ok();
    let arch = if has("layer1.0.conv3.weight") {
        Arch::Resnet50
    } else if has("layer3.5.conv1.weight") {
        Arch::Resnet34
    } else {
        Arch::Resnet18
    };
    let stem = if k == 7 { Stem::Imagenet } else { Stem::Cifar };
    let mut store = crate::nn::ParamStore::default();
    let cfg = ResNetConfig {
        arch,
        stem,
        width,
        zero_init_residual: false,
        num_classes: None,
    };
    let net = ResNet::new(
        cfg,
        &mut store,
        &mut rand::rngs::StdRng::seed_from_u64(0),
        device,
    )?;
    for p in &mut store.params {
        let name = format!("{prefix}{}", p.name);
        let t = st
            .tensor(&name)
            .map_err(|_| Error::file(ckpt, format!("tensor `{name}` missing")))?;
        if t.shape() != p.value.shape() || t.dtype() != Dtype::F32 {
            return Err(Error::file(
                ckpt,
                format!(
                    "tensor `{name}` is {:?} {:?}, expected F32 {:?} for the {arch:?} (width {width}) it describes",
                    t.dtype(),
                    t.shape(),
                    p.value.shape()
                ),
            ));
        }
        let v = f32s(t.data());
        p.value = Tensor::from_vec(v, p.value.shape(), device)?;
    }
    Ok((net, store))
}

/// Write `features` [N, D] (f32) and `labels` [N] (int64) to a safetensors file, and each
/// `extra` (name, values) as a 1-D f32 tensor (e.g. `embed --standardize`'s `feature_mean`
/// and `feature_std` [D]; none by default).
pub fn write_features(
    out: &Path,
    features: &[f32],
    dim: usize,
    labels: &[u32],
    extra: &[(&str, &[f32])],
) -> Result<()> {
    let n = labels.len();
    let fb = bytes(features);
    let lb: Vec<u8> = labels
        .iter()
        .flat_map(|&l| (l as i64).to_le_bytes())
        .collect();
    let eb: Vec<(String, Vec<u8>, usize)> = extra
        .iter()
        .map(|(name, v)| (name.to_string(), bytes(v), v.len()))
        .collect();
    let mut views = vec![
        (
            "features".to_string(),
            TensorView::new(Dtype::F32, vec![n, dim], &fb).map_err(|e| Error::file(out, e))?,
        ),
        (
            "labels".to_string(),
            TensorView::new(Dtype::I64, vec![n], &lb).map_err(|e| Error::file(out, e))?,
        ),
    ];
    for (name, b, len) in &eb {
        views.push((
            name.clone(),
            TensorView::new(Dtype::F32, vec![*len], b).map_err(|e| Error::file(out, e))?,
        ));
    }
    let data = safetensors::serialize(views, None).map_err(|e| Error::file(out, e))?;
    crate::train::atomic::write_atomic(out, &data)
}
