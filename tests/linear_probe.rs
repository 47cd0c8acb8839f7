//! The linear probe converges on fixed features whatever their scale: on a synthetic,
//! linearly separable feature set with norms ~30 the standardised probe separates it with a
//! loss that falls every epoch (and the raw-feature probe at the same lr does not); on the
//! features of a briefly pre-trained backbone its test top-1 matches an L2-regularised
//! logistic regression solved to convergence (Newton's method in f64, here); the divergence
//! detector and the `linear.feature_norm` validation.

mod common;
use common::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use viewcraft::config::{Config, LinearCfg};
use viewcraft::eval::linear::{
    divergence, train_probe_on_features, LinearResult, ProbeFeatures, Standardizer,
};
use viewcraft::tensor::Device;

/// The quickstart's `[linear]` section: the settings the main job probes with.
fn quickstart_probe() -> LinearCfg {
    Config::load(None, &[]).unwrap().linear
}

fn probe(f: &ProbeFeatures, cfg: &LinearCfg) -> LinearResult {
    train_probe_on_features(f, None, cfg, &Device::Cpu, |_| {}).unwrap()
}

fn losses(r: &LinearResult) -> Vec<f64> {
    r.history.iter().map(|e| e.loss).collect()
}

/// `n` points of `classes` Gaussian classes in `dim` dimensions, like a briefly trained
/// backbone's pooled features: a large offset shared by every class (norm 30: post-ReLU
/// features are far from zero-mean), class means 2 away from it on random directions, and
/// noise of std `noise` per dimension. Separable with a margin that is small next to the
/// scale. The same `rng` state gives the same offset and means. Returns (features, labels).
fn separable(seed: u64, n: usize, dim: usize, classes: usize, noise: f32) -> (Vec<f32>, Vec<u32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let unit = |rng: &mut StdRng, len: f32| {
        let d = randn(rng, dim);
        let norm = d.iter().map(|v| v * v).sum::<f32>().sqrt();
        d.into_iter().map(|v| len * v / norm).collect::<Vec<f32>>()
    };
    let offset = unit(&mut rng, 30.0);
    let means: Vec<Vec<f32>> = (0..classes)
        .map(|_| {
            unit(&mut rng, 2.0)
                .iter()
                .zip(&offset)
                .map(|(m, o)| m + o)
                .collect()
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed ^ n as u64);
    let mut x = Vec::with_capacity(n * dim);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        x.extend(
            means[c]
                .iter()
                .zip(randn(&mut rng, dim))
                .map(|(m, e)| m + noise * e),
        );
        y.push(c as u32);
    }
    (x, y)
}

