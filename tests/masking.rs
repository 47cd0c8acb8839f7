//! Saliency-guided masking end to end: the loader's plans, fills and high-pass views
//! (deterministic per seed whatever the worker count, the recipe's draw frequencies), the
//! config rules, MoCo and SimCLR with masked queries and hard negatives training on the
//! CIFAR-10 subset (with the reference's batch-negative quirk too), BYOL and SimSiam with
//! masking alone, and a masked step on the adapter equal to the CPU path's.

mod common;
use common::*;
use rand::SeedableRng;
use viewcraft::crop::sampler::RrcParams;
use viewcraft::data::augment::{mean_std, Jitter};
use viewcraft::data::filters::{gaussian_blur, high_pass};
use viewcraft::data::loader::{epoch, CropMode, ViewConfig, ViewMask};
use viewcraft::data::masking::{MaskRecipe, Strategy};
use viewcraft::ops::saliency_mask::{plan_len, CHANNEL, FOCAL, PLAN_HEAD, SPATIAL};
use viewcraft::ssl::{HardNegCfg, Method};
use viewcraft::tensor::Device;
use viewcraft::train::masking::MaskTraining;
use viewcraft::train::{pretrain, Event, PretrainConfig};

/// Query (pos), key, `negs` hard negatives at 32 px with `strategy`.
fn view_config(strategy: Strategy, negs: usize) -> ViewConfig {
    let (mean, std) = mean_std("cifar10").unwrap();
    let mut cfg = ViewConfig::two_views(32, RrcParams::default(), Jitter::default(), mean, std);
    cfg.views[0].mask = ViewMask::Pos;
    let neg = viewcraft::data::loader::ViewSpec {
        mask: ViewMask::Neg,
        ..cfg.views[1]
    };
    cfg.views.extend(std::iter::repeat_n(neg, negs));
    cfg.mask = Some(MaskRecipe::new(strategy, 8));
    cfg
}

