//! Data parallelism over MPI (`--features mpi`; `.ci/run` runs this binary under Open MPI):
//! `mpirun -np 2` on the CPU path equals one process with the same global batch and ghost-BN
//! groups of half of it (SimCLR and MoCo with ContrastiveCrop, a box update in between), the
//! ranks' parameters bit-identical, a resumed 2-rank run equal to an uninterrupted one, and a
//! failing rank stopping every rank with its message. Skipped (with a note) where `mpirun` is
//! missing, except under CI=true.
#![cfg(feature = "mpi")]

mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small ContrastiveCrop run: 128 images, batch 64, 3 epochs with box updates after the
/// first two. A small learning rate keeps the run out of the regime where rounding differences
/// (the order of the gradient sums) grow by orders of magnitude per step: at lr 0.005 one
/// process on 1 or 2 threads already ends 1e-4 apart, at 0.0005 1e-6 (the whole parameter
/// vector, relative).
const TINY: &str = r#"
[model]
width = 8
[data]
subset = 128
workers = 2
[crop]
kind = "ccrop"
warmup_epochs = 1
loc_interval = 1
[train]
epochs = 3
batch_size = 64
lr = 0.0005
log_interval = 1
save_interval = 1
device = "cpu"
[knn]
interval = 0
[linear]
epochs = 0
"#;

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("viewcraft-mpi-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(method: &str) -> PathBuf {
    let p = tmp().join(format!("{method}.toml"));
    let extra = if method == "moco" {
        "[method]\nname = \"moco\"\nqueue = 128\n"
    } else {
        "[method]\nname = \"simclr\"\n"
    };
    std::fs::write(&p, format!("{extra}{TINY}")).unwrap();
    p
}

fn mpirun_available() -> bool {
    let ok = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true and no mpirun (apt-get install openmpi-bin libopenmpi-dev)"
        );
        eprintln!("SKIP (no mpirun)");
    }
    ok
}

