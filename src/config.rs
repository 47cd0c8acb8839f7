//! Run configuration: TOML files under `configs/`, `--set section.key=value` overrides, and
//! validation with messages that name the field and the allowed values. Unknown keys are
//! rejected everywhere (a typo must not silently fall back to a default).
//!
//! Sections: `[model]`, `[method]` (tagged by `name`), `[data]`, `[crop]`, `[train]`,
//! `[knn]` (the monitor during pre-training) and `[linear]` (the linear probe, also the
//! whole configuration of `viewcraft linear-eval` together with `[data]`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crop::object::{DilationMode, ObjectCrop, ObjectPair};
use crate::crop::sampler::{BoxF, RrcParams, WHOLE_IMAGE};
use crate::crop::{CropKind, ObjectCfg};
use crate::data::loader::{Augment, CropSource, ViewMask, ViewSpec};

/// The values of `[crop] kind`.
pub const CROP_KINDS: [&str; 5] = ["rcrop", "ccrop", "simccrop", "semanticcrop", "objectcrop"];
use crate::error::{Error, Result};
use crate::nn::resnet::{Arch, ResNetConfig, Stem};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub model: ModelCfg,
    #[serde(default)]
    pub method: MethodCfg,
    #[serde(default)]
    pub data: DataCfg,
    #[serde(default)]
    pub crop: CropCfg,
    #[serde(default)]
    pub train: TrainCfg,
    #[serde(default)]
    pub knn: KnnCfg,
    #[serde(default)]
    pub linear: LinearCfg,
    #[serde(default)]
    pub mask: MaskCfg,
    /// The views of every image (`[[views]]` tables; none: the crop kind's two views).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<ViewCfg>,
    /// The file set the old `method.bn_group` (moved to `train.bn_group`; `load` says so).
    #[serde(skip)]
    pub moved_bn_group: bool,
}

/// `[mask]`: saliency-guided masking with hard negatives (SPEC B.3, D.7).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MaskCfg {
    /// `none` (masking off) | `hp` (high-pass views, noise fills) | `blur` | `mean`.
    pub strategy: String,
    /// Cells per side of the patch grid (8: 4 px cells at 32 px, 12 px at 96 px).
    pub grid: usize,
    /// Hard negatives per image (unset: 1 for moco and simclr, 0 for byol and simsiam).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_hard_negatives: Option<usize>,
    /// Factor of the hard negatives' logits.
    pub alpha: f32,
    /// The reference's quirk: every query against the first image's negative, its
    /// embedding from a batch of one.
    pub reference_batch_negative: bool,
    /// Saliency from a frozen backbone in this safetensors file (torchvision names and
    /// layouts, eval mode) instead of the model's own layer-4 map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saliency_backbone: Option<String>,
    /// r of the masked queries ("pos") and of the hard negatives ("neg").
    pub pos_ratio: [f64; 2],
    pub neg_ratio: [f64; 2],
}

impl Default for MaskCfg {
    fn default() -> Self {
        Self {
            strategy: "none".into(),
            grid: 8,
            num_hard_negatives: None,
            alpha: 2.0,
            reference_batch_negative: false,
            saliency_backbone: None,
            pos_ratio: [0.05, 0.25],
            neg_ratio: [0.4, 0.7],
        }
    }
}

impl MaskCfg {
    /// Whether masking is on.
    pub fn on(&self) -> bool {
        self.strategy != "none"
    }
    /// The recipe the loader runs (None when masking is off).
    pub fn recipe(&self) -> Option<crate::data::masking::MaskRecipe> {
        let strategy = crate::data::masking::Strategy::parse(&self.strategy).flatten()?;
        Some(crate::data::masking::MaskRecipe {
            strategy,
            grid: self.grid,
            pos_ratio: (self.pos_ratio[0], self.pos_ratio[1]),
            neg_ratio: (self.neg_ratio[0], self.neg_ratio[1]),
        })
    }
    /// Hard negatives per image in effect for `method` (0 when masking is off).
    pub fn hard_negatives(&self, method: &MethodCfg) -> usize {
        if !self.on() {
            return 0;
        }
        self.num_hard_negatives.unwrap_or(match method {
            MethodCfg::Simclr(_) | MethodCfg::Moco(_) => 1,
            _ => 0,
        })
    }
}

/// One `[[views]]` entry: `count` views from crop source `crop` at `size`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ViewCfg {
    /// `box` (the crop kind's sampler) | `scene` (RRC of the whole image) | `object` / `dilated`
    /// (RRC of the drawn proposal's tight / dilated region) | `object_whole` (that region
    /// resized whole).
    pub crop: String,
    /// Output size in pixels (default: the dataset's image size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// RandomResizedCrop area range (default: crop.scale).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<[f64; 2]>,
    /// RandomResizedCrop aspect-ratio range (default: crop.ratio).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<[f64; 2]>,
    /// `ssl` (flip, colour jitter, greyscale, blur when data.blur) | `flip` | `none`.
    pub augment: String,
    pub count: usize,
    /// Saliency-guided masking: `none` | `pos` (a masked query) | `neg` (a hard negative: a
    /// masked copy of the nearest earlier `none` view).
    pub mask: String,
}

