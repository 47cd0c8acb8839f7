//! f32 tensors on the CPU or on a GPU. Always contiguous, row-major (strides follow from the
//! shape); reshape and flatten share storage. Clones share storage too: tensors are values,
//! and the few in-place updates (optimizer, running statistics) are explicit.

use std::sync::Arc;

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuBuffer};

/// Where tensors live and ops run.
#[derive(Clone)]
pub enum Device {
    /// The CPU path: the fast kernels, or the plain references (`--device reference`).
    Cpu,
    Gpu(Arc<Gpu>),
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Gpu(g) => write!(f, "{g:?}"),
        }
    }
}

impl Device {
    /// `cpu` (the fast CPU kernels), `reference` (the plain reference kernels, end to end),
    /// or an adapter spec (`auto`, `gpu`, a name substring).
    pub fn open(spec: &str) -> Result<Device> {
        if spec.eq_ignore_ascii_case("cpu") {
            crate::ops::set_reference_kernels(false);
            return Ok(Device::Cpu);
        }
        if spec.eq_ignore_ascii_case("reference") {
            crate::ops::set_reference_kernels(true);
            return Ok(Device::Cpu);
        }
        Ok(Device::Gpu(Gpu::open(spec)?))
    }

    /// The device named by `VIEWCRAFT_DEVICE` (default `auto`).
    pub fn from_env() -> Result<Device> {
        Self::open(&std::env::var("VIEWCRAFT_DEVICE").unwrap_or_else(|_| "auto".into()))
    }

    pub fn name(&self) -> String {
        match self {
            Device::Cpu if crate::ops::reference_kernels() => "cpu (reference kernels)".into(),
            Device::Cpu => "cpu".into(),
            Device::Gpu(g) => format!(
                "{} ({:?}, {:?})",
                g.info.name, g.info.backend, g.info.device_type
            ),
        }
    }

    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        match self {
            Device::Gpu(g) => Some(g),
            Device::Cpu => None,
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, Device::Gpu(_))
    }

    /// Submit and wait (no-op on the CPU).
    pub fn sync(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Gpu(g) => g.sync(),
        }
    }

    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Gpu(a), Device::Gpu(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(Arc<Vec<f32>>),
    Gpu(Arc<Gpu>, GpuBuffer),
}

#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?} on {:?}", self.shape, self.device())
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl Tensor {
    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(Error::shape(
                "tensor",
                format!("{} values cannot fill shape {:?}", data.len(), shape),
            ));
        }
        Ok(match device {
            Device::Cpu => Tensor {
                shape: shape.to_vec(),
                storage: Storage::Cpu(Arc::new(data)),
            },
            Device::Gpu(g) => Tensor {
                shape: shape.to_vec(),
                storage: Storage::Gpu(g.clone(), g.upload(&data)),
            },
        })
    }

    pub fn from_slice(data: &[f32], shape: &[usize], device: &Device) -> Result<Tensor> {
        Self::from_vec(data.to_vec(), shape, device)
    }

    pub fn full(value: f32, shape: &[usize], device: &Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Self::from_vec(vec![value; numel(shape)], shape, device),
            Device::Gpu(_) => crate::ops::elementwise::fill(value, shape, device),
        }
    }

    pub fn zeros(shape: &[usize], device: &Device) -> Result<Tensor> {
        Self::full(0.0, shape, device)
    }

    pub fn ones(shape: &[usize], device: &Device) -> Result<Tensor> {
        Self::full(1.0, shape, device)
    }

    /// Standard-normal values scaled by `std`.
    pub fn randn(shape: &[usize], std: f32, rng: &mut impl Rng, device: &Device) -> Result<Tensor> {
        let v = (0..numel(shape))
            .map(|_| {
                let z: f32 = StandardNormal.sample(rng);
                z * std
            })
            .collect();
        Self::from_vec(v, shape, device)
    }

    /// Uniform values in [lo, hi).
    pub fn rand_uniform(
        shape: &[usize],
        lo: f32,
        hi: f32,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Tensor> {
        let v = (0..numel(shape))
            .map(|_| rng.random_range(lo..hi))
            .collect();
        Self::from_vec(v, shape, device)
    }

    /// Wrap a GPU buffer that holds `numel(shape)` values.
    pub fn from_gpu(gpu: &Arc<Gpu>, buf: GpuBuffer, shape: &[usize]) -> Tensor {
        debug_assert_eq!(buf.len(), numel(shape));
        Tensor {
            shape: shape.to_vec(),
            storage: Storage::Gpu(gpu.clone(), buf),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn strides(&self) -> Vec<usize> {
        strides(&self.shape)
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Gpu(g, _) => Device::Gpu(g.clone()),
        }
    }

    /// The host values (a readback for GPU tensors: flushes and waits).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.as_ref().clone()),
            Storage::Gpu(g, b) => g.read(b, self.numel()),
        }
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!(
                    "tensor of shape {:?} has {} values",
                    self.shape,
                    self.numel()
                ),
            ));
        }
        Ok(self.to_vec()?[0])
    }

    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device().same(device) {
            return Ok(self.clone());
        }
        Tensor::from_vec(self.to_vec()?, &self.shape, device)
    }

    /// The CPU values, borrowed (only for CPU tensors).
    pub fn cpu_data(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Some(v),
            Storage::Gpu(..) => None,
        }
    }

    pub fn gpu_buffer(&self) -> Option<(&Arc<Gpu>, &GpuBuffer)> {
        match &self.storage {
            Storage::Gpu(g, b) => Some((g, b)),
            Storage::Cpu(_) => None,
        }
    }

    /// Same values, new shape (shares storage).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot view {:?} ({} values) as {:?}",
                    self.shape,
                    self.numel(),
                    shape
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: self.storage.clone(),
        })
    }

    /// Mutable access to CPU values (copy-on-write when shared).
    pub fn cpu_data_mut(&mut self) -> Option<&mut Vec<f32>> {
        match &mut self.storage {
            Storage::Cpu(v) => Some(Arc::make_mut(v)),
            Storage::Gpu(..) => None,
        }
    }

    /// Overwrite this tensor's values with `src`'s in place (same shape and device). GPU: a
    /// recorded copy, so it takes effect in order with the step.
    pub fn assign(&mut self, src: &Tensor) -> Result<()> {
        if src.shape != self.shape {
            return Err(Error::shape(
                "assign",
                format!("{:?} into {:?}", src.shape, self.shape),
            ));
        }
        match (&mut self.storage, &src.storage) {
            (Storage::Cpu(d), Storage::Cpu(s)) => {
                Arc::make_mut(d).copy_from_slice(s);
                Ok(())
            }
            (Storage::Gpu(g, d), Storage::Gpu(_, s)) => {
                g.copy(s, 0, d, 0, src.numel());
                Ok(())
            }
            _ => Err(Error::DeviceMismatch {
                op: "assign",
                a: format!("{:?}", self.device()),
                b: format!("{:?}", src.device()),
            }),
        }
    }
}

/// Inputs of one op must share a device; returns it.
pub fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let d = ts[0].device();
    for t in &ts[1..] {
        let e = t.device();
        if !d.same(&e) {
            return Err(Error::DeviceMismatch {
                op,
                a: format!("{d:?}"),
                b: format!("{e:?}"),
            });
        }
    }
    Ok(d)
}

/// Shapes must be equal (for elementwise ops).
pub fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("shapes {:?} and {:?} differ", a.shape(), b.shape()),
        ));
    }
    Ok(())
}
