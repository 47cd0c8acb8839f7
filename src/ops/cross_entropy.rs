//! Fused log-softmax + cross-entropy over rows of logits [N, K] with integer labels (stored
//! as f32 class indices).
//!
//! loss_i = logsumexp(x_i) − x_i,y_i; mean over rows for `cross_entropy` (PyTorch's default).
//! gx_ij = (softmax(x_i)_j − [j = y_i])·g_i.
//!
//! Tolerance GPU vs CPU: exp/log of O(10) logits over K terms: atol 1e-5, rtol 1e-5.

use super::{cpu, u, Real, TResult};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::gpu::Kernel;
use crate::tensor::{same_device, Device, Tensor};

const FWD: Kernel = Kernel::new("cross_entropy", "cross_entropy_forward");
const BWD: Kernel = Kernel::new("cross_entropy", "cross_entropy_backward");

fn lse<T: Real>(row: &[T]) -> T {
    let m = row.iter().copied().fold(T::neg_infinity(), T::max);
    row.iter().map(|&v| (v - m).exp()).sum::<T>().ln() + m
}

/// Per-row losses.
pub fn forward_ref<T: Real>(x: &[T], labels: &[usize], n: usize, k: usize) -> Vec<T> {
    (0..n)
        .map(|i| lse(&x[i * k..(i + 1) * k]) - x[i * k + labels[i]])
        .collect()
}

/// Gradient of Σ_i g_i·loss_i.
pub fn backward_ref<T: Real>(x: &[T], labels: &[usize], g: &[T], n: usize, k: usize) -> Vec<T> {
    let mut gx = vec![T::zero(); n * k];
    for i in 0..n {
        let row = &x[i * k..(i + 1) * k];
        let l = lse(row);
        for j in 0..k {
            let onehot = if j == labels[i] { T::one() } else { T::zero() };
            gx[i * k + j] = ((row[j] - l).exp() - onehot) * g[i];
        }
    }
    gx
}

/// Validate shapes and label values; returns (N, K).
fn check(logits: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
    let &[n, k] = logits.shape() else {
        return Err(Error::shape(
            "cross_entropy",
            format!("expects logits [N, K], got {:?}", logits.shape()),
        ));
    };
    if labels.shape() != [n] {
        return Err(Error::shape(
            "cross_entropy",
            format!(
                "labels of shape {:?} for logits {:?}",
                labels.shape(),
                logits.shape()
            ),
        ));
    }
    if let Some(l) = labels.cpu_data() {
        if let Some(bad) = l
            .iter()
            .find(|&&v| v < 0.0 || v as usize >= k || v.fract() != 0.0)
        {
            return Err(Error::shape(
                "cross_entropy",
                format!("label {bad} outside 0..{k}"),
            ));
        }
    }
    Ok((n, k))
}

fn labels_usize(labels: &Tensor) -> Result<Vec<usize>> {
    Ok(labels.to_vec()?.into_iter().map(|v| v as usize).collect())
}

/// Per-row losses [N].
pub fn cross_entropy_rows(logits: &Tensor, labels: &Tensor) -> TResult {
    let (n, k) = check(logits, labels)?;
    match same_device("cross_entropy", &[logits, labels])? {
        Device::Cpu => Ok(cpu(
            forward_ref(
                logits.cpu_data().unwrap_or_default(),
                &labels_usize(labels)?,
                n,
                k,
            ),
            &[n],
        )),
        Device::Gpu(g) => Ok(super::row_kernel(
            &g,
            FWD,
            &[logits, labels],
            &[u(n), u(k), 0, 0],
            n,
            &[n],
        )),
    }
}

/// Gradient of Σ_i g_i·loss_i with respect to the logits.
pub fn cross_entropy_rows_backward(logits: &Tensor, labels: &Tensor, g: &Tensor) -> TResult {
    let (n, k) = check(logits, labels)?;
    match same_device("cross_entropy_backward", &[logits, labels, g])? {
        Device::Cpu => Ok(cpu(
            backward_ref(
                logits.cpu_data().unwrap_or_default(),
                &labels_usize(labels)?,
                g.cpu_data().unwrap_or_default(),
                n,
                k,
            ),
            &[n, k],
        )),
        Device::Gpu(gpu) => Ok(super::row_kernel(
            &gpu,
            BWD,
            &[logits, labels, g],
            &[u(n), u(k), 0, 0],
            n,
            &[n, k],
        )),
    }
}