impl Default for ViewCfg {
    fn default() -> Self {
        Self {
            crop: "box".into(),
            size: None,
            scale: None,
            ratio: None,
            augment: "ssl".into(),
            count: 1,
            mask: "none".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelCfg {
    /// `resnet18` | `resnet34` | `resnet50`.
    pub arch: String,
    /// `cifar` (3×3 stem, no max-pool) | `imagenet` (7×7/2 stem + max-pool).
    pub stem: String,
    /// Base width (64 = standard).
    pub width: usize,
    pub zero_init_residual: bool,
}

impl Default for ModelCfg {
    fn default() -> Self {
        Self {
            arch: "resnet18".into(),
            stem: "cifar".into(),
            width: 64,
            zero_init_residual: false,
        }
    }
}

/// `[method]`: `name` selects the method; the other keys are that method's fields (SPEC A.5
/// reference values as defaults).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum MethodCfg {
    Simclr(SimclrCfg),
    Moco(MocoCfg),
    Byol(ByolCfg),
    Simsiam(SimsiamCfg),
    Clsa(ClsaCfg),
}

impl Default for MethodCfg {
    fn default() -> Self {
        MethodCfg::Simclr(SimclrCfg::default())
    }
}

impl MethodCfg {
    pub fn name(&self) -> &'static str {
        match self {
            MethodCfg::Simclr(_) => "simclr",
            MethodCfg::Moco(_) => "moco",
            MethodCfg::Byol(_) => "byol",
            MethodCfg::Simsiam(_) => "simsiam",
            MethodCfg::Clsa(_) => "clsa",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimclrCfg {
    pub dim: usize,
    pub temperature: f32,
    /// Multiplies the loss. Unset: τ / base_τ with base_τ = 0.07 (the reference), so it
    /// follows the temperature; a loaded config always holds the value in effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f32>,
    /// With several ranks: every rank's embeddings as negatives, the gradient flowing back
    /// through the gather (as solo-learn); false: each rank's own batch only.
    pub gather: bool,
}

impl SimclrCfg {
    /// The factor in effect: the explicit `loss_scale`, else τ / 0.07.
    pub fn loss_scale(&self) -> f32 {
        self.loss_scale.unwrap_or_else(|| {
            crate::ssl::simclr::SimClrConfig::reference_loss_scale(self.temperature)
        })
    }
}

impl Default for SimclrCfg {
    fn default() -> Self {
        let d = crate::ssl::simclr::SimClrConfig::default();
        Self {
            dim: d.dim,
            temperature: d.temperature,
            loss_scale: None,
            gather: true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MocoCfg {
    pub dim: usize,
    /// Queue length K (a multiple of the batch size).
    pub queue: usize,
    pub momentum: f32,
    pub temperature: f32,
    /// Moved to `train.bn_group` (still accepted here, with a notice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bn_group: Option<usize>,
    /// Shuffle keys across BN groups (shuffle BN).
    pub shuffle: bool,
}

impl Default for MocoCfg {
    fn default() -> Self {
        let d = crate::ssl::moco::MocoConfig::default();
        Self {
            dim: d.dim,
            queue: d.k,
            momentum: d.momentum,
            temperature: d.temperature,
            bn_group: None,
            shuffle: d.shuffle,
        }
    }
}

/// `[method] name = "clsa"`: MoCo's keys plus the DDM's weight and temperature and the crop
/// recipe (SPEC B.4, D.10).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClsaCfg {
    pub dim: usize,
    pub queue: usize,
    pub momentum: f32,
    pub temperature: f32,
    /// Moved to `train.bn_group` (still accepted here, with a notice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bn_group: Option<usize>,
    pub shuffle: bool,
    /// Weight α of the DDM terms.
    pub alpha: f32,
    /// DDM temperature T₂.
    pub t2: f32,
    /// `single` (a weak query at the image size, a strong one at 96/224 of it) | `multi` (five
    /// weak and five strong queries at five sizes).
    pub crops: String,
}

impl Default for ClsaCfg {
    fn default() -> Self {
        let m = MocoCfg::default();
        Self {
            dim: m.dim,
            queue: m.queue,
            momentum: m.momentum,
            temperature: m.temperature,
            bn_group: m.bn_group,
            shuffle: m.shuffle,
            alpha: 1.0,
            t2: 0.2,
            crops: "single".into(),
        }
    }
}

impl ClsaCfg {
    /// The MoCo v2 base.
    pub fn moco(&self) -> MocoCfg {
        MocoCfg {
            dim: self.dim,
            queue: self.queue,
            momentum: self.momentum,
            temperature: self.temperature,
            bn_group: self.bn_group,
            shuffle: self.shuffle,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ByolCfg {
    pub hidden: usize,
    pub dim: usize,
    pub pred_hidden: usize,
    pub momentum: f32,
    /// `constant` (the reference) | `cosine` (ramped to 1).
    pub momentum_schedule: String,
    /// `independent` (the reference) | `copy`.
    pub target_init: String,
}

impl Default for ByolCfg {
    fn default() -> Self {
        use crate::ssl::byol::{ByolConfig, MomentumSchedule, TargetInit};
        let d = ByolConfig::default();
        Self {
            hidden: d.hidden,
            dim: d.dim,
            pred_hidden: d.pred_hidden,
            momentum: d.momentum,
            momentum_schedule: match d.schedule {
                MomentumSchedule::Constant => "constant",
                MomentumSchedule::Cosine => "cosine",
            }
            .into(),
            target_init: match d.target_init {
                TargetInit::Independent => "independent",
                TargetInit::Copy => "copy",
            }
            .into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimsiamCfg {
    pub dim: usize,
    pub pred_dim: usize,
    /// The predictor keeps the initial learning rate for the whole run.
    pub fix_pred_lr: bool,
}

impl Default for SimsiamCfg {
    fn default() -> Self {
        let d = crate::ssl::simsiam::SimSiamConfig::default();
        Self {
            dim: d.dim,
            pred_dim: d.pred_dim,
            fix_pred_lr: d.fix_pred_lr,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataCfg {
    /// `cifar10` | `cifar100` (binary or Python-pickle folders) | `stl10` (binary; pre-training
    /// on train + unlabeled) | `imagefolder` (root/train/<class>/*, root/val/<class>/*).
    pub dataset: String,
    /// Dataset folder; empty = the CIFAR-10 subset shipped with viewcraft.
    pub root: String,
    /// Use only the first N training images (0 = all).
    pub subset: usize,
    /// Loader threads (0 = one per core).
    pub workers: usize,
    /// ImageFolder: resize every image to this square size (0 = keep; all must match).
    pub image_size: usize,
    /// Gaussian blur in the pre-training views (ImageNet recipe: σ ~ U(0.1, 2), p 0.5).
    pub blur: bool,
}

impl Default for DataCfg {
    fn default() -> Self {
        Self {
            dataset: "cifar10".into(),
            root: String::new(),
            subset: 0,
            workers: 0,
            image_size: 0,
            blur: false,
        }
    }
}

impl DataCfg {
    pub fn root_path(&self) -> PathBuf {
        if self.root.is_empty() {
            crate::data::cifar::embedded_root()
        } else {
            PathBuf::from(&self.root)
        }
    }
    pub fn workers(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.workers
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CropCfg {
    /// `rcrop` (RandomResizedCrop) | `ccrop` (ContrastiveCrop) | `simccrop` (a fixed centre box).
    pub kind: String,
    /// Beta(α, α) of the crop centre.
    pub alpha: f64,
    /// Heatmap threshold k ∈ (0, 1).
    pub box_thresh: f32,
    /// Epochs of plain RandomResizedCrop before ContrastiveCrop.
    pub warmup_epochs: usize,
    /// Boxes are recomputed every this many epochs after the warm-up.
    pub loc_interval: usize,
    /// RandomResizedCrop area range.
    pub scale: [f64; 2],
    /// RandomResizedCrop aspect-ratio range.
    pub ratio: [f64; 2],
    /// semanticcrop: `suppressed` (view 2's position pushed away from view 1's) | `beta`
    /// (independent per-axis Beta, as ccrop).
    pub centre: String,
    /// semanticcrop: σ of the centre suppression, in units of the box.
    pub suppress_sigma: f64,
    /// objectcrop: proposals kept per image.
    pub max_proposals: usize,
    /// objectcrop: read proposals from this JSON file (`{"<index>": [[x1, y1, x2, y2], …]}`,
    /// pixels, x2/y2 exclusive) instead of the heatmaps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposals_file: Option<String>,
    /// objectcrop: growth of the dilated region (0.2: 20 % of the box size).
    pub dilation: f64,
    /// objectcrop: `centre` (about the box centre) | `coordinate` (the reference's scaling of
    /// each coordinate value).
    pub dilation_mode: String,
    /// objectcrop: minimum region side in pixels (default: a quarter of the image side, the
    /// reference's 224 px on ~1000 px photos: 8 at 32×32, 24 at 96×96).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_size: Option<usize>,
    /// objectcrop: `dilate` (object + dilated object) | `scene` (whole image + object).
    pub object_pair: String,
    /// objectcrop: swap the two views with probability 0.5 (the reference).
    pub swap_views: bool,
}

impl Default for CropCfg {
    fn default() -> Self {
        Self {
            kind: "ccrop".into(),
            alpha: 0.1,
            box_thresh: 0.1,
            warmup_epochs: 100,
            loc_interval: 100,
            scale: [0.2, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            centre: "suppressed".into(),
            suppress_sigma: 0.3,
            max_proposals: crate::crop::proposals::DEFAULT_MAX_PROPOSALS,
            proposals_file: None,
            dilation: 0.2,
            dilation_mode: "centre".into(),
            min_size: None,
            object_pair: "dilate".into(),
            swap_views: true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainCfg {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Cosine floor as a fraction of lr (η_min = decay_rate · lr).
    pub decay_rate: f64,
    /// Linear LR warm-up epochs before the cosine (0 = none, the reference).
    pub lr_warmup_epochs: usize,
    /// No weight decay on BN weights / biases and biases (the reference decays everything).
    pub exclude_bn_bias_wd: bool,
    /// `sgd` (the reference) | `lars` (LARS trust ratio on weight matrices and kernels).
    pub optimizer: String,
    pub seed: u64,
    /// Read the loss back every this many steps.
    pub log_interval: usize,
    /// Keep `epoch_<e>.safetensors` every this many epochs (and after the last).
    pub save_interval: usize,
    /// `cpu`, `gpu`, `auto` or an adapter-name substring; the `--device` flag wins.
    pub device: String,
    /// BatchNorm statistics over groups of this many consecutive images of each rank's batch
    /// (ghost BN; unset: the method's default — MoCo's and CLSA's 64, the reference's per-GPU
    /// batch; the whole batch for the others). A one-process run with batch B and
    /// `bn_group = B/N` computes what N ranks with B/N images each compute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bn_group: Option<usize>,
    /// Synchronised BatchNorm: training statistics over every rank's batch (data
    /// parallelism; ghost-BN groups do not apply then). One rank: plain BN over the batch.
    pub sync_bn: bool,
}

impl TrainCfg {
    /// The ghost-BN group in effect for `method` (`usize::MAX`: the whole batch, also with
    /// `sync_bn`).
    pub fn bn_group_for(&self, method: &MethodCfg) -> usize {
        if self.sync_bn {
            return usize::MAX;
        }
        self.bn_group.unwrap_or(match method {
            MethodCfg::Moco(_) | MethodCfg::Clsa(_) => 64,
            _ => usize::MAX,
        })
    }
}

impl Default for TrainCfg {
    fn default() -> Self {
        Self {
            epochs: 500,
            batch_size: 512,
            lr: 0.5,
            momentum: 0.9,
            weight_decay: 1e-4,
            decay_rate: 0.1,
            lr_warmup_epochs: 0,
            exclude_bn_bias_wd: false,
            optimizer: "sgd".into(),
            seed: 42,
            log_interval: 20,
            save_interval: 250,
            device: "auto".into(),
            bn_group: None,
            sync_bn: false,
        }
    }
}

/// The weighted kNN monitor during pre-training (eval-mode BN, test split).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KnnCfg {
    /// Every this many epochs and after the last (0 = never).
    pub interval: usize,
    pub k: usize,
    pub temperature: f32,
}

impl Default for KnnCfg {
    fn default() -> Self {
        Self {
            interval: 0,
            k: 200,
            temperature: 0.1,
        }
    }
}

/// The linear probe (SPEC A.6): frozen eval-mode backbone, new fc ~ N(0, 0.01), SGD with
/// MultiStep decay ×0.1 after each milestone, RandomResizedCrop(scale) + flip.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LinearCfg {
    /// Epochs of the probe (0 = no probe at the end of pre-training).
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f32,
    pub weight_decay: f32,
    /// The LR is multiplied by 0.1 for every milestone strictly below the epoch.
    pub milestones: Vec<usize>,
    /// RandomResizedCrop area range of the probe's training views.
    pub scale: [f64; 2],
    /// Augment the probe's training images (RRC + flip); `false` trains on fixed features.
    pub augment: bool,
    /// What the probe does to the features before `fc`: `none` (SPEC A.6: the raw pooled
    /// features) | `standardize` (each dimension mapped with the mean and std of the training
    /// split's un-augmented eval-mode features, the same fixed map at train and test time).
    pub feature_norm: String,
    pub seed: u64,
    /// High-pass filter the probe's (and kNN's) inputs, x − GaussianBlur(11, σ 5)(x) after
    /// normalisation, as the saliency-masking reference does for `hp` runs (unset: on when
    /// mask.strategy = "hp").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_pass: Option<bool>,
}

impl Default for LinearCfg {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 512,
            // The paper's lr 10 is for its raw features (configs/linear/); on standardised
            // ones it diverges (loss 17.7 after epoch 1, 22 after 100 on the quickstart's).
            lr: 0.03,
            momentum: 0.9,
            weight_decay: 0.0,
            milestones: vec![60, 80],
            scale: [0.08, 1.0],
            augment: true,
            feature_norm: "standardize".into(),
            seed: 42,
            high_pass: None,
        }
    }
}

/// `viewcraft linear-eval`'s configuration: the data and the probe.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct LinearEvalConfig {
    #[serde(default)]
    pub data: DataCfg,
    #[serde(default)]
    pub linear: LinearCfg,
    #[serde(default)]
    pub train: LinearDevice,
}

/// `[train] device` of a linear-eval config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LinearDevice {
    pub device: String,
}

impl Default for LinearDevice {
    fn default() -> Self {
        Self {
            device: "auto".into(),
        }
    }
}

/// The quickstart configuration (`cargo run --release`), shipped as `configs/quickstart.toml`.
pub const QUICKSTART_TOML: &str = include_str!("../configs/quickstart.toml");

fn cfg_err(field: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::Config {
        field: field.into(),
        msg: msg.into(),
    }
}

/// Apply `section.key=value` overrides to a TOML table. The value is parsed as a TOML value
/// (numbers, booleans, arrays, quoted strings) and otherwise taken as a bare string.
/// Overrides apply in order; `method.name=X` with a different method drops the file's
/// method fields (so put it before that method's own overrides).
pub fn apply_overrides(table: &mut toml::Table, sets: &[String]) -> Result<()> {
    for s in sets {
        let (key, raw) = s
            .split_once('=')
            .ok_or_else(|| cfg_err(s.clone(), "--set expects section.key=value"))?;
        let key = key.trim();
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
        let parts: Vec<&str> = key.split('.').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(cfg_err(
                key,
                "--set expects section.key=value (e.g. train.epochs=10)",
            ));
        }
        // Switching the method starts the new one from its defaults: the file's fields
        // belong to the old one.
        if parts == ["method", "name"] {
            let old = table
                .get("method")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str());
            if old.is_some_and(|o| Some(o) != value.as_str()) {
                table.insert("method".into(), toml::Value::Table(Default::default()));
            }
        }
        let section = table
            .entry(parts[0].to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        let toml::Value::Table(section) = section else {
            return Err(cfg_err(parts[0], "is not a section"));
        };
        section.insert(parts[1].to_string(), value);
    }
    Ok(())
}

/// Parse TOML text with overrides, naming `source` and the section in errors.
fn parse_table(text: &str, source: &str, sets: &[String]) -> Result<toml::Table> {
    let mut table: toml::Table = toml::from_str(text)
        .map_err(|e| Error::file(source, format!("not valid TOML: {}", e.to_string().trim())))?;
    apply_overrides(&mut table, sets)?;
    Ok(table)
}

/// Deserialise section `name` of `table` (absent: the defaults).
fn section<T: for<'de> Deserialize<'de> + Default>(
    table: &mut toml::Table,
    name: &str,
    source: &str,
) -> Result<T> {
    match table.remove(name) {
        None => Ok(T::default()),
        Some(v) => T::deserialize(v)
            .map_err(|e| Error::file(source, format!("[{name}]: {}", e.message().trim()))),
    }
}

fn no_other_sections(table: &toml::Table, source: &str, known: &[&str]) -> Result<()> {
    match table.keys().next() {
        None => Ok(()),
        Some(k) => Err(Error::file(
            source,
            format!(
                "unknown section or key `{k}` (sections: {})",
                known.join(", ")
            ),
        )),
    }
}

fn parse_config(text: &str, source: &str, sets: &[String]) -> Result<Config> {
    let mut t = parse_table(text, source, sets)?;
    let cfg = Config {
        model: section(&mut t, "model", source)?,
        method: section(&mut t, "method", source)?,
        data: section(&mut t, "data", source)?,
        crop: section(&mut t, "crop", source)?,
        train: section(&mut t, "train", source)?,
        knn: section(&mut t, "knn", source)?,
        linear: section(&mut t, "linear", source)?,
        mask: section(&mut t, "mask", source)?,
        views: section(&mut t, "views", source)?,
        moved_bn_group: false,
    };
    no_other_sections(
        &t,
        source,
        &[
            "model", "method", "data", "crop", "train", "knn", "linear", "mask", "views",
        ],
    )?;
    Ok(cfg.resolved())
}

impl Config {
    /// Defaults that depend on other fields, written out so that the resolved `config.toml`
    /// of a run (and a checkpoint's metadata) records the values in effect.
    fn resolved(mut self) -> Config {
        if let MethodCfg::Simclr(m) = &mut self.method {
            m.loss_scale = Some(m.loss_scale());
        }
        if self.mask.on() {
            self.mask.num_hard_negatives = Some(self.mask.hard_negatives(&self.method));
        }
        if self.linear.high_pass.is_none() {
            self.linear.high_pass = Some(self.mask.strategy == "hp");
        }
        // MoCo's (and CLSA's) old `method.bn_group` is `train.bn_group` now.
        let old = match &mut self.method {
            MethodCfg::Moco(m) => m.bn_group.take(),
            MethodCfg::Clsa(m) => m.bn_group.take(),
            _ => None,
        };
        if let Some(g) = old {
            self.moved_bn_group = true;
            self.train.bn_group.get_or_insert(g);
        }
        if matches!(self.method, MethodCfg::Moco(_) | MethodCfg::Clsa(_)) && !self.train.sync_bn {
            self.train.bn_group = Some(self.train.bn_group_for(&self.method));
        }
        self
    }

    /// Read `path` (or the quickstart config for `None`), apply `sets`, validate.
    pub fn load(path: Option<&Path>, sets: &[String]) -> Result<Config> {
        let (text, source) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .map_err(|e| Error::file(p, format!("cannot read the config: {e}")))?,
                p.display().to_string(),
            ),
            None => (
                QUICKSTART_TOML.to_string(),
                "configs/quickstart.toml".into(),
            ),
        };
        let cfg = parse_config(&text, &source, sets)?;
        if cfg.moved_bn_group {
            eprintln!(
                "viewcraft: {source}: `method.bn_group` is now `train.bn_group` (read as train.bn_group = {})",
                cfg.train.bn_group.unwrap_or_default()
            );
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_toml(text: &str, source: &str) -> Result<Config> {
        parse_config(text, source, &[])
    }

    pub fn resnet(&self) -> Result<ResNetConfig> {
        Ok(ResNetConfig {
            arch: match self.model.arch.as_str() {
                "resnet18" => Arch::Resnet18,
                "resnet34" => Arch::Resnet34,
                "resnet50" => Arch::Resnet50,
                other => {
                    return Err(cfg_err(
                        "model.arch",
                        format!("`{other}` is not one of resnet18, resnet34, resnet50"),
                    ))
                }
            },
            stem: match self.model.stem.as_str() {
                "cifar" => Stem::Cifar,
                "imagenet" => Stem::Imagenet,
                other => {
                    return Err(cfg_err(
                        "model.stem",
                        format!("`{other}` is not one of cifar, imagenet"),
                    ))
                }
            },
            width: self.model.width,
            zero_init_residual: self.model.zero_init_residual,
            num_classes: None,
        })
    }

    /// The run's crop kind; objectcrop's proposals file is read here (for `n` images of
    /// `hgt`×`wid`).
    pub fn crop_kind(&self, n: usize, hgt: usize, wid: usize) -> Result<CropKind> {
        let c = &self.crop;
        Ok(match c.kind.as_str() {
            "rcrop" => CropKind::Rcrop,
            "semanticcrop" => CropKind::SemanticCrop {
                sigma: (c.centre == "suppressed").then_some(c.suppress_sigma),
            },
            "objectcrop" => CropKind::ObjectCrop(ObjectCfg {
                crop: ObjectCrop {
                    dilation: c.dilation,
                    mode: if c.dilation_mode == "coordinate" {
                        DilationMode::Coordinate
                    } else {
                        DilationMode::Centre
                    },
                    min_size: c.min_size.unwrap_or(hgt.min(wid).div_ceil(4)),
                },
                pair: if c.object_pair == "scene" {
                    ObjectPair::Scene
                } else {
                    ObjectPair::Dilate
                },
                max_proposals: c.max_proposals,
                fixed: match &c.proposals_file {
                    Some(f) => Some(std::sync::Arc::new(crate::crop::proposals::read_file(
                        std::path::Path::new(f),
                        n,
                        hgt,
                        wid,
                    )?)),
                    None => None,
                },
                swap: c.swap_views,
            }),
            // ccrop and simccrop (a fixed box, set by init_box and the schedule).
            _ => CropKind::Ccrop,
        })
    }

    /// The run's RandomResizedCrop (`crop.scale`, `crop.ratio`).
    pub fn rrc(&self) -> RrcParams {
        RrcParams {
            scale: (self.crop.scale[0], self.crop.scale[1]),
            ratio: (self.crop.ratio[0], self.crop.ratio[1]),
        }
    }

    /// The run's view specs (empty when the config lists none: the crop kind's defaults; CLSA
    /// without `[[views]]`: its crop recipe's).
    pub fn view_specs(&self, image_size: usize) -> Vec<ViewSpec> {
        let c = &self.crop;
        if let (MethodCfg::Clsa(m), true) = (&self.method, self.views.is_empty()) {
            let key = self.rrc();
            let source = if c.kind == "objectcrop" {
                CropSource::Scene
            } else {
                CropSource::Box
            };
            return crate::ssl::clsa::recipe_views(m.crops == "multi", image_size, key, source);
        }
        self.views
            .iter()
            .flat_map(|v| {
                let scale = v.scale.unwrap_or(c.scale);
                let ratio = v.ratio.unwrap_or(c.ratio);
                let spec = ViewSpec {
                    source: CropSource::parse(&v.crop).unwrap_or(CropSource::Box),
                    size: v.size.unwrap_or(image_size),
                    rrc: RrcParams {
                        scale: (scale[0], scale[1]),
                        ratio: (ratio[0], ratio[1]),
                    },
                    augment: Augment::parse(&v.augment).unwrap_or(Augment::Ssl),
                    mask: ViewMask::parse(&v.mask).unwrap_or(ViewMask::None),
                };
                std::iter::repeat_n(spec, v.count)
            })
            .collect()
    }

    /// The box every image starts with.
    pub fn init_box(&self) -> BoxF {
        if self.crop.kind == "simccrop" {
            [0.25, 0.25, 0.75, 0.75]
        } else {
            WHOLE_IMAGE
        }
    }

    /// `[mask]` and the views' `mask` keys, before any data is read.
    fn validate_mask(&self) -> Result<()> {
        let m = &self.mask;
        if crate::data::masking::Strategy::parse(&m.strategy).is_none() {
            return Err(cfg_err(
                "mask.strategy",
                format!(
                    "`{}` is not one of {}",
                    m.strategy,
                    crate::data::masking::Strategy::NAMES.join(", ")
                ),
            ));
        }
        let max = crate::ops::saliency_mask::MAX_GRID;
        if m.grid == 0 || m.grid > max {
            return Err(cfg_err(
                "mask.grid",
                format!("{} must be in 1..={max}", m.grid),
            ));
        }
        if !(m.alpha > 0.0 && m.alpha.is_finite()) {
            return Err(cfg_err("mask.alpha", format!("{} must be > 0", m.alpha)));
        }
        check_range("mask.pos_ratio", m.pos_ratio, 0.0, 1.0)?;
        check_range("mask.neg_ratio", m.neg_ratio, 0.0, 1.0)?;
        let negatives_ok = matches!(self.method, MethodCfg::Simclr(_) | MethodCfg::Moco(_));
        if m.num_hard_negatives.is_some_and(|n| n > 0) && !negatives_ok {
            return Err(cfg_err(
                "mask.num_hard_negatives",
                format!(
                    "{} has no negatives to add hard ones to: set it to 0 (masking alone works with {})",
                    self.method.name(),
                    self.method.name()
                ),
            ));
        }
        if m.saliency_backbone.as_deref() == Some("") {
            return Err(cfg_err(
                "mask.saliency_backbone",
                "is empty: give a safetensors file or leave it unset (the model's own saliency)",
            ));
        }
        let masks: Vec<ViewMask> = self
            .views
            .iter()
            .flat_map(|v| {
                std::iter::repeat_n(ViewMask::parse(&v.mask).unwrap_or(ViewMask::None), v.count)
            })
            .collect();
        if !m.on() {
            if masks.iter().any(|&k| k != ViewMask::None) {
                return Err(cfg_err(
                    "views",
                    "a view has mask = pos or neg but mask.strategy is none: set mask.strategy",
                ));
            }
            return Ok(());
        }
        if !self.views.is_empty() {
            let negs = masks.iter().filter(|&&k| k == ViewMask::Neg).count();
            if negs != m.hard_negatives(&self.method) {
                return Err(cfg_err(
                    "views",
                    format!(
                        "{negs} views have mask = neg, mask.num_hard_negatives is {}",
                        m.hard_negatives(&self.method)
                    ),
                ));
            }
            if !masks.contains(&ViewMask::Pos) {
                return Err(cfg_err("views", "masking is on but no view has mask = pos"));
            }
            if masks.first() != Some(&ViewMask::Pos) && masks.first() != Some(&ViewMask::None) {
                return Err(cfg_err("views", "the first view cannot be a hard negative (mask = neg copies an earlier unmasked view)"));
            }
            for (i, &k) in masks.iter().enumerate() {
                if k == ViewMask::Neg && !masks[..i].contains(&ViewMask::None) {
                    return Err(cfg_err(
                        "views",
                        format!("view {i} has mask = neg but no earlier view has mask = none (the key it copies)"),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        self.resnet()?;
        if self.model.width == 0 || !self.model.width.is_multiple_of(4) {
            return Err(cfg_err(
                "model.width",
                format!("{} must be a positive multiple of 4", self.model.width),
            ));
        }
        validate_data(&self.data)?;
        let c = &self.crop;
        if !CROP_KINDS.contains(&c.kind.as_str()) {
            return Err(cfg_err(
                "crop.kind",
                format!("`{}` is not one of {}", c.kind, CROP_KINDS.join(", ")),
            ));
        }
        if !["suppressed", "beta"].contains(&c.centre.as_str()) {
            return Err(cfg_err(
                "crop.centre",
                format!("`{}` is not one of suppressed, beta", c.centre),
            ));
        }
        if !(c.suppress_sigma > 0.0 && c.suppress_sigma.is_finite()) {
            return Err(cfg_err(
                "crop.suppress_sigma",
                format!("{} must be > 0", c.suppress_sigma),
            ));
        }
        if c.max_proposals == 0 {
            return Err(cfg_err("crop.max_proposals", "must be at least 1"));
        }
        if !(c.dilation >= 0.0 && c.dilation.is_finite()) {
            return Err(cfg_err(
                "crop.dilation",
                format!("{} must be ≥ 0", c.dilation),
            ));
        }
        if !["centre", "coordinate"].contains(&c.dilation_mode.as_str()) {
            return Err(cfg_err(
                "crop.dilation_mode",
                format!("`{}` is not one of centre, coordinate", c.dilation_mode),
            ));
        }
        if c.min_size == Some(0) {
            return Err(cfg_err("crop.min_size", "must be at least 1"));
        }
        if !["dilate", "scene"].contains(&c.object_pair.as_str()) {
            return Err(cfg_err(
                "crop.object_pair",
                format!("`{}` is not one of dilate, scene", c.object_pair),
            ));
        }
        let objects = c.kind == "objectcrop";
        let mut count = 0;
        for (i, v) in self.views.iter().enumerate() {
            let field = |f: &str| format!("views[{i}].{f}");
            let Some(source) = CropSource::parse(&v.crop) else {
                return Err(cfg_err(
                    field("crop"),
                    format!(
                        "`{}` is not one of {}",
                        v.crop,
                        CropSource::NAMES.join(", ")
                    ),
                ));
            };
            if let Err(m) = source.fits_kind(objects) {
                return Err(cfg_err(field("crop"), m));
            }
            if Augment::parse(&v.augment).is_none() {
                return Err(cfg_err(
                    field("augment"),
                    format!(
                        "`{}` is not one of {}",
                        v.augment,
                        Augment::NAMES.join(", ")
                    ),
                ));
            }
            if v.size == Some(0) {
                return Err(cfg_err(field("size"), "must be at least 1"));
            }
            if v.count == 0 {
                return Err(cfg_err(field("count"), "must be at least 1"));
            }
            if ViewMask::parse(&v.mask).is_none() {
                return Err(cfg_err(
                    field("mask"),
                    format!("`{}` is not one of {}", v.mask, ViewMask::NAMES.join(", ")),
                ));
            }
            if let Some(r) = v.scale {
                check_range(&field("scale"), r, 0.0, 1.0)?;
            }
            if let Some(r) = v.ratio {
                check_range(&field("ratio"), r, 0.0, f64::INFINITY)?;
            }
            count += v.count;
        }
        self.validate_mask()?;
        let wanted = 2 + self.mask.hard_negatives(&self.method);
        let clsa = matches!(self.method, MethodCfg::Clsa(_));
        if !self.views.is_empty() && count != wanted && !clsa {
            return Err(cfg_err(
                "views",
                format!(
                    "{} takes {wanted} views per image{}; the [[views]] entries give {count}",
                    self.method.name(),
                    if wanted > 2 {
                        " (a query, a key and mask.num_hard_negatives hard negatives)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if !(c.alpha > 0.0 && c.alpha.is_finite()) {
            return Err(cfg_err("crop.alpha", format!("{} must be > 0", c.alpha)));
        }
        if !(c.box_thresh > 0.0 && c.box_thresh < 1.0) {
            return Err(cfg_err(
                "crop.box_thresh",
                format!("{} must be in (0, 1)", c.box_thresh),
            ));
        }
        if ["ccrop", "semanticcrop", "objectcrop"].contains(&c.kind.as_str()) && c.loc_interval == 0
        {
            return Err(cfg_err("crop.loc_interval", "must be at least 1"));
        }
        check_range("crop.scale", c.scale, 0.0, 1.0)?;
        check_range("crop.ratio", c.ratio, 0.0, f64::INFINITY)?;
        let t = &self.train;
        if t.epochs == 0 {
            return Err(cfg_err("train.epochs", "must be at least 1"));
        }
        if t.batch_size < 2 {
            return Err(cfg_err(
                "train.batch_size",
                format!("{} must be at least 2", t.batch_size),
            ));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(cfg_err("train.lr", format!("{} must be > 0", t.lr)));
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return Err(cfg_err(
                "train.momentum",
                format!("{} must be in [0, 1)", t.momentum),
            ));
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return Err(cfg_err(
                "train.weight_decay",
                format!("{} must be ≥ 0", t.weight_decay),
            ));
        }
        if !(0.0..=1.0).contains(&t.decay_rate) {
            return Err(cfg_err(
                "train.decay_rate",
                format!("{} must be in [0, 1]", t.decay_rate),
            ));
        }
        if t.lr_warmup_epochs >= t.epochs && t.lr_warmup_epochs > 0 {
            return Err(cfg_err(
                "train.lr_warmup_epochs",
                format!(
                    "{} must be below train.epochs ({})",
                    t.lr_warmup_epochs, t.epochs
                ),
            ));
        }
        if !["sgd", "lars"].contains(&t.optimizer.as_str()) {
            return Err(cfg_err(
                "train.optimizer",
                format!("`{}` is not one of sgd, lars", t.optimizer),
            ));
        }
        if t.log_interval == 0 {
            return Err(cfg_err("train.log_interval", "must be at least 1"));
        }
        if t.save_interval == 0 {
            return Err(cfg_err("train.save_interval", "must be at least 1"));
        }
        if t.sync_bn
            && t.bn_group.is_some()
            && !matches!(self.method, MethodCfg::Moco(_) | MethodCfg::Clsa(_))
        {
            return Err(cfg_err(
                "train.bn_group",
                "ghost-BN groups do not combine with train.sync_bn (statistics over every rank's batch): set one of them",
            ));
        }
        if let Some(g) = t.bn_group.filter(|_| !t.sync_bn) {
            if g < 2 || !t.batch_size.is_multiple_of(g) {
                return Err(cfg_err(
                    "train.bn_group",
                    format!(
                        "{g} must be ≥ 2 and divide train.batch_size ({})",
                        t.batch_size
                    ),
                ));
            }
        }
        if self.knn.k == 0 {
            return Err(cfg_err("knn.k", "must be at least 1"));
        }
        if !(self.knn.temperature > 0.0 && self.knn.temperature.is_finite()) {
            return Err(cfg_err(
                "knn.temperature",
                format!("{} must be > 0", self.knn.temperature),
            ));
        }
        validate_linear(&self.linear, true)?;
        match &self.method {
            MethodCfg::Simclr(m) => {
                positive("method.dim", m.dim)?;
                positive_f("method.temperature", m.temperature)?;
                positive_f("method.loss_scale", m.loss_scale())?;
            }
            MethodCfg::Moco(m) => validate_moco(m, t.batch_size)?,
            MethodCfg::Clsa(m) => {
                validate_moco(&m.moco(), t.batch_size)?;
                positive_f("method.t2", m.t2)?;
                if !(m.alpha >= 0.0 && m.alpha.is_finite()) {
                    return Err(cfg_err("method.alpha", format!("{} must be ≥ 0", m.alpha)));
                }
                if !["single", "multi"].contains(&m.crops.as_str()) {
                    return Err(cfg_err(
                        "method.crops",
                        format!("`{}` is not one of single, multi", m.crops),
                    ));
                }
                if self.mask.on() {
                    return Err(cfg_err(
                        "mask.strategy",
                        "CLSA does not combine with saliency masking yet: set it to none",
                    ));
                }
                if !self.views.is_empty() {
                    let kinds: Vec<Augment> = self
                        .views
                        .iter()
                        .flat_map(|v| {
                            std::iter::repeat_n(
                                Augment::parse(&v.augment).unwrap_or(Augment::Ssl),
                                v.count,
                            )
                        })
                        .collect();
                    let weak = kinds[1..]
                        .iter()
                        .take_while(|&&a| a != Augment::Strong)
                        .count();
                    let strong = kinds.len() - 1 - weak;
                    if kinds[0] == Augment::Strong
                        || weak == 0
                        || strong == 0
                        || kinds[1 + weak..].iter().any(|&a| a != Augment::Strong)
                    {
                        return Err(cfg_err(
                            "views",
                            "CLSA takes a key view, then its weak queries, then its strong ones (augment = \"strong\"), at least one of each",
                        ));
                    }
                }
            }
            MethodCfg::Byol(m) => {
                positive("method.dim", m.dim)?;
                positive("method.hidden", m.hidden)?;
                positive("method.pred_hidden", m.pred_hidden)?;
                momentum("method.momentum", m.momentum)?;
                if !["constant", "cosine"].contains(&m.momentum_schedule.as_str()) {
                    return Err(cfg_err(
                        "method.momentum_schedule",
                        format!("`{}` is not one of constant, cosine", m.momentum_schedule),
                    ));
                }
                if !["independent", "copy"].contains(&m.target_init.as_str()) {
                    return Err(cfg_err(
                        "method.target_init",
                        format!("`{}` is not one of independent, copy", m.target_init),
                    ));
                }
            }
            MethodCfg::Simsiam(m) => {
                positive("method.dim", m.dim)?;
                positive("method.pred_dim", m.pred_dim)?;
            }
        }
        Ok(())
    }
}

/// MoCo's `[method]` keys against the batch size (MoCo and CLSA).
fn validate_moco(m: &MocoCfg, batch_size: usize) -> Result<()> {
    positive("method.dim", m.dim)?;
    positive_f("method.temperature", m.temperature)?;
    momentum("method.momentum", m.momentum)?;
    if m.queue == 0 || !m.queue.is_multiple_of(batch_size) {
        return Err(cfg_err(
            "method.queue",
            format!(
                "{} must be a positive multiple of train.batch_size ({batch_size})",
                m.queue
            ),
        ));
    }
    Ok(())
}

impl LinearEvalConfig {
    /// Read `path` (or the defaults), apply `sets` (`train.X` other than `device` is taken as
    /// `linear.X`), validate. `base` (the checkpoint's run data) fills the `[data]` keys the
    /// file does not set.
    pub fn load(
        path: Option<&Path>,
        sets: &[String],
        base: Option<&DataCfg>,
    ) -> Result<LinearEvalConfig> {
        let (text, source) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .map_err(|e| Error::file(p, format!("cannot read the config: {e}")))?,
                p.display().to_string(),
            ),
            None => (String::new(), "linear-eval".to_string()),
        };
        let sets: Vec<String> = sets
            .iter()
            .map(|s| match s.strip_prefix("train.") {
                Some(rest) if !rest.starts_with("device") => format!("linear.{rest}"),
                _ => s.clone(),
            })
            .collect();
        let mut t = parse_table(&text, &source, &[])?;
        if let Some(base) = base {
            // The probe trains on the whole split unless asked otherwise.
            let base = DataCfg {
                subset: 0,
                ..base.clone()
            };
            let mut data = toml::Table::try_from(&base).unwrap_or_default();
            if let Some(toml::Value::Table(own)) = t.remove("data") {
                data.extend(own);
            }
            t.insert("data".into(), toml::Value::Table(data));
        }
        apply_overrides(&mut t, &sets)?;
        let cfg = LinearEvalConfig {
            data: section(&mut t, "data", &source)?,
            linear: section(&mut t, "linear", &source)?,
            train: section(&mut t, "train", &source)?,
        };
        no_other_sections(&t, &source, &["data", "linear", "train"])?;
        validate_data(&cfg.data)?;
        validate_linear(&cfg.linear, false)?;
        Ok(cfg)
    }
}

fn validate_data(d: &DataCfg) -> Result<()> {
    if !crate::data::DATASETS.contains(&d.dataset.as_str()) {
        return Err(cfg_err(
            "data.dataset",
            format!(
                "`{}` is not one of {}",
                d.dataset,
                crate::data::DATASETS.join(", ")
            ),
        ));
    }
    if d.dataset != "cifar10" && d.root.is_empty() {
        return Err(cfg_err(
            "data.root",
            format!(
                "must name the {} folder (only a CIFAR-10 subset ships with viewcraft)",
                d.dataset
            ),
        ));
    }
    Ok(())
}

fn validate_linear(l: &LinearCfg, zero_epochs_ok: bool) -> Result<()> {
    if l.epochs == 0 && !zero_epochs_ok {
        return Err(cfg_err("linear.epochs", "must be at least 1"));
    }
    if l.batch_size == 0 {
        return Err(cfg_err("linear.batch_size", "must be at least 1"));
    }
    if !(l.lr > 0.0 && l.lr.is_finite()) {
        return Err(cfg_err("linear.lr", format!("{} must be > 0", l.lr)));
    }
    momentum("linear.momentum", l.momentum)?;
    if !(l.weight_decay >= 0.0 && l.weight_decay.is_finite()) {
        return Err(cfg_err(
            "linear.weight_decay",
            format!("{} must be ≥ 0", l.weight_decay),
        ));
    }
    if l.milestones.windows(2).any(|w| w[0] >= w[1]) {
        return Err(cfg_err(
            "linear.milestones",
            format!("{:?} must be strictly increasing", l.milestones),
        ));
    }
    if !["none", "standardize"].contains(&l.feature_norm.as_str()) {
        return Err(cfg_err(
            "linear.feature_norm",
            format!("`{}` is not one of none, standardize", l.feature_norm),
        ));
    }
    check_range("linear.scale", l.scale, 0.0, 1.0)
}

fn positive(field: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(cfg_err(field, "must be at least 1"));
    }
    Ok(())
}

fn positive_f(field: &str, v: f32) -> Result<()> {
    if !(v > 0.0 && v.is_finite()) {
        return Err(cfg_err(field, format!("{v} must be > 0")));
    }
    Ok(())
}

fn momentum(field: &str, v: f32) -> Result<()> {
    if !(0.0..1.0).contains(&v) {
        return Err(cfg_err(field, format!("{v} must be in [0, 1)")));
    }
    Ok(())
}

fn check_range(field: &str, r: [f64; 2], lo: f64, hi: f64) -> Result<()> {
    if !(r[0] > lo && r[0] <= r[1] && r[1] <= hi) {
        return Err(cfg_err(
            field,
            format!("[{}, {}] must satisfy {lo} < min ≤ max ≤ {hi}", r[0], r[1]),
        ));
    }
    Ok(())
}
