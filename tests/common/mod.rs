//! Shared test helpers: the GPU device (shared by all tests of a binary), fresh random inputs
//! with their seed printed on failure, and `atol + rtol·|ref|` comparisons that print the
//! first mismatches with their indices.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;
use viewcraft::tensor::{Device, Tensor};

/// The wgpu adapter for GPU tests (`VIEWCRAFT_TEST_DEVICE`, default `gpu`: any adapter,
/// lavapipe included). Outside CI a
/// missing adapter skips with a printed reason; with `CI=true` it fails the test.
pub fn gpu() -> Option<Device> {
    static DEV: OnceLock<Result<Device, String>> = OnceLock::new();
    let r = DEV.get_or_init(|| {
        let spec = std::env::var("VIEWCRAFT_TEST_DEVICE").unwrap_or_else(|_| "gpu".into());
        Device::open(&spec).map_err(|e| e.to_string())
    });
    match r {
        Ok(d) => Some(d.clone()),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and no GPU adapter: {e}");
            }
            eprintln!("SKIP (no GPU adapter): {e}");
            None
        }
    }
}

/// A device of its own on the shared device's adapter (kernel family forced when `variant` is
/// given), for a test that flips device-wide switches (conv windows, profiling, packing) or
/// reads device counters: those must not mix with the tests running concurrently on the
/// shared one, nor with each other, so each `purpose` gets its own device. Opened once per
/// (purpose, variant) and never dropped: tearing a lavapipe device down while other threads
/// compile pipelines is not safe.
pub fn own_gpu(purpose: &str, variant: Option<viewcraft::gpu::KernelVariant>) -> Option<Device> {
    use std::sync::Mutex;
    type Own = Vec<(String, Option<viewcraft::gpu::KernelVariant>, Device)>;
    static OWN: Mutex<Own> = Mutex::new(Vec::new());
    let shared = gpu()?;
    let mut own = OWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, d)) = own.iter().find(|(p, v, _)| p == purpose && *v == variant) {
        return Some(d.clone());
    }
    let name = shared.gpu()?.info.name.clone();
    let d = Device::Gpu(
        viewcraft::gpu::Gpu::open_with_variant(&name, variant)
            .unwrap_or_else(|e| panic!("second device on {name}: {e}")),
    );
    own.push((purpose.to_string(), variant, d.clone()));
    Some(d)
}

/// Devices of both kernel families on the test adapter, each its own (see `own_gpu`): the
/// register tiles lavapipe picks and the workgroup tiles hardware GPUs pick. Empty where no
/// adapter exists (outside CI).
pub fn both_families(purpose: &str) -> Vec<Device> {
    use viewcraft::gpu::KernelVariant::*;
    [RegisterTiled, WorkgroupTiled]
        .into_iter()
        .filter_map(|v| own_gpu(purpose, Some(v)))
        .collect()
}

