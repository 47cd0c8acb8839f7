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

/// The CPU path allocates and frees tensors of many megabytes per step. glibc serves those
/// with fresh `mmap`s (and trims its heap when they are freed), so every step page-faults
/// and zeroes hundreds of megabytes anew; keeping them in the heap makes the step reuse its
/// memory (the process then holds its peak footprint).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Output into a closed pipe (`viewcraft … | head`) ends the process quietly, as other
/// command-line tools do, instead of a panic from `println!` (Rust ignores SIGPIPE).
#[cfg(unix)]
fn default_sigpipe() {
    // SAFETY: resets one signal's disposition before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn default_sigpipe() {}

fn main() -> std::process::ExitCode {
    default_sigpipe();
    keep_freed_memory();
    quiet_runtime_dir();
    // MPI (feature `mpi`, under a launcher): finalised when this guard drops.
    let _world = viewcraft::dist::init();
    if viewcraft::dist::parallel() {
        // A panic on one rank (a bug) must not leave the others waiting in a collective.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            viewcraft::dist::abort_all(101);
        }));
    }
    let cli = viewcraft::cli::Cli::parse();
    match viewcraft::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let place = viewcraft::dist::place();
            if place.size > 1 {
                eprintln!("viewcraft (rank {} of {}): {e}", place.rank, place.size);
                // Every rank stops, whichever collective the others wait in; a Ctrl-C reaches
                // all ranks at the same step and ends them normally.
                if !matches!(e, viewcraft::error::Error::Interrupted(_)) {
                    viewcraft::dist::abort_all(2);
                }
            } else {
                eprintln!("viewcraft: {e}");
            }
            // 130 = interrupted by Ctrl-C (the shell convention), 2 = any other error.
            std::process::ExitCode::from(match e {
                viewcraft::error::Error::Interrupted(_) => 130,
                _ => 2,
            })
        }
    }
}