/// Minimise mean CE + (wd/2)·(‖W‖² + ‖b‖²) (weight decay on every parameter, as the probe's
/// SGD does) over `x` [N, D] f64 with Newton's method and a backtracking line search from 0.
/// Returns (W [C, D+1] with the bias last, final gradient 2-norm, iterations).
fn newton_logreg(
    x: &[f64],
    y: &[u32],
    dim: usize,
    classes: usize,
    wd: f64,
) -> (Vec<f64>, f64, usize) {
    let n = y.len();
    let d1 = dim + 1;
    let p = classes * d1;
    let xt: Vec<f64> = (0..n)
        .flat_map(|i| x[i * dim..(i + 1) * dim].iter().copied().chain([1.0]))
        .collect();
    let probs = |w: &[f64]| -> (f64, Vec<f64>) {
        let mut pr = vec![0f64; n * classes];
        let mut loss = 0.0;
        for i in 0..n {
            let xi = &xt[i * d1..(i + 1) * d1];
            let z: Vec<f64> = (0..classes)
                .map(|c| dot(&w[c * d1..(c + 1) * d1], xi))
                .collect();
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
            for c in 0..classes {
                pr[i * classes + c] = (z[c] - m).exp() / s;
            }
            loss += m + s.ln() - z[y[i] as usize];
        }
        (loss / n as f64 + 0.5 * wd * dot(w, w), pr)
    };
    let grad = |w: &[f64], pr: &[f64]| -> Vec<f64> {
        let mut g: Vec<f64> = w.iter().map(|v| wd * v).collect();
        for i in 0..n {
            let xi = &xt[i * d1..(i + 1) * d1];
            for c in 0..classes {
                let r = (pr[i * classes + c] - (y[i] as usize == c) as u8 as f64) / n as f64;
                for (gj, xj) in g[c * d1..(c + 1) * d1].iter_mut().zip(xi) {
                    *gj += r * xj;
                }
            }
        }
        g
    };
    let mut w = vec![0f64; p];
    let (mut f, mut pr) = probs(&w);
    for it in 0..100 {
        let g = grad(&w, &pr);
        let gn = dot(&g, &g).sqrt();
        if gn < 1e-10 {
            return (w, gn, it);
        }
        // H[(c,j),(k,l)] = (1/N) Σ_i p_ic (δ_ck − p_ik) x_ij x_il + wd δ.
        let mut h = vec![0f64; p * p];
        for i in 0..n {
            let xi = &xt[i * d1..(i + 1) * d1];
            let pi = &pr[i * classes..(i + 1) * classes];
            for c in 0..classes {
                for k in c..classes {
                    let a = pi[c] * ((c == k) as u8 as f64 - pi[k]) / n as f64;
                    if a == 0.0 {
                        continue;
                    }
                    for j in 0..d1 {
                        let aj = a * xi[j];
                        let row =
                            &mut h[(c * d1 + j) * p + k * d1..(c * d1 + j) * p + (k + 1) * d1];
                        for (hl, xl) in row.iter_mut().zip(xi) {
                            *hl += aj * xl;
                        }
                    }
                }
            }
        }
        for c in 0..classes {
            for k in c + 1..classes {
                for j in 0..d1 {
                    for l in 0..d1 {
                        h[(k * d1 + l) * p + c * d1 + j] = h[(c * d1 + j) * p + k * d1 + l];
                    }
                }
            }
        }
        for q in 0..p {
            h[q * p + q] += wd;
        }
        let step = cholesky_solve(&mut h, &g, p);
        let slope = dot(&g, &step);
        let mut t = 1.0;
        loop {
            let trial: Vec<f64> = w.iter().zip(&step).map(|(a, s)| a - t * s).collect();
            let (ft, prt) = probs(&trial);
            if ft <= f - 1e-4 * t * slope || t < 1e-12 {
                w = trial;
                f = ft;
                pr = prt;
                break;
            }
            t *= 0.5;
        }
    }
    let g = grad(&w, &pr);
    (w, dot(&g, &g).sqrt(), 100)
}

/// Solve A x = b for symmetric positive definite `a` [p, p] (overwritten by its Cholesky
/// factor).
fn cholesky_solve(a: &mut [f64], b: &[f64], p: usize) -> Vec<f64> {
    for j in 0..p {
        let mut s = a[j * p + j];
        for k in 0..j {
            s -= a[j * p + k] * a[j * p + k];
        }
        assert!(s > 0.0, "Hessian not positive definite at {j}: {s}");
        let d = s.sqrt();
        a[j * p + j] = d;
        for i in j + 1..p {
            let mut s = a[i * p + j];
            for k in 0..j {
                s -= a[i * p + k] * a[j * p + k];
            }
            a[i * p + j] = s / d;
        }
    }
    let mut z = b.to_vec();
    for i in 0..p {
        for k in 0..i {
            z[i] -= a[i * p + k] * z[k];
        }
        z[i] /= a[i * p + i];
    }
    for i in (0..p).rev() {
        for k in i + 1..p {
            z[i] -= a[k * p + i] * z[k];
        }
        z[i] /= a[i * p + i];
    }
    z
}

