//! Shape ops: reshape/flatten (free: storage is shared), and concat / slice along the batch
//! (first) dimension, which are contiguous copies (recorded buffer copies on the GPU).
//!
//! - concat: y = [a; b; ...]; each input's gradient is its slice of gy.
//! - slice_batch: y = x[start..start+len]; gx = gy placed into zeros.
//!
//! Exact on every device (copies only).

use super::{buf, cpu};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{same_device, Device, Tensor};

/// Rows `start..start+len` of the first dimension.
pub fn slice_batch(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let n = *x
        .shape()
        .first()
        .ok_or_else(|| Error::shape("slice_batch", "scalar input"))?;
    if start + len > n {
        return Err(Error::shape(
            "slice_batch",
            format!(
                "rows {start}..{} of a tensor of shape {:?}",
                start + len,
                x.shape()
            ),
        ));
    }
    let row = x.numel() / n.max(1);
    let mut shape = x.shape().to_vec();
    shape[0] = len;
    match x.device() {
        Device::Cpu => Ok(cpu(
            x.cpu_data().unwrap_or_default()[start * row..(start + len) * row].to_vec(),
            &shape,
        )),
        Device::Gpu(g) => {
            let out = g.alloc(len * row);
            g.copy(buf(x), start * row, &out, 0, len * row);
            Ok(Tensor::from_gpu(&g, out, &shape))
        }
    }
}

/// Concatenate along the first dimension; the other dimensions must agree.
pub fn concat(xs: &[&Tensor]) -> Result<Tensor> {
    let first = xs
        .first()
        .ok_or_else(|| Error::shape("concat", "no inputs"))?;
    let dev = same_device("concat", xs)?;
    let tail = &first.shape()[1..];
    for x in xs {
        if x.rank() == 0 || &x.shape()[1..] != tail {
            return Err(Error::shape(
                "concat",
                format!(
                    "shapes {:?} and {:?} differ beyond the batch dimension",
                    first.shape(),
                    x.shape()
                ),
            ));
        }
    }
    let mut shape = first.shape().to_vec();
    shape[0] = xs.iter().map(|x| x.shape()[0]).sum();
    match dev {
        Device::Cpu => {
            let mut v = Vec::with_capacity(shape.iter().product());
            for x in xs {
                v.extend_from_slice(x.cpu_data().unwrap_or_default());
            }
            Ok(cpu(v, &shape))
        }
        Device::Gpu(g) => {
            let out = g.alloc(shape.iter().product());
            let mut off = 0;
            for x in xs {
                g.copy(buf(x), 0, &out, off, x.numel());
                off += x.numel();
            }
            Ok(Tensor::from_gpu(&g, out, &shape))
        }
    }
}

/// `g` placed at rows `start..` of a zero tensor of `shape`.
fn pad_batch(g: &Tensor, start: usize, shape: &[usize]) -> Result<Tensor> {
    let row: usize = shape[1..].iter().product();
    match g.device() {
        Device::Cpu => {
            let mut v = vec![0.0; shape.iter().product()];
            v[start * row..start * row + g.numel()]
                .copy_from_slice(g.cpu_data().unwrap_or_default());
            Ok(cpu(v, shape))
        }
        Device::Gpu(gpu) => {
            let z = Tensor::zeros(shape, &Device::Gpu(gpu.clone()))?;
            gpu.copy(buf(g), 0, buf(&z), start * row, g.numel());
            Ok(z)
        }
    }
}

impl Tape {
    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Result<Var> {
        let old = self.value(x).shape().to_vec();
        let y = self.value(x).reshape(shape)?;
        Ok(self.record("reshape", y, &[x], move |gy, _| {
            Ok(vec![Some(gy.reshape(&old)?)])
        }))
    }

    /// [N, ...] → [N, prod(...)].
    pub fn flatten(&mut self, x: Var) -> Result<Var> {
        let s = self.value(x).shape();
        let n = *s
            .first()
            .ok_or_else(|| Error::shape("flatten", "scalar input"))?;
        let rest = s[1..].iter().product();
        self.reshape(x, &[n, rest])
    }

