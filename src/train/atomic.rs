//! Atomic, durable file writes: the bytes go to a temporary file in the destination's
//! directory, which is synced, renamed over the destination, and the directory is synced so
//! the rename itself survives a power loss. A reader sees the old file or the new one, never
//! a torn or empty one; a failure removes the temporary file and names the destination.

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

thread_local! {
    static SYNCS: Cell<usize> = const { Cell::new(0) };
}

/// How many file and directory syncs this thread's atomic writes have completed (two per
/// write where directories can be synced): lets a test see that the data and the rename
/// are made durable, which no reader of the files can observe.
pub fn syncs_on_this_thread() -> usize {
    SYNCS.with(|s| s.get())
}

fn synced() {
    SYNCS.with(|s| s.set(s.get() + 1));
}

/// The destination's directory (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A hidden temporary name beside `path`.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    parent(path).join(format!(".{name}.tmp"))
}

/// Sync a directory so that a rename inside it is durable. Platforms that cannot open a
/// directory as a file (Windows) make renames durable by other means: nothing to do there.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
        synced();
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

fn finish(
    tmp: &Path,
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let run = || -> std::io::Result<()> {
        let mut f = File::create(tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        synced();
        drop(f);
        std::fs::rename(tmp, path)?;
        sync_dir(parent(path))
    };
    run().map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        Error::file(path, format!("cannot write: {e}"))
    })
}

/// Write `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    finish(&temporary(path), path, |f| f.write_all(bytes))
}

/// Copy `src` to `dst` atomically and durably.
pub fn copy_atomic(src: &Path, dst: &Path) -> Result<()> {
    finish(&temporary(dst), dst, |f| {
        std::io::copy(&mut File::open(src)?, f).map(|_| ())
    })
}