impl Tape {
    /// Per-row cross-entropy [N]; `labels` is a constant tensor of class indices.
    pub fn cross_entropy_rows(&mut self, logits: Var, labels: &Tensor) -> Result<Var> {
        let (lv, lab) = (self.value(logits).clone(), labels.clone());
        let y = cross_entropy_rows(&lv, &lab)?;
        Ok(self.record("cross_entropy", y, &[logits], move |g, _| {
            Ok(vec![Some(cross_entropy_rows_backward(&lv, &lab, g)?)])
        }))
    }

    /// Mean cross-entropy (a one-element tensor).
    pub fn cross_entropy(&mut self, logits: Var, labels: &Tensor) -> Result<Var> {
        let rows = self.cross_entropy_rows(logits, labels)?;
        self.mean(rows)
    }
}

/// Which entries of a contrastive similarity matrix take part, and which is the positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NceMode {
    /// NT-Xent over 2B embeddings (sim [2B, 2B]): the self-similarity is removed, the positive
    /// of row i is its other view (i + B) mod 2B.
    NtXent,
    /// MoCo (sim [B, B + K], columns = [in-batch keys | queue]): other rows' keys are removed,
    /// the positive of row i is column i.
    Moco { in_batch: usize },
    /// CLSA's weak term (sim [b, B + K], columns = [the B in-batch keys of every rank |
    /// queue], rows this rank's b queries): every entry takes part — the other keys are extra
    /// negatives — and the positive of row i is column `offset + i`.
    Keys { in_batch: usize, offset: usize },
    /// NT-Xent over every rank's embeddings (sim [2b, 2G]: rows this rank's b images, [view 1
    /// | view 2]; columns all G images, [view 1 | view 2]): row i < b is global row offset + i,
    /// row b + i is G + offset + i; the self-similarity is removed, the positive is the other
    /// view's column.
    NtXentShard { offset: usize, global: usize },
}

/// Hard negatives in the last columns of a contrastive similarity matrix (saliency-guided
/// masking, SPEC B.3): `count` blocks, each either one column per image (`per_sample`: row
/// i takes only the column of its own image, i mod images, where images = N for MoCo and
/// N/2 for NT-Xent) or a single column every row takes (the reference's batch-negative
/// quirk). Their logits are multiplied by `alpha` (which multiplies the logit, not the
/// loss: a sharper temperature for those negatives).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HardNegatives {
    pub count: usize,
    pub per_sample: bool,
    pub alpha: f32,
}

impl HardNegatives {
    pub const NONE: HardNegatives = HardNegatives {
        count: 0,
        per_sample: true,
        alpha: 1.0,
    };
}

/// The masking, label and logit factor of every entry, for a similarity matrix [n, m].
#[derive(Clone, Copy, Debug)]
struct NceRule {
    mode: NceMode,
    n: usize,
    m: usize,
    hard: HardNegatives,
}

impl NceRule {
    /// Images per block of per-sample columns (0: one shared column per block).
    fn images(&self) -> usize {
        match (self.hard.per_sample, self.mode) {
            (false, _) => 0,
            (true, NceMode::NtXent | NceMode::NtXentShard { .. }) => self.n / 2,
            (true, NceMode::Moco { .. } | NceMode::Keys { .. }) => self.n,
        }
    }
    fn hard_cols(&self) -> usize {
        self.hard.count * self.images().max(1)
    }
    fn first_hard(&self) -> usize {
        self.m - self.hard_cols()
    }
    fn masked(&self, i: usize, j: usize) -> bool {
        if j >= self.first_hard() {
            let images = self.images();
            return images > 0 && (j - self.first_hard()) % images != i % images;
        }
        match self.mode {
            NceMode::NtXent => j == i,
            NceMode::Moco { in_batch } => j < in_batch && j != i,
            NceMode::Keys { .. } => false,
            NceMode::NtXentShard { .. } => j == self.row(i),
        }
    }
    /// The global row of local row `i` (NtXentShard; `i` otherwise).
    fn row(&self, i: usize) -> usize {
        match self.mode {
            NceMode::NtXentShard { offset, global } => {
                let half = self.n / 2;
                if i < half {
                    offset + i
                } else {
                    global + offset + (i - half)
                }
            }
            _ => i,
        }
    }
    fn label(&self, i: usize) -> usize {
        match self.mode {
            NceMode::NtXent => (i + self.n / 2) % self.n,
            NceMode::Moco { .. } => i,
            NceMode::Keys { offset, .. } => offset + i,
            NceMode::NtXentShard { global, .. } => (self.row(i) + global) % (2 * global),
        }
    }
    /// The logit factor of column j (α for hard negatives).
    fn factor<T: Real>(&self, j: usize) -> T {
        if j >= self.first_hard() {
            T::of(self.hard.alpha as f64)
        } else {
            T::one()
        }
    }
    /// Kernel parameters: [n, m, scale, mode, in_batch, hard_cols, images, alpha, offset,
    /// global_half, 0, 0].
    fn params(&self, scale: f32) -> [u32; 12] {
        let (code, nb, offset, global) = match self.mode {
            NceMode::NtXent => (0, 0, 0, 0),
            NceMode::Moco { in_batch } => (1, in_batch, 0, 0),
            NceMode::Keys { in_batch, offset } => (2, in_batch, offset, 0),
            NceMode::NtXentShard { offset, global } => (3, 0, offset, global),
        };
        [
            u(self.n),
            u(self.m),
            scale.to_bits(),
            code,
            u(nb),
            u(self.hard_cols()),
            u(self.images()),
            self.hard.alpha.to_bits(),
            u(offset),
            u(global),
            0,
            0,
        ]
    }
}

