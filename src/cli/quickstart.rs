//! The main job: SimCLR + ContrastiveCrop pre-training on the shipped CIFAR-10 subset, then
//! the kNN monitor on the test split, and a small results table. Sized to finish in minutes
//! on a 2-core CPU.

use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;

use crate::data::augment::mean_std;
use crate::data::cifar::{self, Split, Variant};
use crate::error::Result;
use crate::eval::knn::{features, knn_accuracy};
use crate::nn::resnet::{Arch, ResNetConfig, Stem};
use crate::ssl::simclr::{SimClr, SimClrConfig};
use crate::tensor::Device;
use crate::train::{pretrain, Event, PretrainConfig};

#[derive(Clone, Debug, clap::Args)]
pub struct QuickstartArgs {
    /// Pre-training epochs (the first fifth is warm-up with RandomResizedCrop).
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Use the first N training images (0 = all 4068 shipped).
    #[arg(long, default_value_t = 1024)]
    pub subset: usize,
    /// ResNet-18 base width (64 = standard; 16 keeps CPU runs short).
    #[arg(long, default_value_t = 16)]
    pub width: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 0.3)]
    pub lr: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl Default for QuickstartArgs {
    fn default() -> Self {
        Self {
            epochs: 5,
            subset: 1024,
            width: 16,
            batch: 128,
            lr: 0.3,
            seed: 42,
        }
    }
}

pub fn run(args: &QuickstartArgs, device: &Device) -> Result<()> {
    let t0 = Instant::now();
    let root = cifar::embedded_root();
    let train = Arc::new(cifar::load(&root, Variant::Cifar10, Split::Train)?.truncate(args.subset));
    let test = cifar::load(&root, Variant::Cifar10, Split::Test)?;
    let (mean, std) = mean_std("cifar10").expect("known dataset");
    println!(
        "viewcraft quickstart: SimCLR + ContrastiveCrop, ResNet-18 (width {}), {} CIFAR-10 images, {} epochs, on {}",
        args.width,
        train.len(),
        args.epochs,
        device.name()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let model = ResNetConfig {
        arch: Arch::Resnet18,
        stem: Stem::Cifar,
        width: args.width,
        zero_init_residual: false,
        num_classes: None,
    };
    let mut method = SimClr::new(model, SimClrConfig::default(), &mut rng, device)?;
    let warmup = (args.epochs / 5).max(1).min(args.epochs);
    let cfg = PretrainConfig {
        epochs: args.epochs,
        batch_size: args.batch,
        lr: args.lr,
        momentum: 0.9,
        weight_decay: 1e-4,
        decay_rate: 0.1,
        seed: args.seed,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        log_interval: 4,
        ccrop: true,
        alpha: 0.1,
        box_thresh: 0.1,
        warmup_epochs: warmup,
        loc_interval: warmup,
        mean,
        std,
        init_box: crate::crop::sampler::WHOLE_IMAGE,
        checkpoint_dir: None,
        save_interval: 1,
        resume: None,
    };
    let mut first = None;
    let mut last = f32::NAN;
    pretrain(&mut method, train.clone(), &cfg, device, |e| match e {
        Event::Step {
            epoch,
            step,
            loss,
            lr,
        } => {
            first.get_or_insert(*loss);
            last = *loss;
            println!("  epoch {epoch} step {step:4}  loss {loss:.4}  lr {lr:.4}");
        }
        Event::Epoch {
            epoch,
            images_per_s,
            crop,
        } => println!("epoch {epoch} done ({crop}), {images_per_s:.1} img/s"),
        Event::Checkpoint { .. } => {}
        Event::Boxes(s) => println!(
            "boxes updated after epoch {}: mean area {:.3}, near-full {:.1}%, constant maps {}",
            s.epoch,
            s.box_mean_area,
            100.0 * s.box_near_full,
            s.box_fallbacks
        ),
    })?;
    let (ftr, d) = features(&mut method, &train, mean, std, 256, device)?;
    let (fte, _) = features(&mut method, &test, mean, std, 256, device)?;
    let acc = knn_accuracy(ftr, &train.labels, fte, &test.labels, d, 10, 200, 0.1);
    println!();
    println!("| method | crop | epochs | train images | loss first → last | kNN top-1 (test, k=200) | time |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| SimCLR | ContrastiveCrop | {} | {} | {:.3} → {:.3} | {:.1}% | {:.0} s |",
        args.epochs,
        train.len(),
        first.unwrap_or(f32::NAN),
        last,
        100.0 * acc,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
