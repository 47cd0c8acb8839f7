//! `viewcraft pretrain CONFIG`: a whole run from a TOML config into a run directory —
//! pre-training with the kNN monitor, checkpoints, metrics and plots, then the linear probe
//! when `[linear] epochs > 0`. An interrupted run directory continues automatically.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rand::SeedableRng;
use serde::Serialize;

use crate::config::Config;
use crate::data::{normalization, Split};
use crate::error::{Error, Result};
use crate::eval::linear::{linear_probe, LinearResult};
use crate::tensor::Device;
use crate::train::masking::MaskTraining;
use crate::train::run_dir::{RunDir, RunState};
use crate::train::{pretrain, Event, KnnMonitor, PretrainConfig};

#[derive(Clone, Debug, clap::Args)]
pub struct PretrainArgs {
    /// The run's TOML config (see configs/).
    pub config: PathBuf,
    /// Override a config field, e.g. `--set train.epochs=10` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run directory (default: runs/<config name>, or the next free runs/<name>-N).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the interrupted run in the run directory (also automatic when one is found).
    #[arg(long)]
    pub resume: bool,
}

/// What a finished run reports.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub run_dir: String,
    pub method: String,
    pub crop: String,
    pub device: String,
    pub epochs: usize,
    pub train_images: usize,
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    pub knn_top1: Option<f64>,
    pub linear: Option<LinearResult>,
    pub seconds: f64,
}

/// Set once per process: Ctrl-C sets the flag; the trainer stops after the current step
/// with a checkpoint. A second Ctrl-C exits at once.
fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let f = Arc::new(AtomicBool::new(false));
        let g = f.clone();
        let _ = ctrlc::set_handler(move || {
            if g.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nviewcraft: stopping after this step and saving a checkpoint (Ctrl-C again to quit now)");
        });
        f
    })
    .clone()
}

/// The run directory for `args`, and the checkpoint to resume from.
fn resolve_run_dir(
    cfg: &Config,
    config_path: Option<&Path>,
    out: Option<&Path>,
    resume: bool,
) -> Result<(RunDir, Option<PathBuf>)> {
    let name = config_path
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "quickstart".into());
    let explicit = out.is_some();
    let base = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new("runs").join(name));
    let dir = RunDir::new(if explicit || resume {
        base.clone()
    } else {
        match RunDir::new(&base).state() {
            RunState::Finished => RunDir::next_free(&base),
            _ => base.clone(),
        }
    });
    match dir.state() {
        RunState::Finished if explicit || resume => Err(Error::file(
            &dir.root,
            "holds a finished run (summary.json); choose another --out or delete it",
        )),
        RunState::Interrupted(ckpt) => {
            // The library checks again when it resumes; checking here keeps the run
            // directory's config.toml from being overwritten first.
            crate::train::checkpoint::check_resumable(&ckpt, &cfg.to_toml(), cfg.train.batch_size)
                .map_err(|e| {
                    Error::file(
                        &dir.root,
                        format!("holds an interrupted run that cannot continue with this configuration (see its config.toml; choose another --out to start anew): {e}"),
                    )
                })?;
            Ok((dir, Some(ckpt)))
        }
        _ if resume => Err(Error::file(
            dir.last_checkpoint(),
            "--resume: no checkpoint to continue from",
        )),
        _ => Ok((dir, None)),
    }
}

