//! The binary: device listing, the default smoke job on the CPU path and on the adapter, the
//! no-adapter fallback, and a clear one-line error for a device that does not exist.

use std::process::Command;

fn viewcraft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_viewcraft"))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run viewcraft");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn smoke_on_cpu_path_trains() {
    let (code, out, err) = run(viewcraft().args(["--device", "cpu", "smoke", "--steps", "3"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("on cpu") && out.contains("3 steps"), "{out}");
}

#[test]
fn no_adapter_falls_back_to_cpu_with_one_line() {
    // No adapter exists for this backend on Linux: `auto` must fall back and say how to get one.
    let (code, out, err) = run(viewcraft()
        .env("WGPU_BACKEND", "dx12")
        .env_remove("VIEWCRAFT_DEVICE")
        .args(["smoke", "--steps", "1"]));
    assert_eq!(code, 0, "{out}{err}");
    let line = err
        .lines()
        .find(|l| l.contains("no GPU adapter"))
        .unwrap_or_else(|| panic!("no fallback line in: {err}"));
    assert!(
        line.contains("mesa-vulkan-drivers") && line.contains("CPU path"),
        "{line}"
    );
}

#[test]
fn auto_skips_software_adapters() {
    // With only a software adapter (lavapipe in CI), `auto` runs on the CPU path and says why.
    let list = run(viewcraft().args(["devices", "--json"])).1;
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let hardware = v
        .as_array()
        .unwrap()
        .iter()
        .any(|a| !matches!(a["device_type"].as_str(), Some("Cpu") | Some("Other")));
    let (code, out, err) = run(viewcraft()
        .env("VIEWCRAFT_DEVICE", "auto")
        .args(["smoke", "--steps", "1"]));
    assert_eq!(code, 0, "{out}{err}");
    if !hardware && !v.as_array().unwrap().is_empty() {
        assert!(
            out.contains("on cpu") && err.contains("software adapter"),
            "{out}{err}"
        );
    }
}

#[test]
fn unknown_device_is_a_clear_error() {
    let (code, out, err) = run(viewcraft().args(["--device", "no-such-gpu-xyz", "smoke"]));
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("no-such-gpu-xyz") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn devices_lists_the_adapter() {
    let (code, out, err) = run(viewcraft().args(["devices", "--json"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let list = v.as_array().expect("array");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        assert!(!list.is_empty(), "CI=true but `devices` found no adapter");
    }
    for a in list {
        assert!(
            a["name"].is_string() && a["backend"].is_string() && a["device_type"].is_string(),
            "{a}"
        );
    }
}

#[test]
fn smoke_on_the_adapter_matches_cpu() {
    // Runs on the adapter when there is one (the smoke job compares its first step with the
    // CPU reference and fails on a mismatch).
    let (code, out, err) = run(viewcraft()
        .env("VIEWCRAFT_DEVICE", "auto")
        .args(["smoke", "--steps", "2"]));
    assert_eq!(code, 0, "{out}{err}");
    if !out.contains("on cpu") {
        assert!(out.contains("first step vs CPU reference"), "{out}");
    }
}

#[test]
fn reference_device_runs_the_reference_kernels() {
    let (code, out, err) =
        run(viewcraft().args(["--device", "reference", "smoke", "--steps", "2"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("cpu (reference kernels)") && out.contains("2 steps"),
        "{out}"
    );
    // The fast kernels, checked against the reference kernels on the first step.
    let (code, out, err) = run(viewcraft().args(["--device", "cpu", "smoke", "--steps", "1"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("smoke run on cpu\n") && out.contains("first step vs CPU reference"),
        "{out}"
    );
}

/// `viewcraft … | head`: output into a closed pipe ends the process quietly (SIGPIPE), no
/// panic message.
#[cfg(unix)]
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = viewcraft()
        .args(["--device", "cpu", "smoke", "--steps", "40"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is written
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
}
