//! The researcher's workflow through the binary, on the CPU path with a tiny config: a run
//! directory with everything in it, resume after an interruption equal to an uninterrupted
//! run, linear-eval / knn / viz on the checkpoint, and every user error as one line.

mod common;
use common::tensors;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use safetensors::SafeTensors;

const TINY: &str = r#"
[model]
width = 8
[method]
name = "simclr"
[data]
subset = 64
workers = 2
[crop]
kind = "ccrop"
warmup_epochs = 1
loc_interval = 1
[train]
epochs = 3
batch_size = 16
lr = 0.1
log_interval = 1
save_interval = 1
device = "cpu"
[knn]
interval = 1
k = 20
[linear]
epochs = 2
batch_size = 32
augment = false
"#;

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("viewcraft-workflow-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny_config() -> PathBuf {
    let p = tmp().join("tiny.toml");
    if !p.exists() {
        std::fs::write(&p, TINY).unwrap();
    }
    p
}

fn viewcraft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_viewcraft"));
    c.env_remove("VIEWCRAFT_DEVICE")
        .env_remove("VIEWCRAFT_STOP_AT_STEP");
    c
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run viewcraft");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn pretrain(out: &Path, extra: &[&str]) -> (i32, String, String) {
    let cfg = tiny_config();
    run(viewcraft()
        .args([
            "pretrain",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(extra))
}

/// One uninterrupted run shared by the tests that read its results.
fn reference_run() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = tmp().join("run-a");
        let _ = std::fs::remove_dir_all(&out);
        let (code, o, e) = pretrain(&out, &[]);
        assert_eq!(code, 0, "{o}{e}");
        assert!(o.contains("| simclr | ccrop | 3 | 64 |"), "{o}");
        out
    })
}

fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn pretrain_writes_a_complete_run_directory() {
    let run = reference_run();
    for f in [
        "config.toml",
        "metrics.jsonl",
        "loss.svg",
        "knn.svg",
        "linear.svg",
        "summary.json",
        "checkpoints/epoch_1.safetensors",
        "checkpoints/epoch_3.safetensors",
        "checkpoints/last.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let resolved = viewcraft::config::Config::load(Some(&run.join("config.toml")), &[]).unwrap();
    assert_eq!((resolved.train.epochs, resolved.model.width), (3, 8));
    let recs = records(run);
    let steps: Vec<&serde_json::Value> = recs.iter().filter(|r| r["event"] == "step").collect();
    assert_eq!(steps.len(), 12, "3 epochs × 4 steps, logged every step");
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["step"], i + 1);
        assert!(s["epoch"].as_u64().is_some() && s["loss"].as_f64().unwrap().is_finite());
    }
    let boxes: Vec<u64> = recs
        .iter()
        .filter(|r| r["event"] == "boxes")
        .map(|r| {
            assert!(r["box_mean_area"].as_f64().unwrap() > 0.0);
            assert!(r["box_near_full"].as_f64().is_some() && r["box_fallbacks"].is_u64());
            r["epoch"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        boxes,
        [1, 2],
        "boxes after epochs 1 and 2, never after the last"
    );
    let crops: Vec<&str> = recs
        .iter()
        .filter(|r| r["event"] == "epoch")
        .map(|r| r["crop"].as_str().unwrap())
        .collect();
    assert_eq!(crops, ["rcrop", "ccrop", "ccrop"]);
    assert_eq!(recs.iter().filter(|r| r["event"] == "knn").count(), 3);
    assert_eq!(
        recs.iter().filter(|r| r["event"] == "linear_epoch").count(),
        2
    );
    assert_eq!(recs.last().unwrap()["event"], "done");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let best = summary["linear"]["best_top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&best));
    // A finished run directory is not overwritten.
    let (code, _, e) = pretrain(run, &[]);
    assert_eq!(code, 2);
    assert!(e.contains("finished run"), "{e}");
}

#[test]
fn interrupted_then_resumed_equals_uninterrupted() {
    let a = reference_run();
    let b = tmp().join("run-b");
    let _ = std::fs::remove_dir_all(&b);
    // Stop in the middle of epoch 2 (4 steps per epoch), as Ctrl-C would.
    let cfg = tiny_config();
    let (code, o, e) = run(viewcraft().env("VIEWCRAFT_STOP_AT_STEP", "6").args([
        "pretrain",
        cfg.to_str().unwrap(),
        "--out",
        b.to_str().unwrap(),
    ]));
    assert_eq!(code, 130, "{o}{e}");
    assert!(
        e.contains("interrupted at epoch 2, step 6") && e.contains("--resume"),
        "{e}"
    );
    assert!(!b.join("summary.json").exists());
    // Run again: the interrupted run directory continues by itself.
    let (code, o, e) = pretrain(&b, &[]);
    assert_eq!(code, 0, "{o}{e}");
    assert!(o.contains("resuming"), "{o}");
    let (ta, tb) = (
        tensors(&a.join("checkpoints/last.safetensors")),
        tensors(&b.join("checkpoints/last.safetensors")),
    );
    assert_eq!(ta.len(), tb.len());
    for ((na, da), (nb, db)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(da == db, "{na} differs after interrupt + resume");
    }
    let steps: Vec<u64> = records(&b)
        .iter()
        .filter(|r| r["event"] == "step")
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        (1..=12).collect::<Vec<u64>>(),
        "each step logged once"
    );
    // --resume on a finished run is an error, not a silent retrain.
    let (code, _, e) = pretrain(&b, &["--resume"]);
    assert_eq!(code, 2);
    assert!(e.contains("finished"), "{e}");
}

#[test]
fn linear_eval_knn_and_viz_read_the_checkpoint() {
    let run = reference_run();
    let ckpt = run.join("checkpoints/last.safetensors");
    let c = ckpt.to_str().unwrap();
    let (code, o, e) = run_cmd(&[
        "--device",
        "cpu",
        "linear-eval",
        "--checkpoint",
        c,
        "--set",
        "linear.epochs=2",
        "--set",
        "data.subset=64",
        "--set",
        "linear.batch_size=32",
    ]);
    assert_eq!(code, 0, "{o}{e}");
    let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    for k in ["best_top1", "last_top1"] {
        assert!((0.0..=1.0).contains(&v[k].as_f64().unwrap()), "{v}");
    }
    assert_eq!(v["epochs"], 2);
    assert_eq!(v["train_images"], 64);
    let full: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("linear_eval.json")).unwrap())
            .unwrap();
    assert_eq!(full["history"].as_array().unwrap().len(), 2);

    let knn_out = tmp().join("knn.json");
    let (code, o, e) = run_cmd(&[
        "--device",
        "cpu",
        "knn",
        "--checkpoint",
        c,
        "--k",
        "10",
        "--out",
        knn_out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{o}{e}");
    let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    assert!((0.0..=1.0).contains(&v["knn_top1"].as_f64().unwrap()));
    assert!(knn_out.exists());

    let viz = tmp().join("viz");
    let (code, o, e) = viz_cmd(c, &viz, 8);
    assert_eq!(code, 0, "{o}{e}");
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(viz.join("boxes.json")).unwrap()).unwrap();
    assert!((b["k"].as_f64().unwrap() - 0.1).abs() < 1e-6, "{b}");
    let boxes = b["boxes"].as_array().unwrap();
    assert_eq!(boxes.len(), 8);
    for bx in boxes {
        let f: Vec<f64> = bx
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(f.len(), 4);
        assert!(f.iter().all(|x| (0.0..=1.0).contains(x)));
        assert!(f[0] <= f[2] && f[1] <= f[3], "{f:?}");
    }
    // Proposals: the components of the same thresholded maps, so each lies inside its image's
    // box (the closure of every pixel above k), at most max_proposals of them.
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(viz.join("proposals.json")).unwrap())
            .unwrap();
    assert!((p["k"].as_f64().unwrap() - 0.1).abs() < 1e-6, "{p}");
    let props = p["proposals"].as_array().unwrap();
    assert_eq!(props.len(), 8);
    let num = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for (list, bx) in props.iter().zip(boxes) {
        let bx = num(bx);
        let list = list.as_array().unwrap();
        assert!(!list.is_empty() && list.len() <= 10, "{list:?}");
        for q in list {
            let q = num(q);
            assert!(
                q[0] >= bx[0] && q[1] >= bx[1] && q[2] <= bx[2] && q[3] <= bx[3],
                "{q:?} in {bx:?}"
            );
        }
    }
    for png in ["heatmaps.png", "boxes.png", "proposals.png", "views.png"] {
        let img = image::open(viz.join(png)).unwrap();
        assert!(img.width() > 100 && img.height() > 100, "{png}");
    }
}