/// Pre-train (and probe) per `cfg` into a run directory on `device`.
pub fn run(
    cfg: &Config,
    config_path: Option<&Path>,
    out: Option<&Path>,
    resume: bool,
    device: &Device,
) -> Result<RunSummary> {
    let t0 = Instant::now();
    let root = cfg.data.root_path();
    let (ds, size) = (cfg.data.dataset.as_str(), cfg.data.image_size);
    // A test hook: this rank's data cannot be read (how a failing rank stops the others).
    if std::env::var("VIEWCRAFT_FAIL_RANK")
        .ok()
        .and_then(|r| r.parse().ok())
        == Some(crate::dist::place().rank)
    {
        return Err(Error::file(
            &root,
            "cannot be read on this rank (VIEWCRAFT_FAIL_RANK is set: a test hook)",
        ));
    }
    let images = Arc::new(crate::data::open_pretrain(
        ds,
        &root,
        cfg.data.subset,
        size,
    )?);
    // Labelled images for kNN and the probe (STL-10 pre-trains on unlabeled ones too).
    let train = if ds == "stl10" {
        Arc::new(crate::data::open(
            ds,
            &root,
            Split::Train,
            cfg.data.subset,
            size,
        )?)
    } else {
        images.clone()
    };
    let test = Arc::new(crate::data::open(ds, &root, Split::Test, 0, size)?);
    if cfg.train.batch_size > images.len() {
        return Err(Error::Config {
            field: "train.batch_size".into(),
            msg: format!(
                "{} is larger than the {} training images",
                cfg.train.batch_size,
                images.len()
            ),
        });
    }
    crate::train::local_batch(cfg.train.batch_size)?;
    // Before the run directory exists: a bad proposals file leaves nothing behind.
    let crop_kind = cfg.crop_kind(images.len(), images.height, images.width)?;
    // Likewise a bad saliency backbone.
    let mask = MaskTraining::from_config(cfg);
    // The views every step makes (the crop kind's, masking's, or the config's).
    let specs = crate::train::views_or_default(
        cfg.view_specs(images.height),
        &crop_kind,
        images.height,
        cfg.rrc(),
        mask.as_ref(),
    );
    if let Some(m) = &mask {
        m.check_view_sizes(&specs, cfg.views.is_empty())?;
    }
    if let Some(p) = mask.as_ref().and_then(|m| m.saliency_backbone.as_ref()) {
        crate::train::checkpoint::load_backbone(p, &Device::Cpu).map_err(|e| Error::Config {
            field: "mask.saliency_backbone".into(),
            msg: e.to_string(),
        })?;
    }
    let (mean, std) = normalization(&cfg.data.dataset);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.train.seed);
    let mut method = crate::ssl::build(cfg, &mut rng, device)?;
    // A step that cannot fit the adapter fails here, before the run directory exists.
    if let Device::Gpu(g) = device {
        crate::train::check_device_limits(method.as_ref(), &specs, cfg.train.batch_size, g)?;
    }
    // Rank 0 owns the run directory; every rank resumes from the checkpoint rank 0 picked
    // (the run directory is on a filesystem every rank reads).
    let place = crate::dist::place();
    let (dir, resume_from) = if place.is_root() {
        let (dir, resume_from) = resolve_run_dir(cfg, config_path, out, resume)?;
        dir.create(cfg)?;
        (Some(dir), resume_from)
    } else {
        (None, None)
    };
    let resume_from = match crate::dist::broadcast_text(
        &resume_from
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    ) {
        p if p.is_empty() => None,
        p => Some(PathBuf::from(p)),
    };
    if let (Some(ckpt), Some(dir)) = (&resume_from, &dir) {
        use crate::train::checkpoint::{metadata, position};
        let pos = position(&metadata(ckpt)?, ckpt)?;
        dir.truncate_metrics(pos)?;
        println!(
            "resuming {} from {} (epoch {} done, step {})",
            dir.root.display(),
            ckpt.display(),
            pos.epoch,
            pos.step
        );
    }
    let crop = cfg.crop.kind.as_str();
    let pcfg = PretrainConfig {
        epochs: cfg.train.epochs,
        batch_size: cfg.train.batch_size,
        lr: cfg.train.lr,
        momentum: cfg.train.momentum,
        weight_decay: cfg.train.weight_decay,
        decay_rate: cfg.train.decay_rate,
        lr_warmup_epochs: cfg.train.lr_warmup_epochs,
        lars: cfg.train.optimizer == "lars",
        exclude_bn_bias_wd: cfg.train.exclude_bn_bias_wd,
        seed: cfg.train.seed,
        workers: cfg.data.workers(),
        log_interval: cfg.train.log_interval,
        crop: crop_kind,
        views: cfg.view_specs(images.height),
        mask,
        alpha: cfg.crop.alpha,
        box_thresh: cfg.crop.box_thresh,
        // SimCCrop: the fixed centre box from the first epoch, never updated.
        warmup_epochs: if crop == "simccrop" {
            0
        } else {
            cfg.crop.warmup_epochs
        },
        loc_interval: if crop == "simccrop" {
            0
        } else {
            cfg.crop.loc_interval
        },
        mean,
        std,
        blur: cfg.data.blur,
        init_box: cfg.init_box(),
        checkpoint_dir: dir.as_ref().map(RunDir::checkpoints),
        save_interval: cfg.train.save_interval,
        resume: resume_from,
        rrc: cfg.rrc(),
        config_text: cfg.to_toml(),
        knn: (cfg.knn.interval > 0).then(|| KnnMonitor {
            interval: cfg.knn.interval,
            k: cfg.knn.k,
            temperature: cfg.knn.temperature,
            train: train.clone(),
            test: test.clone(),
            high_pass: cfg.linear.high_pass == Some(true),
        }),
        stop: Some(stop_flag()),
        stop_at_step: std::env::var("VIEWCRAFT_STOP_AT_STEP")
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    let Some(dir) = dir else {
        // Another rank: the same steps on its share of every batch, nothing written.
        pretrain(method.as_mut(), images.clone(), &pcfg, device, |_| {})?;
        return Ok(RunSummary {
            run_dir: String::new(),
            method: cfg.method.name().into(),
            crop: crop.into(),
            device: device.name(),
            epochs: cfg.train.epochs,
            train_images: images.len(),
            first_loss: None,
            last_loss: None,
            knn_top1: None,
            linear: None,
            seconds: t0.elapsed().as_secs_f64(),
        });
    };
    if place.size > 1 {
        println!(
            "data parallel: {} ranks, {} images of every batch of {} each",
            place.size,
            cfg.train.batch_size / place.size,
            cfg.train.batch_size
        );
    }
    println!(
        "viewcraft pretrain: {} + {}, {} (width {}), {} {} images, {} epochs × {} steps, on {} → {}",
        cfg.method.name(),
        crop,
        cfg.model.arch,
        cfg.model.width,
        images.len(),
        cfg.data.dataset,
        cfg.train.epochs,
        images.len() / cfg.train.batch_size,
        device.name(),
        dir.root.display()
    );
    if let Some(m) = &pcfg.mask {
        println!(
            "saliency masking: {}, {}×{} cells, {} hard negative{} per {} (alpha {}), saliency from {}",
            m.recipe.strategy.name(),
            m.recipe.grid,
            m.recipe.grid,
            m.hard_negatives,
            if m.hard_negatives == 1 { "" } else { "s" },
            if m.per_sample { "image" } else { "batch (the reference's quirk)" },
            cfg.mask.alpha,
            m.saliency_backbone
                .as_ref()
                .map_or("the model's layer-4 map".to_string(), |p| p.display().to_string())
        );
    }
    let steps_per_epoch = (images.len() / cfg.train.batch_size) as u64;
    let bar = indicatif::ProgressBar::new(steps_per_epoch * cfg.train.epochs as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut metrics = dir.metrics_writer()?;
    let mut first_loss = None;
    let mut last_loss = None;
    let mut knn_top1 = None;
    let mut write_err: Option<Error> = None;
    let result = pretrain(method.as_mut(), images.clone(), &pcfg, device, |e| {
        let r = match e {
            Event::Step {
                epoch,
                step,
                loss,
                lr,
                ..
            } => {
                first_loss.get_or_insert(*loss);
                last_loss = Some(*loss);
                bar.set_position(*step as u64);
                bar.set_message(format!("epoch {epoch} loss {loss:.4} lr {lr:.4}"));
                metrics.write("step", e)
            }
            Event::Epoch {
                epoch,
                images_per_s,
                crop,
            } => {
                bar.suspend(|| {
                    println!(
                        "epoch {epoch:3} ({crop})  loss {}  {images_per_s:.1} img/s",
                        last_loss.map_or("-".into(), |l| format!("{l:.4}"))
                    )
                });
                let r = metrics.write("epoch", e);
                let _ = dir.plot();
                r
            }
            Event::Boxes(s) => {
                bar.suspend(|| match s.proposals_mean {
                    Some(p) => println!(
                        "  proposals updated after epoch {}: {p:.2} per image, mean area {:.3}, near-full {:.1}%, maps without any {}",
                        s.epoch,
                        s.box_mean_area,
                        100.0 * s.box_near_full,
                        s.box_fallbacks
                    ),
                    None => println!(
                        "  boxes updated after epoch {}: mean area {:.3}, near-full {:.1}%, constant maps {}",
                        s.epoch,
                        s.box_mean_area,
                        100.0 * s.box_near_full,
                        s.box_fallbacks
                    ),
                });
                metrics.write("boxes", s)
            }
            Event::Knn {
                epoch,
                knn_top1: a,
                k,
            } => {
                knn_top1 = Some(*a);
                bar.suspend(|| {
                    println!("  kNN top-1 after epoch {epoch}: {:.2}% (k={k})", 100.0 * a)
                });
                let r = metrics.write("knn", e);
                let _ = dir.plot();
                r
            }
            Event::Checkpoint { .. } => metrics.write("checkpoint", e),
            Event::Ranks { .. } => metrics.write("ranks", e),
        };
        if let Err(err) = r {
            write_err.get_or_insert(err);
        }
    });
    bar.finish_and_clear();
    result?;
    if let Some(e) = write_err {
        return Err(e);
    }
    let linear = if cfg.linear.epochs > 0 {
        println!(
            "linear probe: {} epochs, lr {}, milestones {:?}, {}, feature_norm {}",
            cfg.linear.epochs,
            cfg.linear.lr,
            cfg.linear.milestones,
            if cfg.linear.augment {
                "RandomResizedCrop + flip"
            } else {
                "fixed features"
            },
            cfg.linear.feature_norm
        );
        let net = method.backbone().clone();
        let r = linear_probe(
            &net,
            method.store_mut(),
            &train,
            &test,
            mean,
            std,
            &cfg.linear,
            device,
            |e| {
                let _ = metrics.write("linear_epoch", e);
            },
        )?;
        metrics.write("linear", &r.summary())?;
        Some(r)
    } else {
        None
    };
    dir.plot()?;
    let summary = RunSummary {
        run_dir: dir.root.display().to_string(),
        method: cfg.method.name().into(),
        crop: crop.into(),
        device: device.name(),
        epochs: cfg.train.epochs,
        train_images: images.len(),
        first_loss,
        last_loss,
        knn_top1,
        linear,
        seconds: t0.elapsed().as_secs_f64(),
    };
    metrics.write(
        "done",
        &serde_json::json!({ "epoch": cfg.train.epochs, "seconds": summary.seconds }),
    )?;
    dir.finish(&serde_json::to_value(&summary).unwrap_or_default())?;
    Ok(summary)
}

/// Print the results table of a run.
pub fn print_table(s: &RunSummary) {
    let pct = |x: Option<f64>| x.map_or("-".into(), |a| format!("{:.1}%", 100.0 * a));
    println!();
    println!("| method | crop | epochs | train images | loss first → last | kNN top-1 | linear top-1 best / last | probe train loss / top-1 | time |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} → {} | {} | {} | {} | {:.0} s |",
        s.method,
        s.crop,
        s.epochs,
        s.train_images,
        s.first_loss.map_or("-".into(), |l| format!("{l:.3}")),
        s.last_loss.map_or("-".into(), |l| format!("{l:.3}")),
        pct(s.knn_top1),
        s.linear.as_ref().map_or("-".into(), |l| format!(
            "{:.1}% (epoch {}) / {:.1}%",
            100.0 * l.best_top1,
            l.best_epoch,
            100.0 * l.last_top1
        )),
        s.linear.as_ref().map_or("-".into(), |l| format!(
            "{:.3} / {:.1}%{}",
            l.train_loss,
            100.0 * l.train_top1,
            if l.diverging { " (diverging)" } else { "" }
        )),
        s.seconds
    );
    println!("run directory: {}", s.run_dir);
}