#[test]
fn loader_plans_fills_and_high_pass_views() {
    let set = cifar_train(96);
    let cfg = view_config(Strategy::HighPass, 1);
    let a: Vec<_> = epoch(set.clone(), CropMode::Rrc, cfg.clone(), 16, 7, 2, 1, 2, 0).collect();
    let b: Vec<_> = epoch(set.clone(), CropMode::Rrc, cfg.clone(), 16, 7, 2, 3, 2, 0).collect();
    let c: Vec<_> = epoch(set.clone(), CropMode::Rrc, cfg.clone(), 16, 8, 2, 2, 2, 0).collect();
    let (hw, pl) = (3 * 32 * 32, plan_len(8));
    let mut kinds = [0usize; 3];
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.views, y.views, "views independent of the worker count");
        assert_eq!(x.plans, y.plans);
        assert_eq!(x.fills, y.fills);
        assert_eq!(x.plain, y.plain);
        // Saliency sources keep their plain views: the query and the key, not the negative.
        assert_eq!(x.plain[0].len(), 16 * hw);
        assert_eq!(x.plain[1].len(), 16 * hw);
        assert!(x.plain[2].is_empty());
        // Plans and fills for the masked views only.
        assert!(x.plans[1].is_empty() && x.fills[1].is_empty());
        for v in [0, 2] {
            assert_eq!(x.plans[v].len(), 16 * pl);
            assert_eq!(x.fills[v].len(), 16 * hw);
        }
        for i in 0..16 {
            let img = |_view: usize, t: &[f32]| t[i * hw..(i + 1) * hw].to_vec();
            // Every view the model sees is the high-pass of its plain view; the negative starts
            // as the key.
            for v in [0, 1] {
                let want = high_pass(&img(v, &x.plain[v]), (3, 32, 32)).unwrap();
                assert_eq!(img(v, &x.views[v]), want, "view {v} high-passed");
            }
            assert_eq!(img(2, &x.views[2]), img(1, &x.views[1]), "negative = key");
            for v in [0, 2] {
                let row = &x.plans[v][i * pl..(i + 1) * pl];
                let (lo, hi) = if v == 0 { (0.05, 0.25) } else { (0.4, 0.7) };
                assert!(
                    (lo..hi).contains(&(row[1] as f64)),
                    "r {} of view {v}",
                    row[1]
                );
                for ch in 0..3 {
                    let mut p: Vec<usize> = row[PLAN_HEAD + ch * 64..PLAN_HEAD + (ch + 1) * 64]
                        .iter()
                        .map(|&r| r as usize)
                        .collect();
                    p.sort();
                    assert_eq!(p, (0..64).collect::<Vec<_>>(), "a permutation");
                }
                let side = MaskRecipe::focal_side(32, v == 0);
                assert!(row[2] as usize + side <= 32 && row[3] as usize + side <= 32);
                kinds[[SPATIAL, CHANNEL, FOCAL]
                    .iter()
                    .position(|&k| k == row[0])
                    .unwrap()] += 1;
                // Grid fills: the batch's noise patch [3, 4, 4] in every cell.
                if row[0] != FOCAL {
                    let f = img(v, &x.fills[v]);
                    for ch in 0..3 {
                        for y in 0..32 {
                            for xx in 0..32 {
                                assert_eq!(
                                    f[(ch * 32 + y) * 32 + xx],
                                    f[(ch * 32 + y % 4) * 32 + xx % 4],
                                    "a tiled patch"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    assert_ne!(a[0].plans, c[0].plans, "another seed, other plans");
    // p 0.2 focal, else p 0.3 spatial / 0.7 channel-wise: 0.2, 0.24, 0.56 of 192 draws (the
    // bounds are > 4.5 standard deviations wide).
    let n = kinds.iter().sum::<usize>() as f64;
    let share = |k: usize| kinds[k] as f64 / n;
    assert!((0.10..0.31).contains(&share(2)), "focal {kinds:?}");
    assert!((0.13..0.36).contains(&share(0)), "spatial {kinds:?}");
    assert!((0.42..0.70).contains(&share(1)), "channel {kinds:?}");
}

#[test]
fn blur_and_mean_fills() {
    let set = cifar_train(32);
    for strategy in [Strategy::Blur, Strategy::Mean] {
        let cfg = view_config(strategy, 1);
        let b = epoch(set.clone(), CropMode::Rrc, cfg, 16, 3, 1, 2, 2, 0)
            .next()
            .unwrap();
        let hw = 3 * 32 * 32;
        assert!(
            b.plain.iter().all(|p| p.is_empty()),
            "no high-pass: no plain copies"
        );
        for v in [0, 2] {
            for i in 0..16 {
                let x = &b.views[v][i * hw..(i + 1) * hw];
                let f = &b.fills[v][i * hw..(i + 1) * hw];
                let want = match strategy {
                    Strategy::Blur => {
                        gaussian_blur(x, (3, 32, 32), (31, 31), (10.0, 10.0)).unwrap()
                    }
                    _ => (0..hw)
                        .map(|j| {
                            let ch = j / 1024;
                            (x[ch * 1024..(ch + 1) * 1024]
                                .iter()
                                .map(|&v| v as f64)
                                .sum::<f64>()
                                / 1024.0) as f32
                        })
                        .collect(),
                };
                assert_eq!(f, &want[..], "{strategy:?} fill of view {v}");
                let row = &b.plans[v][i * plan_len(8)..];
                assert_eq!(row[0], SPATIAL, "{strategy:?}: spatial grid masks only");
            }
        }
    }
}

fn masked_method(name: &str, hard: HardNegCfg, dev: &Device) -> Box<dyn Method> {
    use viewcraft::ssl::{moco::*, simclr::*};
    let rng = &mut rand::rngs::StdRng::seed_from_u64(5);
    match name {
        "simclr" => Box::new(
            SimClr::new(
                resnet18(8),
                SimClrConfig {
                    hard,
                    ..Default::default()
                },
                rng,
                dev,
            )
            .unwrap(),
        ),
        "moco" => Box::new(
            Moco::new(
                resnet18(8),
                MocoConfig {
                    k: 64,
                    bn_group: 16,
                    momentum: 0.99,
                    hard,
                    ..Default::default()
                },
                rng,
                dev,
            )
            .unwrap(),
        ),
        other => method_named(other, 8, 5, (64, 16, 0.99), dev),
    }
}

fn masked_config(
    epochs: usize,
    lr: f64,
    strategy: Strategy,
    negs: usize,
    per_sample: bool,
) -> PretrainConfig {
    PretrainConfig {
        mask: Some(MaskTraining {
            recipe: MaskRecipe::new(strategy, 8),
            hard_negatives: negs,
            per_sample,
            saliency_backbone: None,
        }),
        ..pretrain_config(epochs, 32, lr, 4)
    }
}

/// Losses and hard-negative counts of every step.
fn train(
    name: &str,
    strategy: Strategy,
    negs: usize,
    per_sample: bool,
) -> Vec<(f32, Option<usize>)> {
    let dev = Device::Cpu;
    let hard = HardNegCfg {
        count: negs,
        alpha: 2.0,
        per_sample,
    };
    let mut m = masked_method(name, hard, &dev);
    let lr = if negs > 0 { 0.3 } else { 0.05 };
    let mut out = Vec::new();
    pretrain(
        m.as_mut(),
        cifar_train(128),
        &masked_config(6, lr, strategy, negs, per_sample),
        &dev,
        |e| {
            if let Event::Step {
                loss,
                hard_negatives,
                ..
            } = e
            {
                out.push((*loss, *hard_negatives));
            }
        },
    )
    .unwrap();
    out
}

fn falls(label: &str, steps: &[(f32, Option<usize>)]) {
    let l: Vec<f32> = steps.iter().map(|s| s.0).collect();
    let (first, last) = (
        l[..4].iter().sum::<f32>() / 4.0,
        l[l.len() - 4..].iter().sum::<f32>() / 4.0,
    );
    assert!(l.iter().all(|v| v.is_finite()), "{label}: {l:?}");
    assert!(
        last < first - 0.05,
        "{label}: loss {first} → {last} ({l:?})"
    );
}

#[test]
fn moco_and_simclr_train_with_masked_queries_and_hard_negatives() {
    for name in ["moco", "simclr"] {
        let steps = train(name, Strategy::HighPass, 1, true);
        falls(&format!("{name} + hp"), &steps);
        assert!(
            steps.iter().all(|s| s.1 == Some(32)),
            "{name}: 32 per-sample negatives per step"
        );
    }
    // The reference's quirk: one negative per step, shared by every query.
    let steps = train("moco", Strategy::HighPass, 1, false);
    falls("moco + hp, batch negative", &steps);
    assert!(steps.iter().all(|s| s.1 == Some(1)));
}

#[test]
fn byol_and_simsiam_train_with_masking_alone() {
    for (name, strategy) in [("byol", Strategy::Blur), ("simsiam", Strategy::Mean)] {
        let steps = train(name, strategy, 0, true);
        assert!(
            steps.iter().all(|s| s.0.is_finite() && s.1 == Some(0)),
            "{name}: {steps:?}"
        );
        falls(&format!("{name} + {strategy:?}"), &steps);
    }
}

#[test]
fn masking_config_rules() {
    use viewcraft::config::Config;
    let err = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(None, &sets).err().map(|e| e.to_string())
    };
    let e = err(&[
        "method.name=byol",
        "mask.strategy=hp",
        "mask.num_hard_negatives=1",
    ])
    .unwrap();
    assert!(e.contains("mask.num_hard_negatives"), "{e}");
    let e = err(&["mask.strategy=sharpen"]).unwrap();
    assert!(e.contains("mask.strategy") && e.contains("hp"), "{e}");
    let e = err(&["mask.grid=17"]).unwrap();
    assert!(e.contains("mask.grid"), "{e}");
    let e = err(&["mask.strategy=hp", "mask.alpha=0"]).unwrap();
    assert!(e.contains("mask.alpha"), "{e}");
    // Defaults: 1 hard negative for SimCLR / MoCo, 0 for BYOL / SimSiam, recorded in the
    // resolved config; the probe high-passes its inputs after an hp run.
    let c = Config::load(None, &["mask.strategy=hp".into()]).unwrap();
    assert_eq!(c.mask.num_hard_negatives, Some(1));
    assert_eq!(c.linear.high_pass, Some(true));
    let c = Config::load(
        None,
        &["method.name=simsiam".into(), "mask.strategy=blur".into()],
    )
    .unwrap();
    assert_eq!(c.mask.num_hard_negatives, Some(0));
    assert_eq!(c.linear.high_pass, Some(false));
    let c = Config::load(None, &[]).unwrap();
    assert_eq!(c.mask.num_hard_negatives, None);
    // [[views]] with masks: the neg count must match, a neg needs a key before it.
    let toml = |views: &str, extra: &str| {
        format!("[method]\nname = \"moco\"\nqueue = 512\n[train]\nbatch_size = 64\n[mask]\nstrategy = \"hp\"\n{extra}\n{views}")
    };
    let v = "[[views]]\nmask = \"pos\"\n[[views]]\n[[views]]\nmask = \"neg\"\n";
    assert!(Config::from_toml(&toml(v, ""), "t")
        .unwrap()
        .validate()
        .is_ok());
    let e = Config::from_toml(&toml(v, "num_hard_negatives = 2"), "t")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("views"), "{e}");
    let v2 = "[[views]]\nmask = \"pos\"\n[[views]]\nmask = \"neg\"\n[[views]]\n";
    let e = Config::from_toml(&toml(v2, ""), "t")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("mask = neg"), "{e}");
    let v3 = "[[views]]\nmask = \"pos\"\n[[views]]\n";
    let e = Config::from_toml(&toml(v3, "strategy = \"none\""), "t");
    assert!(e.is_err() || e.unwrap().validate().is_err());
}

#[test]
fn a_masked_step_on_the_adapter_equals_the_cpu_path() {
    let Some(g) = gpu() else { return };
    let hard = HardNegCfg {
        count: 1,
        alpha: 2.0,
        per_sample: true,
    };
    for name in ["moco", "simclr"] {
        let mut losses = Vec::new();
        for dev in [Device::Cpu, g.clone()] {
            let mut m = masked_method(name, hard, &dev);
            let mut l = Vec::new();
            pretrain(
                m.as_mut(),
                cifar_train(64),
                &masked_config(1, 0.1, Strategy::HighPass, 1, true),
                &dev,
                |e| {
                    if let Event::Step { loss, .. } = e {
                        l.push(*loss);
                    }
                },
            )
            .unwrap();
            losses.push(l);
        }
        // The first step's loss: the same masked views, the same hard negatives.
        assert_close(
            &format!("{name} masked step"),
            &losses[1][..1],
            &losses[0][..1],
            1e-4,
            1e-4,
        );
        assert_close(
            &format!("{name} second step"),
            &losses[1][1..2],
            &losses[0][1..2],
            1e-3,
            1e-3,
        );
    }
}

/// The trainer's masking step on a loader batch: each masked view is the op applied with the
/// saliency of the right source (the query's own plain view; the key's for the negative), the
/// right rule ("pos" / "neg", the focal sides 29 / 19 at 32 px) and the loader's plan and fill.
#[test]
fn the_step_masks_each_view_from_its_source_saliency() {
    use viewcraft::autograd::Tape;
    use viewcraft::ops::saliency_mask::{
        apply_mask_ref, cell_saliency_ref, mask_cells_ref, MaskRule,
    };
    let dev = Device::Cpu;
    let hard = HardNegCfg {
        count: 1,
        alpha: 2.0,
        per_sample: true,
    };
    let mut m = masked_method("moco", hard, &dev);
    let cfg = view_config(Strategy::HighPass, 1);
    let batch = epoch(
        cifar_train(32),
        CropMode::Rrc,
        cfg.clone(),
        8,
        11,
        1,
        1,
        1,
        0,
    )
    .next()
    .unwrap();
    let shape = [8, 3, 32, 32];
    let mut xs: Vec<_> = batch
        .views
        .iter()
        .map(|v| viewcraft::tensor::Tensor::from_vec(v.clone(), &shape, &dev).unwrap())
        .collect();
    let mt = masked_config(1, 0.1, Strategy::HighPass, 1, true)
        .mask
        .unwrap();
    let mut masker = viewcraft::train::masking::Masker::new(&mt, &dev).unwrap();
    masker
        .apply(Some(m.as_mut()), &cfg, &batch, &mut xs, &dev)
        .unwrap();
    assert_eq!(
        xs[1].to_vec().unwrap(),
        batch.views[1],
        "the key is not masked"
    );
    for (v, source, positive, side) in [(0, 0, true, 29), (2, 1, false, 19)] {
        let mut tape = Tape::new();
        let x = tape.input(
            viewcraft::tensor::Tensor::from_vec(batch.plain[source].clone(), &shape, &dev).unwrap(),
        );
        let f = viewcraft::ssl::feature_map(m.as_mut(), &mut tape, x).unwrap();
        let fs = tape.value(f).shape().to_vec();
        let sal = cell_saliency_ref(
            &tape.value(f).to_vec().unwrap(),
            (fs[0], fs[1], fs[2], fs[3]),
            8,
        );
        let rule = MaskRule {
            positive,
            cap: true,
            focal_side: side,
        };
        let mask = mask_cells_ref(&sal, &batch.plans[v], 8, 8, rule);
        let want = apply_mask_ref(
            &batch.views[v],
            &batch.fills[v],
            &mask,
            &batch.plans[v],
            (8, 32, 32),
            8,
            rule,
        );
        let got = xs[v].to_vec().unwrap();
        assert_eq!(got, want, "view {v}");
        assert_ne!(got, batch.views[v], "view {v} was masked");
    }
}

/// Views narrower than the blur fill's 31-tap filter are refused before training, naming the
/// field.
#[test]
fn views_too_small_for_the_strategy_are_refused() {
    let dev = Device::Cpu;
    let mut m = masked_method("byol", HardNegCfg::default(), &dev);
    let mut cfg = masked_config(1, 0.1, Strategy::Blur, 0, true);
    let vc = view_config(Strategy::Blur, 0);
    cfg.views = vc
        .views
        .iter()
        .map(|v| viewcraft::data::loader::ViewSpec { size: 12, ..*v })
        .collect();
    let e = pretrain(m.as_mut(), cifar_train(64), &cfg, &dev, |_| {}).unwrap_err();
    assert!(
        e.to_string().contains("views") && e.to_string().contains("12 px"),
        "{e}"
    );
}

/// With a saliency backbone file, the masker's features are that network's (eval mode),
/// whatever the model being trained.
#[test]
fn an_external_saliency_backbone_gives_the_features() {
    use viewcraft::autograd::Tape;
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("viewcraft-masking-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A checkpoint of another network, exported to bare torchvision names.
    let mut other = masked_method("simclr", HardNegCfg::default(), &dev);
    let ckpt = dir.join("other.safetensors");
    let bufs = viewcraft::optim::momentum_buffers(other.store(), &dev).unwrap();
    viewcraft::train::checkpoint::save(
        &ckpt,
        other.as_ref(),
        &bufs,
        &[],
        &[],
        Default::default(),
        8,
        "",
    )
    .unwrap();
    let file = dir.join("backbone.safetensors");
    viewcraft::train::checkpoint::export_backbone(&ckpt, &file).unwrap();
    let mut mt = masked_config(1, 0.1, Strategy::HighPass, 1, true)
        .mask
        .unwrap();
    mt.saliency_backbone = Some(file.clone());
    let mut masker = viewcraft::train::masking::Masker::new(&mt, &dev).unwrap();
    let (mut r, _) = rng();
    let x =
        viewcraft::tensor::Tensor::from_vec(randn(&mut r, 2 * 3 * 32 * 32), &[2, 3, 32, 32], &dev)
            .unwrap();
    let got = masker.features(None, x.clone()).unwrap().to_vec().unwrap();
    let mut tape = Tape::new();
    let xv = tape.input(x);
    let f = viewcraft::ssl::feature_map(other.as_mut(), &mut tape, xv).unwrap();
    let want = tape.value(f).to_vec().unwrap();
    assert_close("external saliency features", &got, &want, 1e-5, 1e-5);
    // A file that is not a ResNet state dict is an error naming it.
    std::fs::write(dir.join("junk.safetensors"), b"junk").unwrap();
    mt.saliency_backbone = Some(dir.join("junk.safetensors"));
    let e = viewcraft::train::masking::Masker::new(&mt, &dev)
        .err()
        .unwrap();
    assert!(e.to_string().contains("junk.safetensors"), "{e}");
}

/// The reference's quirk (`reference_batch_negative`): every query's hard-negative logit is
/// against the embedding of image m's negative m alone (a batch of one, BN on it), here for
/// SimCLR whose projection is public: the method's loss equals NT-Xent with that single
/// shared negative built by hand, and differs from the per-sample negatives'.
#[test]
fn the_batch_negative_quirk_embeds_the_first_image_alone() {
    use viewcraft::autograd::Tape;
    use viewcraft::ssl::simclr::{SimClr, SimClrConfig};
    let dev = Device::Cpu;
    let (mut r, seed) = rng();
    let n = 6;
    let views: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut r, n * 3 * 32 * 32)).collect();
    let shape = [n, 3, 32, 32];
    let build = |per_sample: bool| {
        let hard = HardNegCfg {
            count: 1,
            alpha: 2.0,
            per_sample,
        };
        let cfg = SimClrConfig {
            hard,
            ..Default::default()
        };
        SimClr::new(
            resnet18(8),
            cfg,
            &mut rand::rngs::StdRng::seed_from_u64(9),
            &dev,
        )
        .unwrap()
    };
    let loss_of = |m: &mut SimClr| {
        let mut tape = Tape::new();
        let b = m.store().bind(&mut tape, true);
        let vs: Vec<_> = views
            .iter()
            .map(|v| tape.input(viewcraft::tensor::Tensor::from_slice(v, &shape, &dev).unwrap()))
            .collect();
        let l = m.loss(&mut tape, &b, &vs).unwrap();
        tape.value(l).item().unwrap()
    };
    let quirk = loss_of(&mut build(false));
    let per_sample = loss_of(&mut build(true));
    // By hand: the two views as one batch, the first image's negative as a batch of one.
    let mut m = build(false);
    let mut tape = Tape::new();
    let b = m.store().bind(&mut tape, true);
    let x = tape.input(
        viewcraft::tensor::Tensor::from_slice(
            &[&views[0][..], &views[1][..]].concat(),
            &[2 * n, 3, 32, 32],
            &dev,
        )
        .unwrap(),
    );
    let z = m.project(&mut tape, &b, x, true).unwrap();
    let parts = tape.split(z, &[n, n]).unwrap();
    let first = tape.input(
        viewcraft::tensor::Tensor::from_slice(&views[2][..3 * 32 * 32], &[1, 3, 32, 32], &dev)
            .unwrap(),
    );
    let t = m.project(&mut tape, &b, first, true).unwrap();
    let cfg = SimClrConfig::default();
    let l = viewcraft::ssl::losses::nt_xent_hard(
        &mut tape,
        parts[0],
        parts[1],
        &[t],
        2.0,
        cfg.temperature,
        cfg.loss_scale,
    )
    .unwrap();
    let want = tape.value(l).item().unwrap();
    assert_close(
        &format!("quirk loss seed {seed}"),
        &[quirk],
        &[want],
        1e-5,
        1e-5,
    );
    assert!(
        (quirk - per_sample).abs() > 1e-4,
        "quirk {quirk} = per-sample {per_sample}"
    );
}

/// A hard negative is a copy of its key: another size is refused before training.
#[test]
fn a_hard_negative_of_another_size_than_its_key_is_refused() {
    let dev = Device::Cpu;
    let hard = HardNegCfg {
        count: 1,
        alpha: 2.0,
        per_sample: true,
    };
    let mut m = masked_method("moco", hard, &dev);
    let mut cfg = masked_config(1, 0.1, Strategy::HighPass, 1, true);
    let mut views = view_config(Strategy::HighPass, 1).views;
    views[2].size = 24;
    cfg.views = views;
    let e = pretrain(m.as_mut(), cifar_train(64), &cfg, &dev, |_| {}).unwrap_err();
    assert!(e.to_string().contains("copies view 1"), "{e}");
}