/// A fresh seed per call (printed in every failure message); `VIEWCRAFT_TEST_SEED` replays one.
pub fn rng() -> (StdRng, u64) {
    let seed: u64 = std::env::var("VIEWCRAFT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    (StdRng::seed_from_u64(seed), seed)
}

pub fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    use rand_distr::{Distribution, StandardNormal};
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// Values bounded away from 0 (for kinks such as ReLU's).
pub fn randn_away(rng: &mut StdRng, n: usize, gap: f32) -> Vec<f32> {
    randn(rng, n)
        .into_iter()
        .map(|v| {
            if v.abs() < gap {
                v.signum() * gap + v
            } else {
                v
            }
        })
        .collect()
}

pub fn t(data: &[f32], shape: &[usize], d: &Device) -> Tensor {
    Tensor::from_slice(data, shape, d).unwrap()
}

/// Assert `|got − want| ≤ atol + rtol·|want|` element-wise; print the worst and the first
/// few mismatches. Also rejects an all-zero reference (a test on zeros cannot fail).
pub fn assert_close<W: Copy + Into<f64>>(
    what: &str,
    got: &[f32],
    want: &[W],
    atol: f64,
    rtol: f64,
) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let want: Vec<f64> = want.iter().map(|&w| w.into()).collect();
    assert!(
        want.is_empty() || want.iter().any(|w| w.abs() > 1e-12),
        "{what}: reference is all zeros; the test cannot fail"
    );
    let mut bad = Vec::new();
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let err = (g as f64 - w).abs();
        let tol = atol + rtol * w.abs();
        if err / tol > worst.1 {
            worst = (i, err / tol);
        }
        // NaN-safe: a NaN error is a mismatch.
        if err.is_nan() || err > tol {
            bad.push((i, g, w, err));
        }
    }
    if !bad.is_empty() {
        let first: Vec<String> = bad
            .iter()
            .take(6)
            .map(|(i, g, w, e)| format!("[{i}] got {g:.7e} want {w:.7e} (err {e:.2e})"))
            .collect();
        panic!(
            "{what}: {} of {} values outside atol {atol:.1e} + rtol {rtol:.1e}; worst at [{}] ({:.1}× tolerance); first: {}",
            bad.len(),
            got.len(),
            worst.0,
            worst.1,
            first.join(", ")
        );
    }
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Central finite differences of a scalar function in f64 against an analytic gradient.
pub fn check_grad(what: &str, x: &[f64], grad: &[f64], f: impl Fn(&[f64]) -> f64) {
    let h = 1e-6;
    let mut xp = x.to_vec();
    let mut max_rel = 0.0f64;
    for i in 0..x.len() {
        xp[i] = x[i] + h;
        let fp = f(&xp);
        xp[i] = x[i] - h;
        let fm = f(&xp);
        xp[i] = x[i];
        let num = (fp - fm) / (2.0 * h);
        let err = (num - grad[i]).abs();
        let tol = 1e-6 + 1e-5 * num.abs().max(grad[i].abs());
        assert!(
            err <= tol,
            "{what}: d/dx[{i}] analytic {:.9e} vs finite difference {:.9e} (err {err:.2e})",
            grad[i],
            num
        );
        max_rel = max_rel.max(err / (num.abs() + 1e-12));
    }
    assert!(
        grad.iter().any(|g| g.abs() > 1e-9),
        "{what}: gradient is all zeros; the check cannot fail"
    );
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One golden PyTorch fixture (`tests/fixtures/NAME.safetensors`): f32 inputs, f64 references.
pub struct Fixture {
    pub name: String,
    bytes: Vec<u8>,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = format!(
            "{}/tests/fixtures/{name}.safetensors",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Fixture {
            name: name.into(),
            bytes,
        }
    }

    /// (values as f64, shape) of any float or int tensor.
    pub fn get(&self, key: &str) -> (Vec<f64>, Vec<usize>) {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(key)
            .unwrap_or_else(|e| panic!("{}: {key}: {e}", self.name));
        let d = t.data();
        let v: Vec<f64> = match t.dtype() {
            safetensors::Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{}: {key}: unsupported dtype {other:?}", self.name),
        };
        (v, t.shape().to_vec())
    }

    pub fn f64(&self, key: &str) -> Vec<f64> {
        self.get(key).0
    }

    pub fn f32(&self, key: &str) -> Vec<f32> {
        self.get(key).0.iter().map(|&v| v as f32).collect()
    }

    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.get(key).1
    }

    pub fn meta(&self, key: &str) -> String {
        let (_, m) = safetensors::SafeTensors::read_metadata(&self.bytes).unwrap();
        m.metadata()
            .as_ref()
            .and_then(|m| m.get(key).cloned())
            .unwrap_or_else(|| panic!("{}: no metadata {key}", self.name))
    }

    pub fn names(&self) -> Vec<String> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        st.names().into_iter().map(String::from).collect()
    }
}

/// ResNet-18, CIFAR stem, base `width`, no classifier.
pub fn resnet18(width: usize) -> viewcraft::nn::resnet::ResNetConfig {
    use viewcraft::nn::resnet::{Arch, ResNetConfig, Stem};
    ResNetConfig {
        arch: Arch::Resnet18,
        stem: Stem::Cifar,
        width,
        zero_init_residual: false,
        num_classes: None,
    }
}