fn run_cmd(args: &[&str]) -> (i32, String, String) {
    run(viewcraft().args(args))
}

/// `viewcraft viz` of checkpoint `ckpt` into `out` for `limit` images, on the CPU path.
fn viz_cmd(ckpt: &str, out: &Path, limit: usize) -> (i32, String, String) {
    let limit = limit.to_string();
    let out = out.to_str().unwrap();
    run_cmd(&[
        "--device",
        "cpu",
        "viz",
        "--checkpoint",
        ckpt,
        "--out",
        out,
        "--limit",
        &limit,
    ])
}

/// A user error: exit 2, one line on stderr naming `words`, no panic.
fn user_error(args: &[&str], words: &[&str]) {
    let (code, o, e) = run_cmd(args);
    assert_eq!(code, 2, "{args:?}: {o}{e}");
    let lines: Vec<&str> = e
        .lines()
        .filter(|l| !l.contains("XDG_RUNTIME_DIR") && !l.trim().is_empty())
        .collect();
    assert!(!e.contains("panicked"), "{args:?}: {e}");
    assert_eq!(lines.len(), 1, "{args:?}: one line expected: {e}");
    for w in words {
        assert!(lines[0].contains(w), "{args:?}: `{w}` not in: {e}");
    }
}

#[test]
fn user_errors_are_one_clear_line() {
    let cfg = tiny_config();
    let c = cfg.to_str().unwrap();
    let d = tmp().join("errors");
    std::fs::create_dir_all(&d).unwrap();
    let out = d.join("run");
    let o = out.to_str().unwrap();
    user_error(
        &["pretrain", "/no/such/config.toml"],
        &["/no/such/config.toml", "cannot read"],
    );
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "[train]\nepoch = 3\n").unwrap();
    user_error(
        &["pretrain", bad.to_str().unwrap()],
        &["bad.toml", "[train]", "epoch"],
    );
    user_error(
        &["pretrain", c, "--out", o, "--set", "crop.box_thresh=2"],
        &["crop.box_thresh", "(0, 1)"],
    );
    // A bad proposals file: the file and the entry named, no run directory left behind.
    let props = d.join("proposals.json");
    std::fs::write(&props, r#"{"1": [[0, 0, 10, 10]], "2": [[4, 4, 2, 9]]}"#).unwrap();
    let set_file = format!("crop.proposals_file={}", props.display());
    user_error(
        &[
            "pretrain",
            c,
            "--out",
            o,
            "--set",
            "crop.kind=objectcrop",
            "--set",
            &set_file,
        ],
        &["proposals.json", "entry `2`, box 0"],
    );
    assert!(!out.exists(), "nothing written for a bad proposals file");
    user_error(
        &["pretrain", c, "--out", o, "--set", "crop.alpha=0"],
        &["crop.alpha"],
    );
    user_error(
        &["pretrain", c, "--out", o, "--set", "data.subset=8"],
        &["train.batch_size", "larger than the 8 training images"],
    );
    user_error(
        &[
            "pretrain",
            c,
            "--out",
            o,
            "--set",
            "data.root=/no/such/data",
        ],
        &["/no/such/data", "not found"],
    );
    user_error(
        &[
            "pretrain",
            c,
            "--out",
            o,
            "--set",
            "train.device=no-such-gpu-xyz",
        ],
        &["no-such-gpu-xyz"],
    );
    // Corrupt data: a truncated batch file.
    let corrupt = d.join("cifar");
    std::fs::create_dir_all(&corrupt).unwrap();
    let src = viewcraft::data::cifar::embedded_root();
    let bytes = std::fs::read(src.join("data_batch_1.bin")).unwrap();
    std::fs::write(corrupt.join("data_batch_1.bin"), &bytes[..5000]).unwrap();
    std::fs::copy(src.join("test_batch.bin"), corrupt.join("test_batch.bin")).unwrap();
    let root = format!("data.root={}", corrupt.display());
    user_error(
        &["pretrain", c, "--out", o, "--set", &root],
        &["data_batch_1.bin"],
    );
    // An unwritable run directory (below a regular file).
    let file = d.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let under = file.join("run");
    user_error(
        &["pretrain", c, "--out", under.to_str().unwrap()],
        &["a-file", "cannot create the run directory"],
    );
    user_error(&["pretrain", c, "--out", o, "--resume"], &["no checkpoint"]);
    user_error(
        &[
            "--device",
            "cpu",
            "knn",
            "--checkpoint",
            "/no/such.safetensors",
        ],
        &["/no/such.safetensors"],
    );
    user_error(
        &["--device", "cpu", "viz", "--checkpoint", c, "--out", o],
        &["tiny.toml", "not a safetensors checkpoint"],
    );
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let out = tmp().join("nan");
    let _ = std::fs::remove_dir_all(&out);
    let (code, o, e) = pretrain(&out, &["--set", "train.lr=1e30"]);
    assert_eq!(code, 2, "{o}{e}");
    assert!(e.contains("loss became") && e.contains("step"), "{e}");
    let last = out.join("checkpoints/last.safetensors");
    if last.exists() {
        let raw = std::fs::read(&last).unwrap();
        let st = SafeTensors::deserialize(&raw).unwrap();
        for (n, t) in st.tensors() {
            assert!(
                t.data()
                    .chunks_exact(4)
                    .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
                "{n} is not finite in the kept checkpoint"
            );
        }
    }
}

