//! Kernel benchmarks shared by `cargo bench` and `viewcraft bench`: every variant is validated
//! against the CPU reference before it is timed; times come from GPU timestamps where the
//! adapter has them, else from wall time over a batch of repetitions in one submission.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::data::masking::{MaskRecipe, Strategy};
use crate::error::{Error, Result};
use crate::ops::conv2d::{self, Conv2d, Dims};
use crate::ops::linear;
use crate::tensor::{Device, Tensor};

#[derive(Clone, Debug, Serialize)]
pub struct KernelResult {
    pub kernel: String,
    pub shape: String,
    pub gflop: f64,
    pub seconds: f64,
    pub gflops: f64,
    /// Seconds by GPU timestamps, when available.
    pub gpu_seconds: Option<f64>,
    pub max_rel_err: f64,
    /// The kernel family that ran: `workgroup` (hardware GPUs), `register` (CPU-type
    /// adapters) or `cpu`.
    pub family: &'static str,
    /// The workgroup GEMM's tile (BMxBNxBK) where that family ran a GEMM.
    pub tile: Option<String>,
}

/// (family, tile) of a product of `m` output rows on `dev`.
fn family_and_tile(dev: &Device, m: usize) -> (&'static str, Option<String>) {
    use crate::gpu::KernelVariant;
    match dev {
        Device::Cpu => ("cpu", None),
        Device::Gpu(g) => match g.variant {
            KernelVariant::RegisterTiled => ("register", None),
            KernelVariant::WorkgroupTiled => {
                ("workgroup", Some(crate::ops::gemm::tiles_for(g, m).label()))
            }
        },
    }
}

/// The ResNet-18 CIFAR convolutions: the stem, the 3×3 s1 convolution of each stage, the
/// first stride-2 3×3 and its 1×1 stride-2 shortcut (benches/pytorch_gpu.py times the same
/// list under the same names).
pub fn resnet18_cifar_convs(batch: usize) -> Vec<(String, Dims)> {
    let conv = |c: usize, hw: usize, o: usize, k: usize, s: usize, p: usize| {
        Conv2d::new(s, p)
            .dims(&[batch, c, hw, hw], &[o, c, k, k])
            .expect("valid shape")
    };
    let mut out = vec![(
        format!("stem 3->64 32x32 b{batch}"),
        conv(3, 32, 64, 3, 1, 1),
    )];
    for (c, hw) in [(64, 32), (128, 16), (256, 8), (512, 4)] {
        out.push((format!("{c}ch {hw}x{hw} b{batch}"), conv(c, hw, c, 3, 1, 1)));
    }
    out.push((
        format!("64->128 s2 32x32 b{batch}"),
        conv(64, 32, 128, 3, 2, 1),
    ));
    out.push((
        format!("1x1 64->128 s2 32x32 b{batch}"),
        conv(64, 32, 128, 1, 2, 0),
    ));
    out
}

fn rand_t(shape: &[usize], seed: u64, dev: &Device) -> Result<Tensor> {
    Tensor::randn(shape, 1.0, &mut StdRng::seed_from_u64(seed), dev)
}

/// Normwise relative error max|got − want| / max|want| (f32 sums of thousands of terms in
/// another order differ by ~1e-6 of the largest value; a wrong kernel by O(1)).
fn rel_err(got: &Tensor, want: &Tensor) -> Result<f64> {
    let (g, w) = (got.to_vec()?, want.to_vec()?);
    let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    let diff = g
        .iter()
        .zip(&w)
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .fold(0.0, f64::max);
    Ok(diff / scale.max(f64::MIN_POSITIVE))
}