fn nce_lse<T: Real>(row: &[T], i: usize, rule: &NceRule, scale: T) -> T {
    let vals = || {
        row.iter()
            .enumerate()
            .filter(|(j, _)| !rule.masked(i, *j))
            .map(|(j, &v)| scale * rule.factor::<T>(j) * v)
    };
    let m = vals().fold(T::neg_infinity(), T::max);
    vals().map(|v| (v - m).exp()).sum::<T>().ln() + m
}

/// Per-row contrastive losses of `sim` [N, M].
pub fn info_nce_ref<T: Real>(sim: &[T], n: usize, m: usize, mode: NceMode, scale: T) -> Vec<T> {
    info_nce_hard_ref(sim, n, m, mode, scale, HardNegatives::NONE)
}

/// Per-row contrastive losses of `sim` [N, M] whose last columns are hard negatives.
pub fn info_nce_hard_ref<T: Real>(
    sim: &[T],
    n: usize,
    m: usize,
    mode: NceMode,
    scale: T,
    hard: HardNegatives,
) -> Vec<T> {
    let rule = NceRule { mode, n, m, hard };
    (0..n)
        .map(|i| {
            nce_lse(&sim[i * m..(i + 1) * m], i, &rule, scale) - scale * sim[i * m + rule.label(i)]
        })
        .collect()
}

/// Gradient of Σ_i g_i·loss_i with respect to `sim`.
pub fn info_nce_backward_ref<T: Real>(
    sim: &[T],
    g: &[T],
    n: usize,
    m: usize,
    mode: NceMode,
    scale: T,
) -> Vec<T> {
    info_nce_hard_backward_ref(sim, g, n, m, mode, scale, HardNegatives::NONE)
}

/// Gradient of Σ_i g_i·loss_i with respect to `sim`, hard negatives in the last columns:
/// ∂/∂sim_ij = (softmax_ij − [j = label_i])·g_i·scale·factor_j on unmasked entries.
pub fn info_nce_hard_backward_ref<T: Real>(
    sim: &[T],
    g: &[T],
    n: usize,
    m: usize,
    mode: NceMode,
    scale: T,
    hard: HardNegatives,
) -> Vec<T> {
    let rule = NceRule { mode, n, m, hard };
    let mut out = vec![T::zero(); n * m];
    for i in 0..n {
        let row = &sim[i * m..(i + 1) * m];
        let lse = nce_lse(row, i, &rule, scale);
        for j in 0..m {
            if !rule.masked(i, j) {
                let onehot = if j == rule.label(i) {
                    T::one()
                } else {
                    T::zero()
                };
                let f = rule.factor::<T>(j);
                out[i * m + j] = ((scale * f * row[j] - lse).exp() - onehot) * g[i] * scale * f;
            }
        }
    }
    out
}

// A workgroup per row (tree reductions): rows are long (MoCo: B + K), and a thread per row
// left most of a GPU idle (8 workgroups for MoCo's 512 rows).
const NCE_FWD: Kernel = Kernel::new("info_nce", "info_nce_forward");
const NCE_BWD: Kernel = Kernel::new("info_nce", "info_nce_backward");

