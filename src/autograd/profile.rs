//! Where a CPU-path step's time goes, per op (`VIEWCRAFT_PROFILE=1`): the tape adds the wall
//! time of each op's forward (from the previous node to its own record) and of its backward
//! closure. The GPU path times its dispatches instead (`Gpu::take_profile`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// (op, backward?) → (calls, seconds), in first-seen order.
type Table = Vec<((&'static str, bool), u64, f64)>;

static TABLE: Mutex<Table> = Mutex::new(Vec::new());
static FORCED: AtomicBool = AtomicBool::new(false);

/// Whether ops are being timed (read from the environment once).
pub fn enabled() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    FORCED.load(Ordering::Relaxed)
        || *ENV.get_or_init(|| std::env::var("VIEWCRAFT_PROFILE").is_ok_and(|v| v == "1"))
}

/// Time ops whatever the environment says (tests).
pub fn force(on: bool) {
    FORCED.store(on, Ordering::Relaxed);
}

pub(crate) fn add(op: &'static str, backward: bool, t: Duration) {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    match table.iter_mut().find(|e| e.0 == (op, backward)) {
        Some(e) => {
            e.1 += 1;
            e.2 += t.as_secs_f64();
        }
        None => table.push(((op, backward), 1, t.as_secs_f64())),
    }
}

/// Everything timed since the last call: (label, calls, seconds), label `op` or `op backward`.
pub fn take() -> Vec<(String, u64, f64)> {
    let table = std::mem::take(&mut *TABLE.lock().unwrap_or_else(|e| e.into_inner()));
    table
        .into_iter()
        .map(|((op, bw), n, s)| {
            (
                if bw {
                    format!("{op} backward")
                } else {
                    op.to_string()
                },
                n,
                s,
            )
        })
        .collect()
}