/// Time `reps` recordings of `f` in one submission.
fn time(
    dev: &Device,
    reps: usize,
    mut f: impl FnMut() -> Result<Tensor>,
) -> Result<(f64, Option<f64>)> {
    f()?; // warm-up: compiles the pipelines, fills the pool
    dev.sync()?;
    match dev {
        Device::Gpu(g) => {
            let (r, wall, gpu) = g.time(|| (0..reps).try_for_each(|_| f().map(|_| ())))?;
            r?;
            Ok((wall / reps as f64, gpu.map(|s| s / reps as f64)))
        }
        Device::Cpu => {
            // The median repetition: robust to the other tenants of a shared machine.
            let mut t = Vec::with_capacity(reps);
            for _ in 0..reps.max(1) {
                let t0 = Instant::now();
                f()?;
                t.push(t0.elapsed().as_secs_f64());
            }
            t.sort_by(f64::total_cmp);
            Ok((t[t.len() / 2], None))
        }
    }
}

/// The three convolution kernels by name.
pub const CONV_KERNELS: [&str; 3] = [
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
];

/// Run convolution kernel `kernel` (one of `CONV_KERNELS`) once.
pub fn run_conv(kernel: &str, x: &Tensor, w: &Tensor, gy: &Tensor, d: &Dims) -> Result<Tensor> {
    match kernel {
        "conv2d_forward" => conv2d::forward(x, w, Conv2d::new(d.stride, d.pad)),
        "conv2d_backward_input" => conv2d::backward_input(gy, w, d),
        "conv2d_backward_weight" => conv2d::backward_weight(gy, x, d),
        other => Err(Error::Config {
            field: "kernel".into(),
            msg: format!("unknown kernel `{other}`"),
        }),
    }
}

/// Random x, w, gy for a convolution on `dev`.
pub fn conv_inputs(d: &Dims, dev: &Device) -> Result<[Tensor; 3]> {
    Ok([
        rand_t(&[d.n, d.c, d.h, d.w], 1, dev)?,
        rand_t(&[d.o, d.c, d.kh, d.kw], 2, dev)?,
        rand_t(&[d.n, d.o, d.oh, d.ow], 3, dev)?,
    ])
}

/// Forward, input-gradient and weight-gradient of one convolution.
pub fn bench_conv(dev: &Device, name: &str, d: &Dims, reps: usize) -> Result<Vec<KernelResult>> {
    let [x, w, gy] = conv_inputs(d, dev)?;
    let (xc, wc, gyc) = (
        x.to_device(&Device::Cpu)?,
        w.to_device(&Device::Cpu)?,
        gy.to_device(&Device::Cpu)?,
    );
    let gflop = 2.0 * d.macs() as f64 * 1e-9;
    let mut out = Vec::new();
    for kernel in CONV_KERNELS {
        // Checked against the CPU path's kernels (themselves tested against the reference):
        // the reference takes minutes at batch 256.
        let err = rel_err(
            &run_conv(kernel, &x, &w, &gy, d)?,
            &run_conv(kernel, &xc, &wc, &gyc, d)?,
        )?;
        if err > 1e-4 {
            return Err(Error::Gpu(format!("{kernel} {name}: result differs from the CPU reference (rel. error {err:.2e}); not timing it")));
        }
        if let Device::Gpu(g) = dev {
            g.take_profile(); // the validation run is not part of the profile
        }
        let (secs, gpu) = time(dev, reps, || run_conv(kernel, &x, &w, &gy, d))?;
        print_profile(dev, &format!("{kernel} {name}"), reps + 1);
        let best = gpu.unwrap_or(secs);
        let rows = if kernel == "conv2d_backward_input" {
            d.c
        } else {
            d.o
        };
        let (family, tile) = family_and_tile(dev, rows);
        out.push(KernelResult {
            kernel: kernel.into(),
            shape: name.into(),
            gflop,
            seconds: secs,
            gflops: gflop / best,
            gpu_seconds: gpu,
            max_rel_err: err,
            family,
            tile,
        });
    }
    Ok(out)
}