/// Mean cross-entropy of the linear classifier `w` [C, D+1] (bias last) on `x` [M, D].
fn logreg_ce(w: &[f64], x: &[f64], y: &[u32], dim: usize, classes: usize) -> f64 {
    let d1 = dim + 1;
    let mut loss = 0.0;
    for (i, &l) in y.iter().enumerate() {
        let xi = &x[i * dim..(i + 1) * dim];
        let z: Vec<f64> = (0..classes)
            .map(|c| dot(&w[c * d1..c * d1 + dim], xi) + w[c * d1 + dim])
            .collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        loss += m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - z[l as usize];
    }
    loss / y.len() as f64
}

/// Top-1 of the linear classifier `w` [C, D+1] (bias last) on `x` [M, D].
fn logreg_top1(w: &[f64], x: &[f64], y: &[u32], dim: usize, classes: usize) -> f64 {
    let d1 = dim + 1;
    let correct = y
        .iter()
        .enumerate()
        .filter(|&(i, &l)| {
            let xi = &x[i * dim..(i + 1) * dim];
            let score = |c: usize| dot(&w[c * d1..c * d1 + dim], xi) + w[c * d1 + dim];
            (0..classes)
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap()
                == l as usize
        })
        .count();
    correct as f64 / y.len() as f64
}

/// The quickstart probe's lr, batch and momentum for `epochs` epochs on fixed features,
/// without LR decay and without weight decay: on separable data the cross-entropy at the
/// regularised optimum is above what one epoch reaches, so with decay the loss rises after
/// epoch 2 while W shrinks towards it (the objective still falls); without, the optimum is at
/// zero loss and "the loss falls every epoch" is a statement about convergence.
fn short_probe(feature_norm: &str, epochs: usize) -> LinearCfg {
    LinearCfg {
        epochs,
        milestones: vec![],
        weight_decay: 0.0,
        augment: false,
        feature_norm: feature_norm.into(),
        ..quickstart_probe()
    }
}

#[test]
fn standardised_probe_separates_large_scale_features_with_falling_loss() {
    let (_, seed) = rng();
    let (dim, classes) = (64, 8);
    let (xtr, ytr) = separable(seed, 1024, dim, classes, 0.3);
    let (xte, yte) = separable(seed, 512, dim, classes, 0.3);
    let norm = xtr
        .chunks(dim)
        .map(|r| dot(&to_f64(r), &to_f64(r)).sqrt())
        .sum::<f64>()
        / 1024.0;
    assert!(
        (25.0..35.0).contains(&norm),
        "seed {seed}: mean feature norm {norm}"
    );
    let f = ProbeFeatures {
        train: &xtr,
        train_labels: &ytr,
        test: &xte,
        test_labels: &yte,
        dim,
        classes,
    };
    let epochs = 20;
    let std = probe(&f, &short_probe("standardize", epochs));
    let raw = probe(&f, &short_probe("none", epochs));
    let (ls, lr) = (losses(&std), losses(&raw));
    println!("seed {seed}: feature norm {norm:.1}\n  standardize: loss {ls:.4?} train {:.4}\n  none: loss {lr:.3?} train {:.4}", std.train_top1, raw.train_top1);
    assert!(
        std.train_top1 >= 0.99,
        "seed {seed}: standardised probe train top-1 {}",
        std.train_top1
    );
    assert!(
        ls.windows(2).all(|w| w[1] < w[0]),
        "seed {seed}: standardised probe loss not falling every epoch: {ls:?}"
    );
    assert!(!std.diverging, "seed {seed}: {ls:?}");
    // What makes the above meaningful: on the raw features the same SGD blows up first (the
    // curvature along the shared offset is ~|x|² = 900 times larger), with epoch losses far
    // above the ln C of the classifier it starts from, before the margin takes over.
    let chance = (classes as f64).ln();
    assert!(
        !lr.windows(2).all(|w| w[1] < w[0]) && lr.iter().any(|&l| l > 3.0 * chance),
        "seed {seed}: the raw-feature probe converged as well ({lr:?}); the test shows nothing"
    );
}

