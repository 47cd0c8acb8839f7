//! The training loop's side of data parallelism (see `dist`): parameters from rank 0 at the
//! start, gradients averaged over the ranks every step (one flat host buffer), BN running
//! statistics from rank 0 after every step (DDP's `broadcast_buffers`).

use crate::autograd::Grads;
use crate::error::Result;
use crate::nn::{Bound, Kind, ParamStore};
use crate::tensor::{Device, Tensor};

/// Overwrite every entry for which `pick` holds with rank 0's values.
fn broadcast_entries(
    store: &mut ParamStore,
    device: &Device,
    pick: impl Fn(&str, Kind) -> bool,
) -> Result<()> {
    let ids: Vec<usize> = (0..store.params.len())
        .filter(|&i| pick(&store.params[i].name, store.params[i].kind))
        .collect();
    let mut flat = Vec::new();
    for &i in &ids {
        flat.extend(store.params[i].value.to_vec()?);
    }
    crate::dist::broadcast(&mut flat);
    let mut at = 0;
    for &i in &ids {
        let p = &mut store.params[i];
        let n = p.value.numel();
        p.value = Tensor::from_vec(flat[at..at + n].to_vec(), p.value.shape(), device)?;
        at += n;
    }
    Ok(())
}

/// Every parameter and buffer of the store as rank 0 has it (the start of a run).
pub fn broadcast_store(
    store: &mut ParamStore,
    momentum: &mut [Option<Tensor>],
    device: &Device,
) -> Result<()> {
    broadcast_entries(store, device, |_, _| true)?;
    let mut flat = Vec::new();
    for m in momentum.iter().flatten() {
        flat.extend(m.to_vec()?);
    }
    crate::dist::broadcast(&mut flat);
    let mut at = 0;
    for m in momentum.iter_mut().flatten() {
        let n = m.numel();
        *m = Tensor::from_vec(flat[at..at + n].to_vec(), m.shape(), device)?;
        at += n;
    }
    Ok(())
}

/// BatchNorm running statistics as rank 0 has them.
pub fn broadcast_bn_stats(store: &mut ParamStore, device: &Device) -> Result<()> {
    broadcast_entries(store, device, |name, kind| {
        kind == Kind::Buffer && (name.ends_with("running_mean") || name.ends_with("running_var"))
    })
}

/// Replace every gradient by its mean over the ranks, and `extras` (step scalars: the stop
/// flag, the loss) by their sums, in one all-reduce.
pub fn average_grads(
    grads: &mut Grads,
    bound: &Bound,
    extras: &mut [f32],
    device: &Device,
) -> Result<()> {
    let vars: Vec<_> = bound
        .iter()
        .map(|(_, v)| v)
        .filter(|&v| grads.get(v).is_some())
        .collect();
    let mut flat = Vec::new();
    for &v in &vars {
        if let Some(g) = grads.get(v) {
            flat.extend(g.to_vec()?);
        }
    }
    let n = flat.len();
    flat.extend_from_slice(extras);
    crate::dist::all_reduce_sum(&mut flat);
    let scale = 1.0 / crate::dist::place().size as f32;
    let mut at = 0;
    for &v in &vars {
        let shape = grads.get(v).map(|g| g.shape().to_vec()).unwrap_or_default();
        let len: usize = shape.iter().product();
        let mean: Vec<f32> = flat[at..at + len].iter().map(|x| x * scale).collect();
        grads.set(v, Tensor::from_vec(mean, &shape, device)?);
        at += len;
    }
    extras.copy_from_slice(&flat[n..]);
    Ok(())
}

/// Whether every rank holds bit-identical parameters and buffers (a SHA-256 of the store's
/// bytes, gathered).
pub fn parameters_identical(store: &ParamStore) -> Result<bool> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in &store.params {
        for v in p.value.to_vec()? {
            h.update(v.to_le_bytes());
        }
    }
    let digest: Vec<f32> = h.finalize().iter().map(|&b| f32::from(b)).collect();
    let all = crate::dist::all_gather(&digest);
    Ok(all.chunks(digest.len()).all(|c| c == &digest[..]))
}
