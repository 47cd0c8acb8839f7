//! SSL losses as tape functions (their gradients come from the pieces).
//!
//! - NT-Xent (SimCLR): z = normalize([z1; z2]) (2N rows), logits = z·zᵀ/τ with the
//!   self-similarity removed; row i's positive is its other view. The denominator includes
//!   the positive and excludes only the self term. loss = loss_scale · mean_i CE_i, with
//!   loss_scale = τ/base_τ (0.5/0.07) in the reference configs.
//! - MoCo InfoNCE: q, k normalised; logits_i = [q_i·k_i, q_i·queue] / T; CE with target 0.
//!   k is detached, the queue is constant. The queue is stored one key per row ([K, dim]) so
//!   enqueueing is a row copy.
//! - CLSA: [`clsa_loss`] (weak InfoNCE over all in-batch keys + the queue, DDM of the strong
//!   queries against the weak ones).
//! - BYOL / SimSiam: scale · (mean cos(p1, z2) + mean cos(p2, z1)) with z detached
//!   (scale −2 for BYOL, −0.5 for SimSiam).
//!
//! - Hard negatives (saliency-guided masking, SPEC B.3): embeddings t_m of masked views, each
//!   [N, dim] (one per image: row i's own negative) or [1, dim] (the reference's quirk: one
//!   negative every row takes), normalised and detached, become extra columns α·(q·t)/T of
//!   the logits (α multiplies the logit, not the loss). For NT-Xent both views of image i
//!   take image i's negatives.
//!
//! The contrastive losses use the fused `info_nce` op: the similarity matrix and its gradient
//! are the only N×M matrices (masking, temperature and softmax happen inside the kernels).

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::cross_entropy::{HardNegatives, NceMode};
use crate::tensor::Tensor;

pub fn nt_xent(tape: &mut Tape, z1: Var, z2: Var, tau: f32, loss_scale: f32) -> Result<Var> {
    nt_xent_hard(tape, z1, z2, &[], 1.0, tau, loss_scale)
}

/// The hard-negative rule of embeddings `negatives` (all [N, dim] or all [1, dim]).
fn hard_rule(
    tape: &Tape,
    negatives: &[Var],
    alpha: f32,
    loss: &'static str,
) -> Result<HardNegatives> {
    let rows: Vec<usize> = negatives
        .iter()
        .map(|&t| tape.value(t).shape()[0])
        .collect();
    if rows.windows(2).any(|w| w[0] != w[1]) {
        return Err(Error::shape(
            loss,
            format!("hard negatives of {rows:?} rows (all must have the same)"),
        ));
    }
    Ok(HardNegatives {
        count: negatives.len(),
        per_sample: rows.first().is_none_or(|&r| r != 1),
        alpha,
    })
}

/// Normalised, detached hard-negative rows appended to `keys`.
fn with_negatives(tape: &mut Tape, keys: Vec<Var>, negatives: &[Var]) -> Result<Var> {
    let mut all = keys;
    for &t in negatives {
        let t = tape.detach(t);
        all.push(tape.l2_normalize(t)?);
    }
    tape.concat(&all)
}

/// NT-Xent with hard negatives `negatives` (each [N, dim] per image, or [1, dim] shared) whose
/// logits are multiplied by `alpha`.
pub fn nt_xent_hard(
    tape: &mut Tape,
    z1: Var,
    z2: Var,
    negatives: &[Var],
    alpha: f32,
    tau: f32,
    loss_scale: f32,
) -> Result<Var> {
    if tape.value(z2).shape() != tape.value(z1).shape() {
        return Err(Error::shape(
            "nt_xent",
            format!(
                "views {:?} and {:?} differ",
                tape.value(z1).shape(),
                tape.value(z2).shape()
            ),
        ));
    }
    let hard = hard_rule(tape, negatives, alpha, "nt_xent")?;
    let z = tape.concat(&[z1, z2])?;
    let z = tape.l2_normalize(z)?;
    let keys = if negatives.is_empty() {
        z
    } else {
        with_negatives(tape, vec![z], negatives)?
    };
    let sim = tape.matmul_t(z, keys, false, true)?;
    let rows = tape.info_nce_hard(sim, NceMode::NtXent, 1.0 / tau, hard)?;
    let ce = tape.mean(rows)?;
    tape.scale(ce, loss_scale)
}

/// NT-Xent of a data-parallel run with the negatives of every rank (SimCLR's `gather`, as
/// solo-learn): this rank's rows [z1; z2] (b images each) against the gathered
/// [Z1; Z2] of all G = N·b images, the gradient flowing back through the gather to every
/// rank's embeddings; hard negatives as [`nt_xent_hard`] (this rank's, per image). The mean
/// over this rank's rows; averaged over the ranks it is the one-process loss over the global
/// batch. One rank: [`nt_xent_hard`].
pub fn nt_xent_gathered(
    tape: &mut Tape,
    z1: Var,
    z2: Var,
    negatives: &[Var],
    alpha: f32,
    tau: f32,
    loss_scale: f32,
) -> Result<Var> {
    let place = crate::dist::place();
    if place.size == 1 {
        return nt_xent_hard(tape, z1, z2, negatives, alpha, tau, loss_scale);
    }
    let hard = hard_rule(tape, negatives, alpha, "nt_xent")?;
    let b = tape.value(z1).shape()[0];
    let (z1, z2) = (tape.l2_normalize(z1)?, tape.l2_normalize(z2)?);
    let (g1, g2) = (tape.all_gather_rows(z1)?, tape.all_gather_rows(z2)?);
    let rows = tape.concat(&[z1, z2])?;
    let keys = with_negatives(tape, vec![g1, g2], negatives)?;
    let sim = tape.matmul_t(rows, keys, false, true)?;
    let mode = NceMode::NtXentShard {
        offset: place.rank * b,
        global: place.size * b,
    };
    let rows = tape.info_nce_hard(sim, mode, 1.0 / tau, hard)?;
    let ce = tape.mean(rows)?;
    tape.scale(ce, loss_scale)
}