/// Pre-training images of the checkpoint tests (also the probe's training split).
const PRETRAIN_IMAGES: usize = 512;

/// A short SimCLR pre-training of a narrow ResNet-18 (2 epochs, 16 steps), once per test
/// binary: its checkpoint and the eval-mode features of its training images and of the test
/// split, of the kind the quickstart probes (large, far from zero-mean, dominated by one
/// shared direction). Returns (checkpoint, train features, test features, D).
fn checkpoint() -> &'static (std::path::PathBuf, Vec<f32>, Vec<f32>, usize) {
    use std::sync::OnceLock;
    use viewcraft::ssl::Method;
    static CK: OnceLock<(std::path::PathBuf, Vec<f32>, Vec<f32>, usize)> = OnceLock::new();
    CK.get_or_init(|| {
        let dev = Device::Cpu;
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("linear_probe");
        let _ = std::fs::remove_dir_all(&dir);
        let train = cifar_train(PRETRAIN_IMAGES);
        let mut m = simclr(8, 0, &dev);
        let cfg = viewcraft::train::PretrainConfig {
            checkpoint_dir: Some(dir.clone()),
            save_interval: 2,
            ..pretrain_config(2, 64, 0.3, 1)
        };
        viewcraft::train::pretrain(&mut m, train.clone(), &cfg, &dev, |_| {}).unwrap();
        let (mean, std) = viewcraft::data::normalization("cifar10");
        let net = m.backbone().clone();
        let bf = viewcraft::eval::knn::backbone_features;
        let (ftr, dim) = bf(&net, m.store_mut(), &train, (mean, std, false), &dev).unwrap();
        let (fte, _) = bf(&net, m.store_mut(), &cifar_test(), (mean, std, false), &dev).unwrap();
        (dir.join("last.safetensors"), ftr, fte, dim)
    })
}

fn cifar_test() -> viewcraft::data::ImageSet {
    use viewcraft::data::cifar::{embedded_root, load, Split, Variant};
    load(&embedded_root(), Variant::Cifar10, Split::Test).unwrap()
}

#[test]
fn probe_matches_a_converged_logistic_regression_on_checkpoint_features() {
    let (_, ftr, fte, dim) = checkpoint();
    let (ftr, fte, dim) = (ftr.as_slice(), fte.as_slice(), *dim);
    let (train, test) = (cifar_train(PRETRAIN_IMAGES), cifar_test());
    let norm = ftr
        .chunks(dim)
        .map(|r| dot(&to_f64(r), &to_f64(r)).sqrt())
        .sum::<f64>()
        / train.len() as f64;
    let f = ProbeFeatures {
        train: ftr,
        train_labels: &train.labels,
        test: fte,
        test_labels: &test.labels,
        dim,
        classes: 10,
    };
    let cfg = LinearCfg {
        augment: false,
        ..quickstart_probe()
    };
    assert_eq!(cfg.feature_norm, "standardize");
    let t = std::time::Instant::now();
    let r = probe(&f, &cfg);
    let probe_s = t.elapsed().as_secs_f64();
    // The reference: the same objective on the same standardised features, in f64.
    let s = Standardizer::fit(ftr, dim);
    let (mut xtr, mut xte) = (ftr.to_vec(), fte.to_vec());
    s.apply(&mut xtr);
    s.apply(&mut xte);
    let (xtr, xte) = (to_f64(&xtr), to_f64(&xte));
    let (w, gn, its) = newton_logreg(&xtr, &train.labels, dim, 10, cfg.weight_decay as f64);
    let ref_test = logreg_top1(&w, &xte, &test.labels, dim, 10);
    let ref_train = logreg_top1(&w, &xtr, &train.labels, dim, 10);
    let ref_ce = logreg_ce(&w, &xtr, &train.labels, dim, 10);
    println!(
        "features [{}, {dim}], mean norm {norm:.1}\nprobe ({probe_s:.1} s): test top-1 {:.2}% (best {:.2}% at epoch {}), train {:.2}%, loss {:.4}\nreference (Newton, {its} iterations, |grad| {gn:.1e}): test top-1 {:.2}%, train {:.2}%, cross-entropy {ref_ce:.4}",
        train.len(),
        100.0 * r.last_top1,
        100.0 * r.best_top1,
        r.best_epoch,
        100.0 * r.train_top1,
        r.train_loss,
        100.0 * ref_test,
        100.0 * ref_train,
    );
    assert!(gn < 1e-8, "the reference did not converge: |grad| {gn:e}");
    assert!(!r.diverging, "{:?}", losses(&r));
    assert!(
        (r.last_top1 - ref_test).abs() <= 0.02,
        "probe test top-1 {:.2}% vs the converged logistic regression's {:.2}%",
        100.0 * r.last_top1,
        100.0 * ref_test
    );
    // And it got there by converging: its last epoch's loss is the optimum's.
    assert!(
        (r.train_loss - ref_ce).abs() < 0.02,
        "probe loss {} vs the optimum's cross-entropy {ref_ce}",
        r.train_loss
    );
}

