//! Rows of every rank (data parallelism, `dist`): [n, …] on each of N ranks → [N·n, …] in
//! rank order on every rank. The backward is solo-learn's `GatherLayer`: the gradient of
//! the gathered rows summed over the ranks (each rank's loss saw every row), then this
//! rank's rows. One rank: the identity.
//!
//! Exact on every device (a copy through host memory).

use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::tensor::Tensor;

/// Every rank's rows of `x`, in rank order.
pub fn all_gather_rows(x: &Tensor) -> Result<Tensor> {
    let place = crate::dist::place();
    if place.size == 1 {
        return Ok(x.clone());
    }
    let mut shape = x.shape().to_vec();
    shape[0] *= place.size;
    Tensor::from_vec(crate::dist::all_gather(&x.to_vec()?), &shape, &x.device())
}

/// The backward: Σ over the ranks of the gradient of the gathered rows, this rank's rows.
pub fn all_gather_rows_backward(g: &Tensor) -> Result<Tensor> {
    let place = crate::dist::place();
    if place.size == 1 {
        return Ok(g.clone());
    }
    let mut sum = g.to_vec()?;
    crate::dist::all_reduce_sum(&mut sum);
    let rows = g.shape()[0] / place.size;
    let per = sum.len() / g.shape()[0].max(1);
    let mut shape = g.shape().to_vec();
    shape[0] = rows;
    let mine = sum[place.rank * rows * per..(place.rank + 1) * rows * per].to_vec();
    Tensor::from_vec(mine, &shape, &g.device())
}

impl Tape {
    /// [`all_gather_rows`] on the tape, the gradient flowing back to every rank's rows.
    pub fn all_gather_rows(&mut self, x: Var) -> Result<Var> {
        let y = all_gather_rows(self.value(x))?;
        Ok(self.record("all_gather_rows", y, &[x], |g, _| {
            Ok(vec![Some(all_gather_rows_backward(g)?)])
        }))
    }
}
