//! The `viewcraft` command line. Subcommands land with the issues that build them; every
//! user error becomes one line on stderr and a non-zero exit, never a panic.

pub mod eval;
pub mod pretrain;
pub mod quickstart;
pub mod viz;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::bench;
use crate::error::{Error, Result};
use crate::gpu::{context::NO_ADAPTER_HINT, list_adapters};
use crate::tensor::Device;

#[derive(Parser, Debug)]
#[command(
    name = "viewcraft",
    version,
    about = "Self-supervised visual representation learning on any GPU (wgpu)"
)]
pub struct Cli {
    /// Device: `auto` (best hardware adapter, else the CPU path), `gpu` (any adapter,
    /// software ones such as llvmpipe included), `cpu` (the CPU path's fast kernels),
    /// `reference` (the CPU path with the plain reference kernels, end to end) or a substring
    /// of an adapter name. Overrides VIEWCRAFT_DEVICE.
    #[arg(long, global = true)]
    pub device: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The main job (the default): SimCLR + ContrastiveCrop on the shipped CIFAR-10 subset,
    /// then the kNN monitor and a results table.
    Quickstart(quickstart::QuickstartArgs),
    /// Pre-train from a TOML config into a run directory (config.toml, metrics.jsonl, plots,
    /// checkpoints/), with the kNN monitor and, when `[linear] epochs > 0`, the linear probe.
    /// An interrupted run directory continues from its last checkpoint.
    Pretrain(pretrain::PretrainArgs),
    /// Write the backbone of a checkpoint as `backbone.safetensors` with bare torchvision
    /// names and layouts (load into torchvision.models.resnet* with strict=True).
    Export {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Pooled backbone features of a dataset split (eval mode, normalisation only, dataset
    /// order) to a safetensors file with `features` [N, D] and `labels` [N]; with
    /// --standardize, the features the probe trains on and their `feature_mean` /
    /// `feature_std` [D].
    Embed {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Dataset directory (default: the checkpoint's run data, else the shipped subset).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Dataset kind (cifar10, cifar100; default: the checkpoint's run data).
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long, value_parser = ["train", "test"], default_value = "test")]
        split: String,
        #[arg(long)]
        out: PathBuf,
        /// Standardise each dimension as `feature_norm = "standardize"` does: with the mean
        /// and std of the training split's eval-mode features (also written).
        #[arg(long)]
        standardize: bool,
        /// With --standardize: the statistics come from the first N training images
        /// (default: the checkpoint run's `data.subset`, the images its own probe trained
        /// on; 0 = the whole split, as `linear-eval` by default).
        #[arg(long, value_name = "N", requires = "standardize")]
        subset: Option<usize>,
    },
    /// Weighted kNN top-1 (k, temperature) of a checkpoint's backbone: train features vote
    /// for the test images; prints one JSON object (and writes it with --out).
    Knn {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Dataset directory (default: the checkpoint's run data, else the shipped subset).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long, default_value_t = 200)]
        k: usize,
        #[arg(long, default_value_t = 0.1)]
        temperature: f32,
        /// Also write the JSON result to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Linear probe of a checkpoint's frozen backbone (defaults: standardised features, lr
    /// 0.03, 100 epochs, milestones 60/80, RRC + flip; the SPEC A.6 protocol is
    /// configs/linear/*.toml); prints one JSON object with best and last top-1 and
    /// writes the full result (per-epoch history) to --out (default: the run directory's
    /// linear_eval.json).
    LinearEval {
        #[arg(long)]
        checkpoint: PathBuf,
        /// A linear-eval TOML config ([data], [linear]); e.g. configs/linear/cifar10.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a field, e.g. `--set linear.epochs=10` (`train.X` means `linear.X`).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Pictures of a checkpoint's heatmaps, boxes, object proposals and crops for the first N
    /// training images: heatmaps.png, boxes.png, proposals.png, views.png (RandomResizedCrop vs
    /// ContrastiveCrop pairs), boxes.json ({"k": …, "boxes": [[top, left, bottom, right], …]})
    /// and proposals.json ({"k": …, "proposals": [[[top, left, bottom, right], …], …]}), in
    /// dataset order.
    Viz {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Number of training images (dataset order).
        #[arg(long, default_value_t = 64)]
        limit: usize,
        /// Heatmap threshold (default: the checkpoint's crop.box_thresh, else 0.1).
        #[arg(long)]
        k: Option<f32>,
        /// Dataset directory (default: the checkpoint's run data, else the shipped subset).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        dataset: Option<String>,
    },
    /// List every adapter wgpu can see: backend, type, limits, features.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Kernel benchmarks (validated against the CPU reference before timing).
    Bench {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Repetitions per kernel.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Measure the two-view data loader instead of the kernels.
        #[arg(long)]
        loader: bool,
        /// Measure training steps of this method (simclr, moco, byol, simsiam; `single` = one
        /// view, ResNet-18 + classifier + cross-entropy) instead of the kernels.
        #[arg(long)]
        method: Option<String>,
        /// Batch size for --method and the kernel bench.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// ResNet-18 base width for --method.
        #[arg(long, default_value_t = 64)]
        width: usize,
        /// Timed steps for --method (after one warm-up step).
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Saliency-guided masking in the measured loader / steps: hp | blur | mean (moco and
        /// simclr steps take one hard negative per image).
        #[arg(long)]
        mask: Option<String>,
    },
    /// A short end-to-end check of the selected device: a small CNN trained for a few SGD
    /// steps, its first gradients compared with the CPU reference.
    Smoke {
        #[arg(long, default_value_t = 10)]
        steps: usize,
    },
}

/// The device to use: `--device`, else VIEWCRAFT_DEVICE, else `default`. With `auto` or
/// `gpu` and no usable adapter, fall back to the CPU path with one line saying so.
pub fn select_device_or(flag: Option<&str>, default: &str) -> Result<Device> {
    let spec = flag
        .map(str::to_string)
        .or_else(|| std::env::var("VIEWCRAFT_DEVICE").ok())
        .unwrap_or_else(|| default.into());
    let place = crate::dist::place();
    if place.size > 1 && (spec.eq_ignore_ascii_case("auto") || spec.eq_ignore_ascii_case("gpu")) {
        // Data parallel: each rank of a node takes its own hardware adapter, and every rank
        // takes the same kind of path (the CPU path unless every rank has an adapter: the
        // ranks' updates must be the same arithmetic).
        let gpu = crate::gpu::Gpu::open_nth_hardware(place.local_rank);
        let mut have = [gpu.is_ok() as u8 as f32];
        crate::dist::all_reduce_sum(&mut have);
        return match gpu {
            Ok(g) if have[0] as usize == place.size => Ok(Device::Gpu(g)),
            Ok(_) | Err(Error::NoAdapter(_)) => {
                if place.is_root() {
                    eprintln!(
                        "viewcraft: {} of {} ranks found a hardware GPU adapter; every rank runs on the CPU path",
                        have[0], place.size
                    );
                }
                Ok(Device::Cpu)
            }
            Err(e) => Err(e),
        };
    }
    match Device::open(&spec) {
        Ok(d) => Ok(d),
        Err(Error::NoAdapter(msg))
            if spec.eq_ignore_ascii_case("auto") || spec.eq_ignore_ascii_case("gpu") =>
        {
            eprintln!("viewcraft: {msg}; running on the CPU path");
            Ok(Device::Cpu)
        }
        Err(e) => Err(e),
    }
}

/// `select_device_or(flag, "auto")`.
pub fn select_device(flag: Option<&str>) -> Result<Device> {
    select_device_or(flag, "auto")
}

pub fn run(cli: Cli) -> Result<()> {
    match cli
        .command
        .unwrap_or(Command::Quickstart(quickstart::QuickstartArgs::default()))
    {
        Command::Quickstart(args) => quickstart::run(&args, cli.device.as_deref()),
        Command::Pretrain(args) => {
            let cfg = crate::config::Config::load(Some(&args.config), &args.sets)?;
            let dev = select_device_or(cli.device.as_deref(), &cfg.train.device)?;
            let s = pretrain::run(
                &cfg,
                Some(&args.config),
                args.out.as_deref(),
                args.resume,
                &dev,
            )?;
            if crate::dist::place().is_root() {
                pretrain::print_table(&s);
            }
            Ok(())
        }
        Command::Devices { json } => devices(json),
        Command::Embed {
            checkpoint,
            data,
            dataset,
            split,
            out,
            standardize,
            subset,
        } => {
            let dev = select_device(cli.device.as_deref())?;
            eval::embed(
                &checkpoint,
                data.as_deref(),
                dataset.as_deref(),
                &split,
                &out,
                standardize.then_some(subset),
                &dev,
            )
        }
        Command::Knn {
            checkpoint,
            data,
            dataset,
            k,
            temperature,
            out,
        } => {
            let dev = select_device(cli.device.as_deref())?;
            eval::knn(
                &checkpoint,
                data.as_deref(),
                dataset.as_deref(),
                k,
                temperature,
                out.as_deref(),
                &dev,
            )
        }
        Command::LinearEval {
            checkpoint,
            config,
            sets,
            out,
        } => eval::linear_eval(
            &checkpoint,
            config.as_deref(),
            &sets,
            out.as_deref(),
            cli.device.as_deref(),
        ),
        Command::Viz {
            checkpoint,
            out,
            limit,
            k,
            data,
            dataset,
        } => {
            let dev = select_device(cli.device.as_deref())?;
            viz::run(
                &checkpoint,
                &out,
                limit,
                k,
                data.as_deref(),
                dataset.as_deref(),
                &dev,
            )
        }
        Command::Export { checkpoint, out } => {
            let n = crate::train::checkpoint::export_backbone(&checkpoint, &out)?;
            println!("wrote {n} tensors to {}", out.display());
            Ok(())
        }
        Command::Bench {
            json,
            loader: true,
            mask,
            method,
            ..
        } => {
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
            let strategy = bench::mask_strategy(mask.as_deref())?;
            let (ips, n) = bench::loader_throughput(workers, 256, strategy, method.as_deref())?;
            let what = match (strategy, method.as_deref()) {
                (_, Some(m @ ("clsa" | "clsa_multi"))) => {
                    format!("{m} loader (key, weak and strong views)")
                }
                (Some(s), _) => format!("masked loader ({}: query, key, hard negative)", s.name()),
                _ => "two-view loader".to_string(),
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "loader_images_per_s": ips, "images": n, "workers": workers, "mask": strategy.map(|s| s.name()), "method": method })
                );
            } else {
                println!("{what}: {ips:.0} images/s ({n} CIFAR images, {workers} workers)");
            }
            Ok(())
        }
        Command::Bench {
            json,
            method: Some(method),
            batch,
            width,
            steps,
            mask,
            ..
        } => {
            let dev = select_device_or(cli.device.as_deref(), "gpu")?;
            let strategy = bench::mask_strategy(mask.as_deref())?;
            let r = bench::train_step(&dev, &method, batch, width, steps, strategy)?;
            if !crate::dist::place().is_root() {
                return Ok(());
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&r).map_err(|e| Error::Gpu(e.to_string()))?
                );
            } else {
                println!(
                    "{} step, ResNet-18 width {}, batch {} × {} view(s) on {}: {:.3} s/step, {:.2} img/s, {:.1} GFLOP/s",
                    r.method, r.width, r.batch, r.views, r.device, r.seconds_per_step, r.images_per_s, r.gflops
                );
                if let (Some(n), Some(c), Some(share)) =
                    (r.ranks, r.comm_seconds_per_step, r.comm_share)
                {
                    println!(
                        "  {n} ranks (batch {} each): gradient all-reduce {:.1} ms/step, {:.1} % of the step",
                        r.batch,
                        c * 1e3,
                        share * 100.0
                    );
                }
            }
            Ok(())
        }
        Command::Bench {
            json, reps, batch, ..
        } => {
            // Kernel benchmarks measure the GPU path: any adapter, software ones included.
            let dev = select_device_or(cli.device.as_deref(), "gpu")?;
            let results = bench::kernel_suite(&dev, reps, batch)?;
            if json {
                let v = serde_json::json!({ "device": dev.name(), "kernels": results });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| Error::Gpu(e.to_string()))?
                );
            } else {
                println!("device: {}", dev.name());
                for r in results {
                    let gpu = r
                        .gpu_seconds
                        .map(|s| format!("{:.2} ms (timestamps)", s * 1e3))
                        .unwrap_or_default();
                    println!(
                        "{:24} {:28} {:8.2} GFLOP/s  {:8.2} ms wall  {gpu}  [{}{}]",
                        r.kernel,
                        r.shape,
                        r.gflops,
                        r.seconds * 1e3,
                        r.family,
                        r.tile
                            .as_deref()
                            .map(|t| format!(" {t}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        Command::Smoke { steps } => {
            let dev = select_device(cli.device.as_deref())?;
            crate::smoke::run(&dev, steps)
        }
    }
}

fn devices(json: bool) -> Result<()> {
    let list = list_adapters();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).map_err(|e| Error::Gpu(e.to_string()))?
        );
        return Ok(());
    }
    if list.is_empty() {
        println!("{NO_ADAPTER_HINT}");
        return Ok(());
    }
    for a in list {
        println!("[{}] {}", a.index, a.name);
        println!(
            "    backend {}  type {}  driver {} {}",
            a.backend, a.device_type, a.driver, a.driver_info
        );
        println!(
            "    max storage binding {} MiB, max buffer {} MiB, workgroup ≤ {} invocations ({} x), shared {} KiB, {} storage buffers/stage",
            a.max_storage_buffer_binding_size >> 20,
            a.max_buffer_size >> 20,
            a.max_compute_invocations_per_workgroup,
            a.max_compute_workgroup_size_x,
            a.max_compute_workgroup_storage_size >> 10,
            a.max_storage_buffers_per_shader_stage
        );
        println!(
            "    features: {}",
            if a.features.is_empty() {
                "none of timestamp/subgroup/f16".into()
            } else {
                a.features.join(", ")
            }
        );
    }
    Ok(())
}