/// (name, shape, f32 values) of every tensor in a safetensors file (labels as f32).
fn read_tensors(path: &std::path::Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let raw = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let vals = match t.dtype() {
                safetensors::Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                _ => t
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
            };
            (name, t.shape().to_vec(), vals)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn embed(args: &[&str]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let (ckpt, ..) = checkpoint();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "embed-{}.safetensors",
        args.join("").replace('-', "")
    ));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_viewcraft"))
        .args(["--device", "cpu", "embed", "--checkpoint"])
        .arg(ckpt)
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    read_tensors(&out)
}

#[test]
fn embed_writes_the_features_the_probe_trains_on() {
    let (_, ftr, fte, dim) = checkpoint();
    let dim = *dim;
    let close = |what: &str, got: &[f32], want: &[f32]| assert_close(what, got, want, 1e-4, 1e-4);
    // Default: the raw eval-mode features, as before (no statistics in the file).
    let raw = embed(&["--split", "test"]);
    let names: Vec<&str> = raw.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["features", "labels"]);
    assert_eq!(raw[0].1, [fte.len() / dim, dim]);
    close("raw test features", &raw[0].2, fte);
    // --standardize: the probe's map, fitted on its training images, on either split.
    let s = Standardizer::fit(ftr, dim);
    let mut want = fte.clone();
    s.apply(&mut want);
    let sub = PRETRAIN_IMAGES.to_string();
    let st = embed(&["--split", "test", "--standardize", "--subset", &sub]);
    let names: Vec<&str> = st.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["feature_mean", "feature_std", "features", "labels"]);
    close("feature_mean", &st[0].2, &s.mean);
    close("feature_std", &st[1].2, &s.std);
    assert_eq!(st[0].1, [dim]);
    close("standardised test features", &st[2].2, &want);
    let tr = embed(&["--split", "train", "--standardize", "--subset", &sub]);
    let mut want = ftr.clone();
    s.apply(&mut want);
    close(
        "standardised training features",
        &tr[2].2[..ftr.len()],
        &want,
    );
    // Standardised: per dimension, mean 0 and std 1 over the probe's training images.
    for d in 0..dim {
        let col: Vec<f64> = want.chunks(dim).map(|r| r[d] as f64).collect();
        let m = col.iter().sum::<f64>() / col.len() as f64;
        let v = col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / col.len() as f64;
        assert!(
            m.abs() < 1e-3 && (v.sqrt() - 1.0).abs() < 1e-3,
            "dim {d}: mean {m} std {}",
            v.sqrt()
        );
    }
}