fn nce_check(sim: &Tensor, mode: NceMode, hard: HardNegatives) -> Result<NceRule> {
    let &[n, m] = sim.shape() else {
        return Err(Error::shape(
            "info_nce",
            format!("expects a similarity matrix [N, M], got {:?}", sim.shape()),
        ));
    };
    let rule = NceRule { mode, n, m, hard };
    let hard_cols = hard.count * rule.images().max(1);
    let ok = hard_cols < m
        && hard.alpha.is_finite()
        && match mode {
            NceMode::NtXent => m - hard_cols == n && n % 2 == 0,
            NceMode::Moco { in_batch } => in_batch == n && m - hard_cols > n,
            NceMode::Keys { in_batch, offset } => {
                offset + n <= in_batch && m - hard_cols > in_batch
            }
            NceMode::NtXentShard { offset, global } => {
                n % 2 == 0 && offset + n / 2 <= global && m - hard_cols == 2 * global
            }
        };
    if !ok {
        return Err(Error::shape(
            "info_nce",
            format!(
                "similarity {:?} does not fit {mode:?} with {hard:?}",
                sim.shape()
            ),
        ));
    }
    Ok(rule)
}

/// Per-row losses [N] of the scaled, masked similarity matrix.
pub fn info_nce(sim: &Tensor, mode: NceMode, scale: f32) -> TResult {
    info_nce_hard(sim, mode, scale, HardNegatives::NONE)
}

/// [`info_nce`] with hard negatives in the last columns.
pub fn info_nce_hard(sim: &Tensor, mode: NceMode, scale: f32, hard: HardNegatives) -> TResult {
    let rule = nce_check(sim, mode, hard)?;
    let (n, m) = (rule.n, rule.m);
    match sim.device() {
        Device::Cpu => Ok(cpu(
            info_nce_hard_ref(sim.cpu_data().unwrap_or_default(), n, m, mode, scale, hard),
            &[n],
        )),
        Device::Gpu(g) => Ok(super::row_kernel(
            &g,
            NCE_FWD,
            &[sim],
            &rule.params(scale),
            n,
            &[n],
        )),
    }
}

pub fn info_nce_backward(sim: &Tensor, grad: &Tensor, mode: NceMode, scale: f32) -> TResult {
    info_nce_hard_backward(sim, grad, mode, scale, HardNegatives::NONE)
}

pub fn info_nce_hard_backward(
    sim: &Tensor,
    grad: &Tensor,
    mode: NceMode,
    scale: f32,
    hard: HardNegatives,
) -> TResult {
    let rule = nce_check(sim, mode, hard)?;
    let (n, m) = (rule.n, rule.m);
    match same_device("info_nce_backward", &[sim, grad])? {
        Device::Cpu => Ok(cpu(
            info_nce_hard_backward_ref(
                sim.cpu_data().unwrap_or_default(),
                grad.cpu_data().unwrap_or_default(),
                n,
                m,
                mode,
                scale,
                hard,
            ),
            &[n, m],
        )),
        Device::Gpu(g) => Ok(super::row_kernel(
            &g,
            NCE_BWD,
            &[sim, grad],
            &rule.params(scale),
            n,
            &[n, m],
        )),
    }
}

impl Tape {
    /// Per-row InfoNCE / NT-Xent losses of a similarity matrix, fused: the masking, the
    /// temperature (`scale` = 1/τ) and the softmax happen inside one kernel each way, so the
    /// similarity matrix and its gradient are the only N×M matrices.
    pub fn info_nce(&mut self, sim: Var, mode: NceMode, scale: f32) -> Result<Var> {
        self.info_nce_hard(sim, mode, scale, HardNegatives::NONE)
    }

    /// [`Tape::info_nce`] with hard negatives in the last columns of `sim`.
    pub fn info_nce_hard(
        &mut self,
        sim: Var,
        mode: NceMode,
        scale: f32,
        hard: HardNegatives,
    ) -> Result<Var> {
        let sv = self.value(sim).clone();
        let y = info_nce_hard(&sv, mode, scale, hard)?;
        Ok(self.record("info_nce", y, &[sim], move |g, _| {
            Ok(vec![Some(info_nce_hard_backward(
                &sv, g, mode, scale, hard,
            )?)])
        }))
    }
}