/// `queue` holds K normalised keys, one per row ([K, dim]).
pub fn moco_infonce(tape: &mut Tape, q: Var, k: Var, queue: &Tensor, t: f32) -> Result<Var> {
    moco_infonce_hard(tape, q, k, queue, &[], 1.0, t)
}

/// MoCo InfoNCE with hard negatives `negatives` (key-encoder embeddings, each [N, dim] per
/// image or [1, dim] shared) whose logits are multiplied by `alpha`.
pub fn moco_infonce_hard(
    tape: &mut Tape,
    q: Var,
    k: Var,
    queue: &Tensor,
    negatives: &[Var],
    alpha: f32,
    t: f32,
) -> Result<Var> {
    let hard = hard_rule(tape, negatives, alpha, "moco_infonce")?;
    let n = tape.value(q).shape()[0];
    let q = tape.l2_normalize(q)?;
    let k = tape.detach(k);
    let k = tape.l2_normalize(k)?;
    let qv = tape.input(queue.clone());
    // [k_0..k_{N-1}; queue] as rows; the fused op drops the other rows' keys, so each row's
    // softmax is over exactly [q·k_i, q·queue].
    let keys = with_negatives(tape, vec![k, qv], negatives)?;
    let sim = tape.matmul_t(q, keys, false, true)?;
    let rows = tape.info_nce_hard(sim, NceMode::Moco { in_batch: n }, 1.0 / t, hard)?;
    tape.mean(rows)
}

/// CLSA (SPEC B.4): keys = [the global batch's keys (every rank's, `keys` [B, dim]) | queue],
/// both normalised and constant. Every weak query (this rank's b rows, the first at global
/// index `offset`): CE over q_w·keysᵀ/T with its own key the positive and the other keys extra
/// negatives (`NceMode::Keys`); every (weak, strong) pair: DDM of the strong row against the
/// weak one at T₂ (`Tape::ddm`, the weak side detached). Returns (Σ CE + α·Σ DDM, Σ DDM), each
/// term the mean over the rows.
pub fn clsa_loss(
    tape: &mut Tape,
    weak: &[Var],
    strong: &[Var],
    (keys, offset): (&Tensor, usize),
    queue: &Tensor,
    (t, t2, alpha): (f32, f32, f32),
) -> Result<(Var, Var)> {
    if weak.is_empty() || strong.is_empty() {
        return Err(Error::shape(
            "clsa_loss",
            format!(
                "needs at least one weak and one strong query, got {} and {}",
                weak.len(),
                strong.len()
            ),
        ));
    }
    let n = keys.shape()[0];
    let k = tape.input(keys.clone());
    let k = tape.l2_normalize(k)?;
    let qv = tape.input(queue.clone());
    let keys = tape.concat(&[k, qv])?;
    let sims = |tape: &mut Tape, qs: &[Var]| -> Result<Vec<Var>> {
        qs.iter()
            .map(|&q| {
                let q = tape.l2_normalize(q)?;
                tape.matmul_t(q, keys, false, true)
            })
            .collect()
    };
    let (sw, ss) = (sims(tape, weak)?, sims(tape, strong)?);
    let mut ce = Vec::with_capacity(sw.len());
    for &s in &sw {
        let rows = tape.info_nce(
            s,
            NceMode::Keys {
                in_batch: n,
                offset,
            },
            1.0 / t,
        )?;
        ce.push(tape.mean(rows)?);
    }
    let mut ddm = Vec::with_capacity(sw.len() * ss.len());
    for &w in &sw {
        for &s in &ss {
            let rows = tape.ddm(w, s, 1.0 / t2)?;
            ddm.push(tape.mean(rows)?);
        }
    }
    let sum = |tape: &mut Tape, v: &[Var]| -> Result<Var> {
        let mut acc = v[0];
        for &x in &v[1..] {
            acc = tape.add(acc, x)?;
        }
        Ok(acc)
    };
    let ce = sum(tape, &ce)?;
    let ddm = sum(tape, &ddm)?;
    let weighted = tape.scale(ddm, alpha)?;
    Ok((tape.add(ce, weighted)?, ddm))
}

/// scale · (mean cos(p1, stopgrad z2) + mean cos(p2, stopgrad z1)).
pub fn symmetric_neg_cosine(
    tape: &mut Tape,
    p1: Var,
    p2: Var,
    z1: Var,
    z2: Var,
    scale: f32,
) -> Result<Var> {
    let (z1, z2) = (tape.detach(z1), tape.detach(z2));
    let a = tape.cosine_similarity(p1, z2)?;
    let a = tape.mean(a)?;
    let b = tape.cosine_similarity(p2, z1)?;
    let b = tape.mean(b)?;
    let s = tape.add(a, b)?;
    tape.scale(s, scale)
}