#[test]
fn quickstart_with_tiny_overrides_writes_its_run_directory() {
    let out = tmp().join("quick");
    let _ = std::fs::remove_dir_all(&out);
    let (code, o, e) = run_cmd(&[
        "--device",
        "cpu",
        "quickstart",
        "--set",
        "train.epochs=2",
        "--set",
        "data.subset=64",
        "--set",
        "train.batch_size=32",
        "--set",
        "model.width=8",
        "--set",
        "knn.interval=1",
        "--set",
        "linear.epochs=2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{o}{e}");
    assert!(
        o.contains("| simclr | ccrop | 2 | 64 |") && o.contains("kNN top-1"),
        "{o}"
    );
    for f in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/last.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_130() {
    let out = tmp().join("sigint");
    let _ = std::fs::remove_dir_all(&out);
    let cfg = tiny_config();
    let child = viewcraft()
        .args([
            "pretrain",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.epochs=500",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first logged step, then interrupt as a terminal would.
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(out.join("metrics.jsonl")).is_ok_and(|s| s.contains("\"step\""))
    {
        assert!(t0.elapsed().as_secs() < 120, "no step logged");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let res = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted at epoch") && err.contains("--resume"),
        "{err}"
    );
    assert!(out.join("checkpoints/last.safetensors").exists());
    let meta =
        viewcraft::train::checkpoint::metadata(&out.join("checkpoints/last.safetensors")).unwrap();
    assert!(meta["step"].parse::<usize>().unwrap() >= 1);
}

/// A copy of `src` with tensor `name` given `shape` (same bytes), written to `dst`.
fn reshaped_copy(src: &Path, dst: &Path, name: &str, shape: &[usize]) {
    use safetensors::tensor::TensorView;
    let raw = std::fs::read(src).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&raw).unwrap();
    let st = SafeTensors::deserialize(&raw).unwrap();
    let views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let s = if n == name {
                shape.to_vec()
            } else {
                t.shape().to_vec()
            };
            (n, TensorView::new(t.dtype(), s, t.data()).unwrap())
        })
        .collect();
    let bytes = safetensors::serialize(views, meta.metadata().clone()).unwrap();
    std::fs::write(dst, bytes).unwrap();
}

/// Every command that reads a checkpoint rejects one whose tensors do not fit the
/// architecture it describes: exit 2, one line naming the file and the tensor, no panic.
#[test]
fn checkpoints_with_misshapen_tensors_are_rejected_by_every_command() {
    let run = reference_run();
    let good = run.join("checkpoints/last.safetensors");
    let d = tmp().join("misshapen");
    std::fs::create_dir_all(&d).unwrap();
    // Width 8: conv1 is [8, 3, 3, 3], layer1.0.conv1 [8, 8, 3, 3].
    let cases = [
        ("stem.safetensors", "param/conv1.weight", vec![216]),
        (
            "block.safetensors",
            "param/layer1.0.conv1.weight",
            vec![64, 9],
        ),
    ];
    for (file, tensor, shape) in &cases {
        let bad = d.join(file);
        reshaped_copy(&good, &bad, tensor, shape);
        let b = bad.to_str().unwrap();
        let o = d.join("out");
        let o = o.to_str().unwrap();
        let words = [*file, *tensor];
        user_error(
            &[
                "--device",
                "cpu",
                "export",
                "--checkpoint",
                b,
                "--out",
                &format!("{o}.safetensors"),
            ],
            &words,
        );
        user_error(
            &[
                "--device",
                "cpu",
                "embed",
                "--checkpoint",
                b,
                "--out",
                &format!("{o}.safetensors"),
            ],
            &words,
        );
        user_error(&["--device", "cpu", "knn", "--checkpoint", b], &words);
        user_error(
            &[
                "--device",
                "cpu",
                "linear-eval",
                "--checkpoint",
                b,
                "--out",
                &format!("{o}.json"),
            ],
            &words,
        );
        user_error(
            &["--device", "cpu", "viz", "--checkpoint", b, "--out", o],
            &words,
        );
    }
    // Resume: an interrupted run directory whose last checkpoint is misshapen.
    let r = d.join("resume-run");
    let _ = std::fs::remove_dir_all(&r);
    std::fs::create_dir_all(r.join("checkpoints")).unwrap();
    std::fs::copy(run.join("config.toml"), r.join("config.toml")).unwrap();
    let last = r.join("checkpoints/last.safetensors");
    reshaped_copy(&good, &last, "param/layer1.0.conv1.weight", &[64, 9]);
    let cfg = tiny_config();
    user_error(
        &[
            "pretrain",
            cfg.to_str().unwrap(),
            "--out",
            r.to_str().unwrap(),
            "--resume",
        ],
        &["last.safetensors", "param/layer1.0.conv1.weight"],
    );
}

/// A run that masks with `hp`: hard negatives in every step record, the probe and
/// `linear-eval` on high-passed inputs (and saying so), `viz` pictures the masks; an exported
/// backbone as the saliency source; masking errors as one line before anything is written.
#[test]
fn a_masked_run_evaluates_high_passed_and_pictures_its_masks() {
    let out = tmp().join("masked");
    let _ = std::fs::remove_dir_all(&out);
    let (code, o, e) = pretrain(
        &out,
        &["--set", "mask.strategy=hp", "--set", "train.epochs=2"],
    );
    assert_eq!(code, 0, "{o}{e}");
    assert!(
        o.contains("saliency masking: hp, 8×8 cells, 1 hard negative per image"),
        "{o}"
    );
    let recs = records(&out);
    let steps: Vec<_> = recs.iter().filter(|r| r["event"] == "step").collect();
    assert!(
        !steps.is_empty() && steps.iter().all(|r| r["hard_negatives"] == 16),
        "{steps:?}"
    );
    let lin = recs.iter().find(|r| r["event"] == "linear").unwrap();
    assert_eq!(lin["high_pass"], true, "{lin}");
    let ckpt = out.join("checkpoints/last.safetensors");
    let c = ckpt.to_str().unwrap();
    let (code, o, e) = run_cmd(&[
        "--device",
        "cpu",
        "linear-eval",
        "--checkpoint",
        c,
        "--set",
        "linear.epochs=1",
        "--set",
        "data.subset=64",
        "--set",
        "linear.batch_size=32",
    ]);
    assert_eq!(code, 0, "{o}{e}");
    let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    assert_eq!(v["high_pass"], true, "{v}");
    let full: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("linear_eval.json")).unwrap())
            .unwrap();
    assert_eq!(full["config"]["linear"]["high_pass"], true);
    // Asked off explicitly, the probe runs on plain inputs and says so.
    let (code, o, e) = run_cmd(&[
        "--device",
        "cpu",
        "linear-eval",
        "--checkpoint",
        c,
        "--set",
        "linear.epochs=1",
        "--set",
        "data.subset=64",
        "--set",
        "linear.high_pass=false",
        "--out",
        tmp().join("plain.json").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{o}{e}");
    let w: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    assert_eq!(w["high_pass"], false, "{w}");
    let viz = tmp().join("viz-masked");
    let (code, o, e) = viz_cmd(c, &viz, 4);
    assert_eq!(code, 0, "{o}{e}");
    let img = image::open(viz.join("masks.png")).unwrap();
    // 4 rows of query, masked query, key, hard negative.
    assert!(
        img.width() > 3 * img.height() / 4 && img.height() > 400,
        "{}x{}",
        img.width(),
        img.height()
    );

    // The exported backbone as the saliency source.
    let exported = tmp().join("saliency-backbone.safetensors");
    let (code, o, e) = run_cmd(&[
        "export",
        "--checkpoint",
        c,
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{o}{e}");
    let out2 = tmp().join("masked-external");
    let _ = std::fs::remove_dir_all(&out2);
    let ext = format!("mask.saliency_backbone=\"{}\"", exported.display());
    let (code, o, e) = pretrain(
        &out2,
        &[
            "--set",
            "mask.strategy=blur",
            "--set",
            "train.epochs=1",
            "--set",
            &ext,
        ],
    );
    assert_eq!(code, 0, "{o}{e}");
    assert!(
        o.contains("saliency from") && o.contains("saliency-backbone.safetensors"),
        "{o}"
    );

    // Errors: one line, exit 2, no run directory.
    let cfg = tiny_config();
    let bad = tmp().join("masked-bad");
    let _ = std::fs::remove_dir_all(&bad);
    for (sets, words) in [
        (
            vec![
                "method.name=byol",
                "mask.strategy=hp",
                "mask.num_hard_negatives=1",
            ],
            vec!["mask.num_hard_negatives", "byol"],
        ),
        (
            vec![
                "mask.strategy=hp",
                "mask.saliency_backbone=\"/nonexistent/r50.safetensors\"",
            ],
            vec!["mask.saliency_backbone", "r50.safetensors"],
        ),
        (
            vec!["mask.strategy=blur", "mask.grid=17"],
            vec!["mask.grid", "1..=16"],
        ),
    ] {
        let mut args = vec![
            "pretrain",
            cfg.to_str().unwrap(),
            "--out",
            bad.to_str().unwrap(),
        ];
        for s in &sets {
            args.push("--set");
            args.push(s);
        }
        user_error(&args, &words);
        assert!(!bad.exists(), "{sets:?}: nothing written");
    }
}

/// CLSA through the binary: `--set method.name=clsa` switches a MoCo-shaped config, the step
/// records carry `loss_ddm`, and `viz` pictures strong views.
#[test]
fn a_clsa_run_logs_its_ddm_and_pictures_strong_views() {
    let out = tmp().join("clsa");
    let _ = std::fs::remove_dir_all(&out);
    let (code, o, e) = pretrain(
        &out,
        &[
            "--set",
            "method.name=clsa",
            "--set",
            "method.queue=64",
            "--set",
            "train.bn_group=8",
            "--set",
            "train.epochs=1",
            "--set",
            "linear.epochs=0",
        ],
    );
    assert_eq!(code, 0, "{o}{e}");
    let recs = records(&out);
    let steps: Vec<_> = recs.iter().filter(|r| r["event"] == "step").collect();
    assert!(!steps.is_empty());
    for r in &steps {
        let (l, d) = (r["loss"].as_f64().unwrap(), r["loss_ddm"].as_f64().unwrap());
        assert!(d > 0.0 && d < l, "{r}");
    }
    let ckpt = out.join("checkpoints/last.safetensors");
    let viz = tmp().join("viz-clsa");
    let (code, o, e) = viz_cmd(ckpt.to_str().unwrap(), &viz, 4);
    assert_eq!(code, 0, "{o}{e}");
    assert!(o.contains("strong.png"), "{o}");
    let img = image::open(viz.join("strong.png")).unwrap();
    assert!(
        img.width() > img.height(),
        "{}x{}",
        img.width(),
        img.height()
    );
}
