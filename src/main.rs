use clap::Parser;

/// Mesa's Vulkan loader prints "XDG_RUNTIME_DIR is invalid" twice on machines without a
/// session (containers, CI); give it a private directory so user output stays clean.
#[cfg(unix)]
fn quiet_runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
        let dir = std::env::temp_dir().join(format!("viewcraft-runtime-{uid}"));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        if std::fs::metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == uid) {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
}

#[cfg(not(unix))]
fn quiet_runtime_dir() {}

fn main() -> std::process::ExitCode {
    quiet_runtime_dir();
    let cli = viewcraft::cli::Cli::parse();
    match viewcraft::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("viewcraft: {e}");
            // 130 = interrupted by Ctrl-C (the shell convention), 2 = any other error.
            std::process::ExitCode::from(match e {
                viewcraft::error::Error::Interrupted(_) => 130,
                _ => 2,
            })
        }
    }
}
