//! The wgpu runtime: adapter and device ([`context`]), compiled pipelines keyed by
//! (shader, entry, constants) ([`pipelines`]), pooled storage buffers ([`buffers`]) and the
//! step recorder that puts every dispatch of a training step into one command encoder and
//! submits once ([`recorder`]).

pub mod buffers;
pub mod context;
pub mod pipelines;
pub mod recorder;
pub mod shaders;

pub use buffers::GpuBuffer;
pub use context::{list_adapters, AdapterReport, Gpu, KernelVariant};
pub use pipelines::Kernel;

/// Round `n` invocations of workgroup size `wg` up to a dispatch grid. Grids wider than the
/// 65535 workgroups a dimension may hold spill into y; kernels rebuild the flat index with
/// `flat_index` from the prelude.
pub fn grid_1d(n: usize, wg: u32) -> [u32; 3] {
    let groups = n.div_ceil(wg as usize).max(1);
    let x = groups.min(65535);
    let y = groups.div_ceil(x);
    [x as u32, y as u32, 1]
}