/// C = A·B at n×n×n.
pub fn bench_matmul(dev: &Device, n: usize, reps: usize) -> Result<KernelResult> {
    let a = rand_t(&[n, n], 4, dev)?;
    let b = rand_t(&[n, n], 5, dev)?;
    let (ac, bc) = (a.to_device(&Device::Cpu)?, b.to_device(&Device::Cpu)?);
    let want = crate::ops::with_reference_kernels(|| linear::matmul(&ac, &bc))?;
    let err = rel_err(&linear::matmul(&a, &b)?, &want)?;
    if err > 1e-4 {
        return Err(Error::Gpu(format!(
            "matmul {n}: result differs from the CPU reference (rel. error {err:.2e})"
        )));
    }
    let (secs, gpu) = time(dev, reps, || linear::matmul(&a, &b))?;
    let gflop = 2.0 * (n * n * n) as f64 * 1e-9;
    let (family, tile) = family_and_tile(dev, n);
    Ok(KernelResult {
        kernel: "matmul".into(),
        shape: format!("{n}x{n}x{n}"),
        gflop,
        seconds: secs,
        gflops: gflop / gpu.unwrap_or(secs),
        gpu_seconds: gpu,
        max_rel_err: err,
        family,
        tile,
    })
}

/// The kernel set: the ResNet-18 CIFAR convolutions (three kernels each) at `batch` and a
/// 512³ matmul.
pub fn kernel_suite(dev: &Device, reps: usize, batch: usize) -> Result<Vec<KernelResult>> {
    let mut out = Vec::new();
    for (name, d) in resnet18_cifar_convs(batch) {
        out.extend(bench_conv(dev, &name, &d, reps)?);
    }
    out.push(bench_matmul(dev, 512, reps)?);
    Ok(out)
}

/// Two-view loader throughput on the shipped CIFAR-10 subset (RandomResizedCrop + flip +
/// jitter + greyscale + normalise, both views): images per second (one image = two views).
pub fn loader_throughput(
    workers: usize,
    batch: usize,
    mask: Option<Strategy>,
    method: Option<&str>,
) -> Result<(f64, usize)> {
    use crate::data::cifar::{self, Split, Variant};
    use crate::data::loader::{epoch, CropMode};
    let set = std::sync::Arc::new(cifar::load(
        &cifar::embedded_root(),
        Variant::Cifar10,
        Split::Train,
    )?);
    let mut cfg = view_config(mask);
    if let Some(m @ ("clsa" | "clsa_multi")) = method {
        cfg.views = clsa_views(m);
    }
    let t0 = Instant::now();
    let n: usize = epoch(set, CropMode::Rrc, cfg, batch, 0, 0, workers, 4, 0)
        .map(|b| b.indices.len())
        .sum();
    Ok((n as f64 / t0.elapsed().as_secs_f64(), n))
}

/// `--mask`: a masking strategy (none for masking off).
pub fn mask_strategy(name: Option<&str>) -> Result<Option<Strategy>> {
    match name {
        None => Ok(None),
        Some(n) => Strategy::parse(n).ok_or_else(|| Error::Config {
            field: "--mask".into(),
            msg: format!("`{n}` is not one of {}", Strategy::NAMES.join(", ")),
        }),
    }
}

/// The CIFAR views of a benchmark: two, or with masking a masked query, a key and one hard
/// negative (8×8 cells).
fn view_config(mask: Option<Strategy>) -> crate::data::loader::ViewConfig {
    use crate::crop::sampler::RrcParams;
    use crate::data::augment::{mean_std, Jitter};
    use crate::data::loader::{ViewConfig, ViewMask};
    let (mean, std) = mean_std("cifar10").expect("known dataset");
    let mut cfg = ViewConfig::two_views(32, RrcParams::default(), Jitter::default(), mean, std);
    if let Some(s) = mask {
        cfg.views[0].mask = ViewMask::Pos;
        let neg = crate::data::loader::ViewSpec {
            mask: ViewMask::Neg,
            ..cfg.views[1]
        };
        cfg.views.push(neg);
        cfg.mask = Some(MaskRecipe::new(s, 8));
    }
    cfg
}

/// The CIFAR views of `clsa` (single-crop) or `clsa_multi`.
fn clsa_views(method: &str) -> Vec<crate::data::loader::ViewSpec> {
    crate::ssl::clsa::recipe_views(
        method == "clsa_multi",
        32,
        crate::crop::sampler::RrcParams::default(),
        crate::data::loader::CropSource::Box,
    )
}