    pub fn concat(&mut self, xs: &[Var]) -> Result<Var> {
        let vals: Vec<Tensor> = xs.iter().map(|&v| self.value(v).clone()).collect();
        let y = concat(&vals.iter().collect::<Vec<_>>())?;
        let sizes: Vec<usize> = vals.iter().map(|v| v.shape()[0]).collect();
        Ok(self.record("concat", y, xs, move |gy, needs| {
            let mut start = 0;
            let mut out = Vec::new();
            for (n, &need) in sizes.iter().zip(needs) {
                out.push(need.then(|| slice_batch(gy, start, *n)).transpose()?);
                start += n;
            }
            Ok(out)
        }))
    }

    pub fn slice_batch(&mut self, x: Var, start: usize, len: usize) -> Result<Var> {
        let shape = self.value(x).shape().to_vec();
        let y = slice_batch(self.value(x), start, len)?;
        Ok(self.record("slice_batch", y, &[x], move |gy, _| {
            Ok(vec![Some(pad_batch(gy, start, &shape)?)])
        }))
    }

    /// Split along the batch into pieces of the given sizes.
    pub fn split(&mut self, x: Var, sizes: &[usize]) -> Result<Vec<Var>> {
        let mut start = 0;
        let mut out = Vec::new();
        for &n in sizes {
            out.push(self.slice_batch(x, start, n)?);
            start += n;
        }
        Ok(out)
    }
}

/// Rows of `x` (first dimension) in the order `perm` (a permutation): y[i] = x[perm[i]].
/// Its gradient applies the inverse permutation. On the GPU: one recorded copy per row.
pub fn permute_rows(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let n = *x
        .shape()
        .first()
        .ok_or_else(|| Error::shape("permute_rows", "scalar input"))?;
    let mut seen = vec![false; n];
    if perm.len() != n
        || perm
            .iter()
            .any(|&p| p >= n || std::mem::replace(&mut seen[p], true))
    {
        return Err(Error::shape(
            "permute_rows",
            format!(
                "{perm:?} is not a permutation of the {n} rows of {:?}",
                x.shape()
            ),
        ));
    }
    let row = x.numel() / n.max(1);
    match x.device() {
        Device::Cpu => {
            let v = x.cpu_data().unwrap_or_default();
            Ok(cpu(
                perm.iter()
                    .flat_map(|&p| v[p * row..(p + 1) * row].iter().copied())
                    .collect(),
                x.shape(),
            ))
        }
        Device::Gpu(g) => {
            let out = g.alloc(x.numel());
            for (i, &p) in perm.iter().enumerate() {
                g.copy(buf(x), p * row, &out, i * row, row);
            }
            Ok(Tensor::from_gpu(&g, out, x.shape()))
        }
    }
}

/// The inverse of a permutation.
pub fn inverse_permutation(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// Overwrite rows `start..start + src.rows` of `dst` with `src`, in place (queues).
pub fn assign_rows(dst: &mut Tensor, start: usize, src: &Tensor) -> Result<()> {
    let (n, m) = (
        dst.shape().first().copied().unwrap_or(0),
        src.shape().first().copied().unwrap_or(0),
    );
    if dst.shape()[1..] != src.shape()[1..] || start + m > n {
        return Err(Error::shape(
            "assign_rows",
            format!(
                "rows {start}..{} of {:?} from {:?}",
                start + m,
                dst.shape(),
                src.shape()
            ),
        ));
    }
    let row = src.numel() / m.max(1);
    same_device("assign_rows", &[dst, src])?;
    match (dst.device(), src.cpu_data()) {
        (Device::Cpu, Some(s)) => {
            let s = s.to_vec();
            let d = dst
                .cpu_data_mut()
                .ok_or_else(|| Error::shape("assign_rows", "cpu tensor"))?;
            d[start * row..(start + m) * row].copy_from_slice(&s);
            Ok(())
        }
        (Device::Gpu(g), _) => {
            g.copy(buf(src), 0, buf(dst), start * row, m * row);
            Ok(())
        }
        _ => Err(Error::shape("assign_rows", "device mismatch")),
    }
}

impl Tape {
    /// y[i] = x[perm[i]] (batch shuffles); the gradient is un-shuffled.
    pub fn permute_rows(&mut self, x: Var, perm: &[usize]) -> Result<Var> {
        let y = permute_rows(self.value(x), perm)?;
        let inv = inverse_permutation(perm);
        Ok(self.record("permute_rows", y, &[x], move |gy, _| {
            Ok(vec![Some(permute_rows(gy, &inv)?)])
        }))
    }
}