/// `linear-eval --set k=v…` on the checkpoint's features (fixed, the first 512 training
/// images): (exit code, stdout JSON, stderr).
fn linear_eval(sets: &[&str]) -> (i32, serde_json::Value, String) {
    let (ckpt, ..) = checkpoint();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "linear_eval-{}.json",
        sets.join("_").replace(['=', '.', '"'], "")
    ));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_viewcraft"));
    cmd.args(["--device", "cpu", "linear-eval", "--checkpoint"])
        .arg(ckpt)
        .arg("--out")
        .arg(&out);
    let sub = format!("data.subset={PRETRAIN_IMAGES}");
    for s in [sub.as_str(), "linear.augment=false"].iter().chain(sets) {
        cmd.args(["--set", s]);
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim())
        .unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let full: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for k in ["train_loss", "train_top1", "diverging", "feature_norm"] {
        assert_eq!(full[k], v[k], "{k} in the file and on stdout");
    }
    (o.status.code().unwrap_or(-1), v, stderr)
}

#[test]
fn linear_eval_reports_the_training_fit_and_warns_once_when_diverging() {
    let warnings = |e: &str| e.lines().filter(|l| l.starts_with("warning:")).count();
    // Issue 22's probe: raw features at lr 1.
    let (code, v, e) = linear_eval(&[
        "linear.feature_norm=none",
        "linear.lr=1",
        "linear.epochs=6",
        "linear.batch_size=256",
    ]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(warnings(&e), 1, "{e}");
    assert!(e.contains("feature_norm = \"standardize\""), "{e}");
    assert_eq!(v["diverging"], true, "{v}");
    assert_eq!(v["feature_norm"], "none");
    assert!(v["train_loss"].as_f64().unwrap() > 10f64.ln(), "{v}");
    // The quickstart's probe, shortened: converging, silent.
    let (code, v, e) = linear_eval(&[
        "linear.feature_norm=standardize",
        "linear.lr=0.03",
        "linear.weight_decay=0.005",
        "linear.batch_size=64",
        "linear.epochs=20",
    ]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(warnings(&e), 0, "{e}");
    assert_eq!(v["diverging"], false, "{v}");
    assert!(v["train_loss"].as_f64().unwrap() < 10f64.ln(), "{v}");
    let top1 = v["train_top1"].as_f64().unwrap();
    assert!(top1 > 0.2 && top1 <= 1.0, "{v}");
}

#[test]
fn divergence_is_flagged_only_for_losses_that_do_not_converge() {
    let c = 10;
    // Converging runs: falling, noisy plateaus, a late LR decay, one epoch.
    for ok in [
        vec![2.2, 1.9, 1.8, 1.75, 1.74, 1.74],
        vec![2.2, 2.0, 2.05, 1.98, 2.01, 1.99, 2.0],
        vec![2.1, 2.25, 2.2, 1.8, 1.75],
        vec![0.5, 1e-3, 2e-4, 1e-4, 1e-4],
        vec![2.3],
        vec![2.33, 2.32],
    ] {
        assert_eq!(divergence(&ok, c), None, "{ok:?}");
    }
    // The quickstart probe of issue 22 on raw features: far above ln 10 from epoch 1 on.
    let issue = [94.2, 217.6, 217.0, 372.0, 250.0, 120.0, 61.2];
    let why = divergence(&issue, c).expect("issue 22's losses");
    assert!(why.contains("61.2") && why.contains("epoch 7"), "{why}");
    // Rising over the last epochs while still below chance.
    let rising = [2.2, 1.6, 1.5, 1.55, 1.8, 2.0];
    let why = divergence(&rising, c).expect("rising tail");
    assert!(
        why.contains("epochs 4-6") && why.contains("epoch 3"),
        "{why}"
    );
    // Not finite.
    assert!(divergence(&[2.0, f64::NAN, 1.0], c)
        .unwrap()
        .contains("epoch 2"));
    assert!(divergence(&[2.0, 1.0, f64::INFINITY], c).is_some());
    assert_eq!(divergence(&[], c), None);
}