/// A short CIFAR-10 pre-training config: RandomResizedCrop only (set `crop` for C-Crop),
/// logging every step, 2 loader threads.
pub fn pretrain_config(
    epochs: usize,
    batch: usize,
    lr: f64,
    seed: u64,
) -> viewcraft::train::PretrainConfig {
    let (mean, std) = viewcraft::data::augment::mean_std("cifar10").unwrap();
    viewcraft::train::PretrainConfig {
        epochs,
        batch_size: batch,
        lr,
        momentum: 0.9,
        weight_decay: 1e-4,
        decay_rate: 0.1,
        lr_warmup_epochs: 0,
        lars: false,
        exclude_bn_bias_wd: false,
        seed,
        workers: 2,
        log_interval: 1,
        crop: viewcraft::crop::CropKind::Rcrop,
        views: Vec::new(),
        mask: None,
        alpha: 0.1,
        box_thresh: 0.1,
        warmup_epochs: epochs,
        loc_interval: epochs,
        mean,
        std,
        blur: false,
        init_box: viewcraft::crop::sampler::WHOLE_IMAGE,
        checkpoint_dir: None,
        save_interval: 1,
        resume: None,
        rrc: viewcraft::crop::sampler::RrcParams::default(),
        config_text: "test".into(),
        knn: None,
        stop: None,
        stop_at_step: None,
    }
}

/// The first `n` training images of the shipped CIFAR-10 subset.
pub fn cifar_train(n: usize) -> std::sync::Arc<viewcraft::data::ImageSet> {
    use viewcraft::data::cifar::{embedded_root, load, Split, Variant};
    std::sync::Arc::new(
        load(&embedded_root(), Variant::Cifar10, Split::Train)
            .unwrap()
            .truncate(n),
    )
}

/// SimCLR with the reference heads on a ResNet-18 of base `width`, initialised from `seed`.
pub fn simclr(
    width: usize,
    seed: u64,
    dev: &viewcraft::tensor::Device,
) -> viewcraft::ssl::simclr::SimClr {
    use rand::SeedableRng;
    viewcraft::ssl::simclr::SimClr::new(
        resnet18(width),
        viewcraft::ssl::simclr::SimClrConfig::default(),
        &mut rand::rngs::StdRng::seed_from_u64(seed),
        dev,
    )
    .unwrap()
}

/// Spread of the L2-normalised eval-mode backbone features of the first `n` images of `data`
/// (normalised as for evaluation): √(Σ_j var_j) over the feature dimensions. 0 when every
/// image maps to the same direction (collapse). Eval mode matters: batch statistics would
/// force distinct outputs whatever the weights.
pub fn eval_feature_spread(
    m: &mut dyn viewcraft::ssl::Method,
    data: &viewcraft::data::ImageSet,
    n: usize,
    dev: &Device,
) -> f32 {
    let (mean, std) = viewcraft::data::augment::mean_std("cifar10").unwrap();
    let mut tape = viewcraft::Tape::new();
    let x = tape.input(data.eval_batch(0..n, mean, std, dev).unwrap());
    let f = viewcraft::ssl::embed(m, &mut tape, x).unwrap();
    let f = tape.l2_normalize(f).unwrap();
    let v = tape.value(f).to_vec().unwrap();
    let d = v.len() / n;
    (0..d)
        .map(|j| {
            let col: Vec<f32> = (0..n).map(|i| v[i * d + j]).collect();
            let mean = col.iter().sum::<f32>() / n as f32;
            col.iter().map(|c| (c - mean).powi(2)).sum::<f32>() / n as f32
        })
        .sum::<f32>()
        .sqrt()
}

/// A weight compared after one step on the adapter and on the CPU path: every element of
/// the update within `floor`·RMS + `rtol`·|Δ|, except at most `kinks` (a fraction) of the
/// elements, which must still be within `kink_floor`·RMS + `rtol`·|Δ|.
///
/// Why these exist: where the gradient is taken before any kink (the last head layer), f32
/// rounding stays ~1e-5 of the update, and the check is tight. Below a ReLU it is not: a
/// pre-activation within rounding of 0 takes the other side of the kink on one device, and
/// that element's whole gradient flips (a row of the next layer's weight gradient, ~15 % of
/// the RMS update); and BN's backward cancels most of what reaches it, so the first stage
/// differs by ~1-2 % of the RMS update everywhere (up to ~6 % for single elements), deeper
/// layers by ~0.3 %. Measured on lavapipe.
pub struct StepCheck {
    pub name: String,
    pub floor: f64,
    pub rtol: f64,
    pub kinks: f64,
    pub kink_floor: f64,
}

