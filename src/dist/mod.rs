//! Data parallelism across processes over MPI (cargo feature `mpi`; Open MPI through the `mpi`
//! crate). `mpirun -np N viewcraft pretrain …` runs N ranks; without a launcher, or without
//! the feature, the process is the only rank and every collective here is the identity.
//!
//! The world lives on the thread that called [`init`] (the CLI's main thread, which runs the
//! training loop): collectives are called from there only. Other threads (the loader's
//! workers, tests running `pretrain` in parallel) see a world of one.
//!
//! All collectives work on host `f32` buffers: a GPU run reads its gradients back once per
//! step to all-reduce them (no vendor-specific peer-to-peer path: wgpu buffers cannot be
//! handed to MPI).

use std::cell::RefCell;

/// This process's place in the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub rank: usize,
    pub size: usize,
    /// Rank among the processes of this node (shared-memory split): picks the node's adapter.
    pub local_rank: usize,
}

impl Place {
    pub const SINGLE: Place = Place {
        rank: 0,
        size: 1,
        local_rank: 0,
    };
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
}

struct World {
    place: Place,
    #[cfg(feature = "mpi")]
    universe: Option<mpi::environment::Universe>,
    #[cfg(feature = "mpi")]
    comm: Option<mpi::topology::SimpleCommunicator>,
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

/// Finalises MPI when dropped (at the end of `main`).
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        WORLD.with(|w| w.borrow_mut().take());
    }
}

/// Whether an MPI launcher started this process (Open MPI, PMI / PMIx launchers).
pub fn launched() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// Join the world: MPI when built with `mpi` and started by a launcher, otherwise one rank.
pub fn init() -> Guard {
    #[cfg(feature = "mpi")]
    if launched() {
        use mpi::topology::Communicator;
        if let Some(universe) = mpi::initialize() {
            let comm = universe.world();
            let local = comm.split_shared(comm.rank());
            let place = Place {
                rank: comm.rank() as usize,
                size: comm.size() as usize,
                local_rank: local.rank() as usize,
            };
            WORLD.with(|w| {
                *w.borrow_mut() = Some(World {
                    place,
                    universe: Some(universe),
                    comm: Some(comm),
                })
            });
        }
    }
    Guard(())
}

/// This thread's place (one rank unless it joined an MPI world).
pub fn place() -> Place {
    WORLD.with(|w| w.borrow().as_ref().map_or(Place::SINGLE, |w| w.place))
}

/// Whether this process is one of several ranks.
pub fn parallel() -> bool {
    place().size > 1
}

#[cfg(feature = "mpi")]
fn with_comm<R>(f: impl FnOnce(&mpi::topology::SimpleCommunicator) -> R) -> Option<R> {
    WORLD.with(|w| w.borrow().as_ref().and_then(|w| w.comm.as_ref().map(f)))
}

/// Element-wise sum over the ranks, in place.
pub fn all_reduce_sum(buf: &mut [f32]) {
    #[cfg(feature = "mpi")]
    if parallel() {
        use mpi::traits::*;
        let send = buf.to_vec();
        with_comm(|c| c.all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum()));
    }
    let _ = buf;
}

/// Rank 0's values on every rank, in place.
pub fn broadcast(buf: &mut [f32]) {
    #[cfg(feature = "mpi")]
    if parallel() {
        use mpi::traits::*;
        with_comm(|c| c.process_at_rank(0).broadcast_into(buf));
    }
    let _ = buf;
}

/// Every rank's `local` (all the same length), in rank order.
pub fn all_gather(local: &[f32]) -> Vec<f32> {
    #[cfg(feature = "mpi")]
    if parallel() {
        use mpi::traits::*;
        let mut out = vec![0f32; local.len() * place().size];
        with_comm(|c| c.all_gather_into(local, &mut out[..]));
        return out;
    }
    local.to_vec()
}

/// Stop every rank with exit status `code` (a failing rank calls this after printing its
/// message, so that no other rank waits forever in a collective). Returns only when this is
/// the only rank.
pub fn abort_all(code: i32) {
    #[cfg(feature = "mpi")]
    if parallel() {
        use mpi::traits::*;
        with_comm(|c| c.abort(code));
    }
    let _ = code;
}

#[cfg(feature = "mpi")]
impl Drop for World {
    fn drop(&mut self) {
        // The communicators go before MPI_Finalize (the universe's drop).
        self.comm.take();
        self.universe.take();
    }
}

/// This rank's contiguous share of `n` items: [r·c, min((r+1)·c, n)) with c = ⌈n/N⌉.
pub fn shard(n: usize) -> std::ops::Range<usize> {
    let p = place();
    let c = n.div_ceil(p.size.max(1));
    (p.rank * c).min(n)..((p.rank + 1) * c).min(n)
}

/// Rows of `row_len` values for this rank's [`shard`] of `n` items, gathered from every rank
/// into item order ([n · row_len]).
pub fn gather_shards(local: &[f32], row_len: usize, n: usize) -> Vec<f32> {
    let p = place();
    if p.size <= 1 {
        return local.to_vec();
    }
    let c = n.div_ceil(p.size);
    let mut padded = local.to_vec();
    padded.resize(c * row_len, 0.0);
    let mut all = all_gather(&padded);
    all.truncate(n * row_len);
    all
}

/// Rank 0's text on every rank (paths, decisions made on rank 0).
pub fn broadcast_text(text: &str) -> String {
    if !parallel() {
        return text.to_string();
    }
    let mut len = [text.len() as f32];
    broadcast(&mut len);
    // Bytes as f32 values (0..=255 are exact).
    let mut bytes: Vec<f32> = if place().is_root() {
        text.bytes().map(f32::from).collect()
    } else {
        vec![0.0; len[0] as usize]
    };
    broadcast(&mut bytes);
    String::from_utf8(bytes.iter().map(|&b| b as u8).collect()).unwrap_or_default()
}
