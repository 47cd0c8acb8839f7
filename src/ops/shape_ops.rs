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
        Ok(self.record("reshape", y, &[x], move |gy| {
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
        Ok(self.record("concat", y, xs, move |gy| {
            let mut start = 0;
            let mut out = Vec::new();
            for n in &sizes {
                out.push(Some(slice_batch(gy, start, *n)?));
                start += n;
            }
            Ok(out)
        }))
    }

    pub fn slice_batch(&mut self, x: Var, start: usize, len: usize) -> Result<Var> {
        let shape = self.value(x).shape().to_vec();
        let y = slice_batch(self.value(x), start, len)?;
        Ok(self.record("slice_batch", y, &[x], move |gy| {
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