/// The four weights every method's one-step test compares; `first` and `last` name the
/// head's first and last linear layers.
pub fn step_checks(first: &str, last: &str) -> [StepCheck; 4] {
    let c = |name: String, floor, rtol, kinks, kink_floor| StepCheck {
        name,
        floor,
        rtol,
        kinks,
        kink_floor,
    };
    [
        c("layer1.0.conv1.weight".into(), 0.1, 1e-2, 0.0, 0.1),
        c("layer4.0.downsample.0.weight".into(), 3e-2, 1e-2, 0.0, 3e-2),
        c(format!("{first}.weight"), 1e-2, 1e-2, 1e-2, 0.3),
        c(format!("{last}.weight"), 1e-3, 1e-3, 0.0, 1e-3),
    ]
}

/// One optimiser step on two devices from the same weights `before`: compare the updates
/// Δ = after − before element by element as `check` says.
pub fn assert_update_close(
    what: &str,
    check: &StepCheck,
    before: &[f32],
    got: &[f32],
    want: &[f32],
) {
    let dw: Vec<f64> = want
        .iter()
        .zip(before)
        .map(|(&a, &b)| a as f64 - b as f64)
        .collect();
    let dg: Vec<f64> = got
        .iter()
        .zip(before)
        .map(|(&a, &b)| a as f64 - b as f64)
        .collect();
    let rms = (dw.iter().map(|d| d * d).sum::<f64>() / dw.len().max(1) as f64).sqrt();
    assert!(rms > 0.0, "{what}: no update; the test cannot fail");
    let err = |i: usize| (dg[i] - dw[i]).abs();
    let outside = |floor: f64| -> Vec<usize> {
        (0..dw.len())
            .filter(|&i| err(i).is_nan() || err(i) > floor * rms + check.rtol * dw[i].abs())
            .collect()
    };
    let (tight, loose) = (outside(check.floor), outside(check.kink_floor));
    let worst = (0..dw.len()).map(err).fold(0.0, f64::max) / rms;
    if std::env::var("VIEWCRAFT_TEST_VERBOSE").is_ok() {
        eprintln!(
            "{what}: rms {rms:.3e}, worst err/rms {worst:.2e}, {} of {} outside the tight tolerance",
            tight.len(),
            dw.len()
        );
    }
    let show = |idx: &[usize]| -> String {
        idx.iter()
            .take(6)
            .map(|&i| format!("[{i}] got {:.6e} want {:.6e}", dg[i], dw[i]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert!(
        tight.len() as f64 <= check.kinks * dw.len() as f64,
        "{what}: {} of {} update elements outside {:.0e}·RMS ({rms:.2e}) + {:.0e}·|Δ| (at most {:.0} % may be, for ReLU kinks); worst {worst:.2e}·RMS; first: {}",
        tight.len(),
        dw.len(),
        check.floor,
        check.rtol,
        100.0 * check.kinks,
        show(&tight)
    );
    assert!(
        loose.is_empty(),
        "{what}: {} update elements outside {:.0e}·RMS ({rms:.2e}) + {:.0e}·|Δ|; first: {}",
        loose.len(),
        check.kink_floor,
        check.rtol,
        show(&loose)
    );
}

/// Method `name` (simclr | moco | byol | simsiam) on a ResNet-18 of base `width`, from `seed`;
/// MoCo with a queue of `queue` keys, BN groups of `bn_group` and key momentum `momentum`.
pub fn method_named(
    name: &str,
    width: usize,
    seed: u64,
    (queue, bn_group, momentum): (usize, usize, f32),
    dev: &Device,
) -> Box<dyn viewcraft::ssl::Method> {
    use viewcraft::ssl::{byol::*, moco::*, simclr::*, simsiam::*};
    let model = resnet18(width);
    let rng = &mut StdRng::seed_from_u64(seed);
    match name {
        "simclr" => Box::new(SimClr::new(model, SimClrConfig::default(), rng, dev).unwrap()),
        "moco" => Box::new(
            Moco::new(
                model,
                MocoConfig {
                    k: queue,
                    bn_group,
                    momentum,
                    ..Default::default()
                },
                rng,
                dev,
            )
            .unwrap(),
        ),
        "byol" => Box::new(Byol::new(model, ByolConfig::default(), rng, dev).unwrap()),
        _ => Box::new(SimSiam::new(model, SimSiamConfig::default(), rng, dev).unwrap()),
    }
}

/// Every tensor of a safetensors file, sorted by name (metadata order is not stable).
pub fn tensors(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let raw = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}