/// `viewcraft ARGS` under `mpirun -np N` (N = 1: a plain process), at most two minutes.
fn run(np: usize, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let bin = env!("CARGO_BIN_EXE_viewcraft");
    let mut c = Command::new("timeout");
    c.arg("120");
    if np > 1 {
        c.args(["mpirun", "--oversubscribe", "-np", &np.to_string()]);
    }
    c.arg(bin).args(args);
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Containers often forbid the cross-memory attach of Open MPI's shared-memory path.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env_remove("VIEWCRAFT_DEVICE")
        .env_remove("VIEWCRAFT_STOP_AT_STEP");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn pretrain(
    np: usize,
    cfg: &Path,
    out: &Path,
    sets: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut args = vec![
        "pretrain",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    run(np, &args, env)
}

/// The parameters (`param/…`) of a checkpoint, by name.
fn params(ckpt: &Path) -> Vec<(String, Vec<f32>)> {
    common::tensors(ckpt)
        .into_iter()
        .filter(|(n, _)| n.starts_with("param/"))
        .map(|(n, b)| {
            (
                n,
                b.chunks(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        })
        .collect()
}

/// ‖a − b‖ / ‖a‖ over the whole parameter vector (per tensor, BN biases that start at 0 and
/// sum gradients with cancellation have no meaningful relative error).
fn relative_difference(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0f64, 0f64);
    for ((n, x), (m, y)) in a.iter().zip(b) {
        assert_eq!(n, m);
        num += x
            .iter()
            .zip(y)
            .map(|(p, q)| ((p - q) as f64).powi(2))
            .sum::<f64>();
        den += x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>();
    }
    (num / den).sqrt()
}

/// One process with `one_sets` and two ranks with `two_sets` of `method`'s config, each into a
/// fresh run directory named after `tag`: (one, two, their relative parameter difference,
/// the two-rank run's standard output).
fn one_vs_two(
    method: &str,
    tag: &str,
    one_sets: &[&str],
    two_sets: &[&str],
) -> (PathBuf, PathBuf, f64, String) {
    let cfg = config(method);
    let one = tmp().join(format!("{method}-{tag}-one"));
    let two = tmp().join(format!("{method}-{tag}-two"));
    let _ = std::fs::remove_dir_all(&one);
    let _ = std::fs::remove_dir_all(&two);
    let (c, o, e) = pretrain(1, &cfg, &one, one_sets, &[]);
    assert_eq!(c, 0, "{o}{e}");
    let (c, o, e) = pretrain(2, &cfg, &two, two_sets, &[]);
    assert_eq!(c, 0, "{o}{e}");
    let rel = relative_difference(
        &params(&one.join("checkpoints/last.safetensors")),
        &params(&two.join("checkpoints/last.safetensors")),
    );
    eprintln!("{method} ({tag}): 2 ranks vs 1 process, relative parameter difference {rel:.2e}");
    (one, two, rel, o)
}

fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn two_ranks_equal_one_process_with_half_batch_bn_groups() {
    if !mpirun_available() {
        return;
    }
    for method in ["simclr", "moco"] {
        let (_, two, rel, o) = one_vs_two(method, "groups", &["train.bn_group=32"], &[]);
        assert!(
            o.contains("data parallel: 2 ranks, 32 images of every batch of 64"),
            "{o}"
        );
        // The same computation as one process with half-batch BN groups.
        assert!(
            rel < 1e-5,
            "{method}: the parameters differ by {rel:.2e} relative"
        );
        // Each step logged once, by rank 0; the ranks' parameters bit for bit the same.
        let recs = records(&two);
        let steps = recs.iter().filter(|r| r["event"] == "step").count();
        assert_eq!(steps, 6, "{method}: 3 epochs × 2 steps");
        let ranks = recs
            .iter()
            .find(|r| r["event"] == "ranks")
            .expect("ranks record");
        assert_eq!(ranks["ranks"], 2);
        assert_eq!(ranks["parameters_identical"], true);
        assert_eq!(recs.iter().filter(|r| r["event"] == "boxes").count(), 2);
        // Not the same as one process without the groups (BN statistics over 64 images).
        let whole = tmp().join(format!("{method}-whole"));
        let _ = std::fs::remove_dir_all(&whole);
        let (c, o, e) = pretrain(1, &config(method), &whole, &["train.bn_group=64"], &[]);
        assert_eq!(c, 0, "{o}{e}");
        let w = params(&whole.join("checkpoints/last.safetensors"));
        let b = params(&two.join("checkpoints/last.safetensors"));
        assert!(
            relative_difference(&w, &b) > 1e-3,
            "{method}: the groups made no difference"
        );
    }
}

/// `train.sync_bn`: BatchNorm statistics over both ranks' images — one process with BN over
/// the whole batch.
#[test]
fn synchronised_batch_norm_equals_one_process_over_the_whole_batch() {
    if !mpirun_available() {
        return;
    }
    for method in ["simclr", "moco"] {
        let (_, _, rel, _) = one_vs_two(
            method,
            "sync",
            &["train.bn_group=64"],
            &["train.sync_bn=true"],
        );
        assert!(rel < 1e-5, "{method}: {rel:.2e}");
    }
}

#[test]
fn a_resumed_two_rank_run_equals_the_uninterrupted_one() {
    if !mpirun_available() {
        return;
    }
    let cfg = config("moco");
    let full = tmp().join("resume-full");
    let part = tmp().join("resume-part");
    let _ = std::fs::remove_dir_all(&full);
    let _ = std::fs::remove_dir_all(&part);
    let (c, o, e) = pretrain(2, &cfg, &full, &[], &[]);
    assert_eq!(c, 0, "{o}{e}");
    // Stopped after step 3 (mid-epoch 2), then resumed.
    let (c, o, e) = pretrain(2, &cfg, &part, &[], &[("VIEWCRAFT_STOP_AT_STEP", "3")]);
    assert_ne!(c, 0, "interrupted: {o}{e}");
    assert!(e.contains("interrupted at epoch 2, step 3"), "{e}");
    // Another number of processes would change the BN groups: refused.
    let (c, _, e) = run(
        1,
        &[
            "pretrain",
            cfg.to_str().unwrap(),
            "--out",
            part.to_str().unwrap(),
            "--resume",
        ],
        &[],
    );
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("2 rank(s)"), "{e}");
    let (c, o, e) = run(
        2,
        &[
            "pretrain",
            cfg.to_str().unwrap(),
            "--out",
            part.to_str().unwrap(),
            "--resume",
        ],
        &[],
    );
    assert_eq!(c, 0, "{o}{e}");
    let (a, b) = (
        params(&full.join("checkpoints/last.safetensors")),
        params(&part.join("checkpoints/last.safetensors")),
    );
    assert!(
        a == b,
        "the resumed 2-rank run differs from the uninterrupted one"
    );
}

#[test]
fn a_failing_rank_stops_every_rank() {
    if !mpirun_available() {
        return;
    }
    let cfg = config("simclr");
    let out = tmp().join("fail");
    let _ = std::fs::remove_dir_all(&out);
    let t0 = std::time::Instant::now();
    let (c, o, e) = pretrain(2, &cfg, &out, &[], &[("VIEWCRAFT_FAIL_RANK", "1")]);
    assert!(
        c != 0 && c != 124,
        "every rank must stop, without the timeout: {c} {o}{e}"
    );
    assert!(
        e.contains("rank 1 of 2") && e.contains("cannot be read on this rank"),
        "{e}"
    );
    assert!(t0.elapsed().as_secs() < 100, "took {:?}", t0.elapsed());
}