/// One training-step benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub method: String,
    pub device: String,
    pub batch: usize,
    pub width: usize,
    pub views: usize,
    /// The masking strategy of the measured steps (masking, its saliency forwards and the
    /// per-step upload of the loader's batch included).
    pub mask: Option<&'static str>,
    pub steps: usize,
    pub seconds_per_step: f64,
    pub images_per_s: f64,
    /// 3 × forward FLOPs of the backbone convolutions per second (every rank's).
    pub gflops: f64,
    /// Data-parallel runs (`mpirun -np N`): ranks, each with `batch` images, and the time per
    /// step of the gradient all-reduce (host copies included) with its share of the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_seconds_per_step: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_share: Option<f64>,
}

/// Time `steps` training steps of `method` (simclr | moco | byol | simsiam, or `single`: one
/// view through ResNet-18 + a 10-way classifier with cross-entropy, the anchor of the issue's
/// comparison table) at `batch` on `dev`, ResNet-18 CIFAR at base `width`, after one warm-up
/// step. Inputs are fixed random images (the loader is measured separately).
pub fn train_step(
    dev: &Device,
    method: &str,
    batch: usize,
    width: usize,
    steps: usize,
    mask: Option<Strategy>,
) -> Result<StepResult> {
    use crate::autograd::Tape;
    use crate::nn::resnet::{Arch, ResNet, ResNetConfig, Stem};
    use crate::nn::ParamStore;
    use crate::optim::{momentum_buffers, sgd_store};
    use crate::ssl::{byol::*, moco::*, simclr::*, simsiam::*, HardNegCfg, Method};
    use crate::train::masking::Masker;
    let model = ResNetConfig {
        arch: Arch::Resnet18,
        stem: Stem::Cifar,
        width,
        zero_init_residual: false,
        num_classes: None,
    };
    let mut rng = StdRng::seed_from_u64(0);
    let x1 = Tensor::randn(&[batch, 3, 32, 32], 1.0, &mut rng, &Device::Cpu)?.to_vec()?;
    let x2 = Tensor::randn(&[batch, 3, 32, 32], 1.0, &mut rng, &Device::Cpu)?.to_vec()?;
    let sync = |d: &Device| -> Result<()> { d.sync() };
    // Seconds spent in the gradient all-reduce (data-parallel runs).
    let comm = std::rc::Rc::new(std::cell::Cell::new(0.0f64));
    let comm_in = comm.clone();
    let (views, per_step): (usize, Box<dyn FnMut() -> Result<()>>) = if method == "single" {
        let mut store = ParamStore::default();
        let net = ResNet::new(
            ResNetConfig {
                num_classes: Some(10),
                ..model.clone()
            },
            &mut store,
            &mut rng,
            dev,
        )?;
        let mut bufs = momentum_buffers(&store, dev)?;
        let labels =
            Tensor::from_vec((0..batch).map(|i| (i % 10) as f32).collect(), &[batch], dev)?;
        let dev = dev.clone();
        (
            1,
            Box::new(move || {
                let mut tape = Tape::new();
                let b = store.bind(&mut tape, true);
                let x = tape.input(Tensor::from_slice(&x1, &[batch, 3, 32, 32], &dev)?);
                let logits = net.forward(&mut tape, &mut store, &b, x, true)?;
                let loss = tape.cross_entropy(logits, &labels)?;
                let g = tape.backward(loss)?;
                drop(tape);
                sgd_store(&mut store, &b, &g, &mut bufs, |_| (0.1, 1e-4), 0.9)?;
                if let Device::Gpu(g) = &dev {
                    g.flush();
                }
                Ok(())
            }),
        )
    } else {
        let hard = HardNegCfg {
            count: (mask.is_some() && ["simclr", "moco"].contains(&method)) as usize,
            ..HardNegCfg::default()
        };
        let mut m: Box<dyn Method> = match method {
            "simclr" => Box::new(SimClr::new(
                model,
                SimClrConfig {
                    hard,
                    ..Default::default()
                },
                &mut rng,
                dev,
            )?),
            "moco" => Box::new(Moco::new(
                model,
                MocoConfig {
                    k: 4096.max(batch),
                    hard,
                    ..Default::default()
                },
                &mut rng,
                dev,
            )?),
            "byol" => Box::new(Byol::new(model, ByolConfig::default(), &mut rng, dev)?),
            "simsiam" => Box::new(SimSiam::new(
                model,
                SimSiamConfig::default(),
                &mut rng,
                dev,
            )?),
            "clsa" | "clsa_multi" => {
                let n = if method == "clsa" { 1 } else { 5 };
                Box::new(crate::ssl::clsa::Clsa::new(
                    model,
                    crate::ssl::clsa::ClsaConfig {
                        moco: MocoConfig {
                            k: 4096.max(batch),
                            ..Default::default()
                        },
                        weak: n,
                        strong: n,
                        ..Default::default()
                    },
                    &mut rng,
                    dev,
                )?)
            }
            other => {
                return Err(Error::Config {
                    field: "--method".into(),
                    msg: format!("unknown method `{other}` (simclr, moco, byol, simsiam, clsa, clsa_multi, single)"),
                })
            }
        };
        // CLSA: fixed random inputs at its recipe's view sizes.
        let clsa_inputs: Vec<(Vec<f32>, usize)> = if method.starts_with("clsa") {
            clsa_views(method)
                .iter()
                .map(|v| {
                    let t =
                        Tensor::randn(&[batch, 3, v.size, v.size], 1.0, &mut rng, &Device::Cpu)?;
                    Ok((t.to_vec()?, v.size))
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let mut bufs = momentum_buffers(m.store(), dev)?;
        let dev = dev.clone();
        // With masking, one real loader batch (views, plans, fills) uploaded and masked in
        // every step, as the trainer does.
        let mut masked = match mask {
            Some(s) => {
                use crate::data::cifar::{self, Split, Variant};
                let set = std::sync::Arc::new(
                    cifar::load(&cifar::embedded_root(), Variant::Cifar10, Split::Train)?
                        .truncate(batch),
                );
                let mut cfg = view_config(Some(s));
                if hard.count == 0 {
                    cfg.views.pop();
                }
                let batch = crate::data::loader::epoch(
                    set,
                    crate::data::loader::CropMode::Rrc,
                    cfg.clone(),
                    batch,
                    0,
                    0,
                    1,
                    1,
                    0,
                )
                .next()
                .ok_or_else(|| Error::Config {
                    field: "--batch".into(),
                    msg: "larger than the shipped CIFAR-10 subset".into(),
                })?;
                let masker = Masker::with_recipe(MaskRecipe::new(s, 8));
                Some((cfg, batch, masker))
            }
            None => None,
        };
        let views = if clsa_inputs.is_empty() {
            2 + hard.count
        } else {
            clsa_inputs.len()
        };
        (
            views,
            Box::new(move || {
                m.before_step(1, 2)?;
                let mut tape = Tape::new();
                let b = m.store().bind(&mut tape, true);
                let shape = [batch, 3, 32, 32];
                let inputs = match &mut masked {
                    Some((cfg, bt, masker)) => {
                        let mut xs = bt
                            .views
                            .iter()
                            .map(|v| Tensor::from_slice(v, &shape, &dev))
                            .collect::<Result<Vec<_>>>()?;
                        masker.apply(Some(m.as_mut()), cfg, bt, &mut xs, &dev)?;
                        xs.into_iter().map(|x| tape.input(x)).collect::<Vec<_>>()
                    }
                    None if !clsa_inputs.is_empty() => clsa_inputs
                        .iter()
                        .map(|(x, s)| {
                            Ok(tape.input(Tensor::from_slice(x, &[batch, 3, *s, *s], &dev)?))
                        })
                        .collect::<Result<Vec<_>>>()?,
                    None => vec![
                        tape.input(Tensor::from_slice(&x1, &shape, &dev)?),
                        tape.input(Tensor::from_slice(&x2, &shape, &dev)?),
                    ],
                };
                let loss = m.loss(&mut tape, &b, &inputs)?;
                let mut g = tape.backward(loss)?;
                drop(tape);
                if crate::dist::parallel() {
                    // The backward finishes first, so the time is the all-reduce's own.
                    dev.sync()?;
                    let t0 = Instant::now();
                    crate::train::parallel::average_grads(&mut g, &b, &mut [], &dev)?;
                    comm_in.set(comm_in.get() + t0.elapsed().as_secs_f64());
                }
                sgd_store(m.store_mut(), &b, &g, &mut bufs, |_| (0.1, 1e-4), 0.9)?;
                drop(g);
                m.after_step()?;
                if let Device::Gpu(g) = &dev {
                    g.flush();
                }
                Ok(())
            }),
        )
    };
    let mut per_step = per_step;
    per_step()?;
    sync(dev)?;
    comm.set(0.0);
    print_profile(dev, "warm-up", 1);
    // The median step (robust to the other tenants of a shared machine); on the GPU path the
    // mean, as each step's work may still be in flight when the next is recorded.
    let secs = if matches!(dev, Device::Cpu) {
        let mut t = Vec::with_capacity(steps.max(1));
        for _ in 0..steps.max(1) {
            let t0 = Instant::now();
            per_step()?;
            t.push(t0.elapsed().as_secs_f64());
        }
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    } else {
        let t0 = Instant::now();
        for _ in 0..steps {
            per_step()?;
        }
        sync(dev)?;
        t0.elapsed().as_secs_f64() / steps.max(1) as f64
    };
    print_profile(dev, &format!("{method} step"), steps.max(1));
    // 3 × forward per view at its size (CLSA's recipe sizes; 32 px otherwise).
    let sizes: Vec<usize> = if method.starts_with("clsa") {
        clsa_views(method).iter().map(|v| v.size).collect()
    } else {
        vec![32; views]
    };
    let macs: usize = sizes.iter().map(|&s| model_macs(width, s)).sum();
    let ranks = crate::dist::place().size;
    let flops = 3.0 * 2.0 * macs as f64 * (batch * ranks) as f64;
    Ok(StepResult {
        method: method.into(),
        device: dev.name(),
        batch,
        width,
        views,
        mask: mask.map(Strategy::name),
        steps,
        seconds_per_step: secs,
        images_per_s: (batch * ranks) as f64 / secs,
        ranks: (ranks > 1).then_some(ranks),
        comm_seconds_per_step: (ranks > 1).then(|| comm.get() / steps.max(1) as f64),
        comm_share: (ranks > 1).then(|| comm.get() / steps.max(1) as f64 / secs),
        gflops: flops / secs * 1e-9,
    })
}

/// With `VIEWCRAFT_PROFILE=1`: what ran since the last report, per repetition, slowest
/// first (to stderr): per kernel on the GPU path (the dispatches were serialised to time
/// them), per op on the CPU path (the tape's timing of each forward and backward).
fn print_profile(dev: &Device, title: &str, reps: usize) {
    let mut p = match dev {
        Device::Gpu(g) if g.profiling() => g.take_profile(),
        Device::Cpu if crate::autograd::profile::enabled() => crate::autograd::profile::take(),
        _ => return,
    };
    p.sort_by(|a, b| b.2.total_cmp(&a.2));
    let total: f64 = p.iter().map(|e| e.2).sum();
    let r = reps as f64;
    let what = if matches!(dev, Device::Gpu(_)) {
        "dispatches"
    } else {
        "calls"
    };
    eprintln!("profile {title}: {:.2} ms per repetition", total / r * 1e3);
    for (label, n, s) in p {
        eprintln!(
            "  {label:32} {:8.2} ms {:5.1} %  {:7.1} {what}",
            s / r * 1e3,
            100.0 * s / total.max(f64::MIN_POSITIVE),
            n as f64 / r
        );
    }
}

fn model_macs(width: usize, size: usize) -> usize {
    use crate::nn::resnet::{Arch, ResNetConfig, Stem};
    ResNetConfig {
        arch: Arch::Resnet18,
        stem: Stem::Cifar,
        width,
        zero_init_residual: false,
        num_classes: None,
    }
    .forward_macs(size, size)
}
