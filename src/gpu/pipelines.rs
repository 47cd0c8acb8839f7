//! Compute pipelines, compiled once per (shader, entry point, override constants).
//!
//! Bind group layouts are derived from the shader itself with naga: for each entry point,
//! the group-0 globals it uses, in binding order, with the declared access (read-only storage
//! stays read-only, so one buffer may feed two read bindings). By convention binding 0 is the
//! `params` uniform, bound with a dynamic offset into the recorder's parameter arena.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::shaders;

/// A kernel: shader file (without `.wgsl`) and entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub shader: &'static str,
    pub entry: &'static str,
}

impl Kernel {
    pub const fn new(shader: &'static str, entry: &'static str) -> Self {
        Self { shader, entry }
    }
}

/// Size of one parameter block (the `params` uniform of every kernel must fit in it).
pub const PARAM_BLOCK: u64 = 256;

pub struct Pipeline {
    pub id: u64,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// Whether the entry point reads the `params` uniform (binding 0).
    pub uses_params: bool,
    /// Binding numbers of the storage buffers `dispatch` binds, in the order it takes them.
    pub bindings: Vec<u32>,
}

pub(crate) type PipelineKey = (Kernel, Vec<(String, u64)>);

#[derive(Default)]
pub struct PipelineCache {
    modules: HashMap<&'static str, (wgpu::ShaderModule, naga::Module, naga::valid::ModuleInfo)>,
    pipelines: HashMap<PipelineKey, std::sync::Arc<Pipeline>>,
}

static NEXT_PIPELINE: AtomicU64 = AtomicU64::new(1);

impl PipelineCache {
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        kernel: Kernel,
        constants: &[(&str, f64)],
        checked: bool,
    ) -> std::sync::Arc<Pipeline> {
        let key: PipelineKey = (
            kernel,
            constants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
        );
        if let Some(p) = self.pipelines.get(&key) {
            return p.clone();
        }
        let (module, naga_module, info) = self.modules.entry(kernel.shader).or_insert_with(|| {
            let src = shaders::full_source(kernel.shader)
                .unwrap_or_else(|| panic!("unknown shader {}", kernel.shader));
            // Validated by the shader test; a failure here is a build defect, not user input.
            let (m, i) = shaders::validate(kernel.shader, &src).unwrap_or_else(|e| panic!("{e}"));
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(kernel.shader),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            };
            let module = if checked {
                device.create_shader_module(desc)
            } else {
                // SAFETY: every kernel clamps its reads and guards its writes with the sizes
                // it is dispatched with (tests compare every kernel with the CPU reference,
                // odd shapes included), and every loop has a bound from its parameters. The
                // injected checks cost a large factor on CPU adapters: extra clamps on every
                // access and loop counters that block unrolling. VIEWCRAFT_SHADER_CHECKS=1
                // turns them back on.
                unsafe {
                    device
                        .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                }
            };
            (module, m, i)
        });
        let label = format!("{}::{}", kernel.shader, kernel.entry);
        let p = std::sync::Arc::new(build(
            device,
            &label,
            module,
            naga_module,
            info,
            kernel.entry,
            constants,
        ));
        self.pipelines.insert(key, p.clone());
        p
    }

    pub fn len(&self) -> usize {
        self.pipelines.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pipelines.is_empty()
    }
}

/// Compile one entry point with a bind group layout reflected from its naga module: the
/// uniform at binding 0 is the dynamic-offset params uniform; every storage binding is bound
/// by `dispatch`, in binding order.
#[allow(clippy::too_many_arguments)]
fn build(
    device: &wgpu::Device,
    label: &str,
    module: &wgpu::ShaderModule,
    naga_module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
    constants: &[(&str, f64)],
) -> Pipeline {
    let ep_index = naga_module
        .entry_points
        .iter()
        .position(|e| e.name == entry)
        .unwrap_or_else(|| panic!("{}.wgsl has no entry point {}", label, entry));
    let ep_info = info.get_entry_point(ep_index);
    let mut entries = Vec::new();
    let mut uses_params = false;
    let mut bindings = Vec::new();
    for (handle, var) in naga_module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        if rb.group != 0 || ep_info[handle].is_empty() {
            continue;
        }
        let ty = match var.space {
            naga::AddressSpace::Uniform if rb.binding == 0 => {
                uses_params = true;
                wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: None,
                }
            }
            naga::AddressSpace::Storage { access } => {
                bindings.push(rb.binding);
                wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: !access.contains(naga::StorageAccess::STORE),
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                }
            }
            other => panic!("unsupported address space {other:?} in {}", label),
        };
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: rb.binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty,
            count: None,
        });
    }
    entries.sort_by_key(|e| e.binding);
    bindings.sort();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: Some(&pl),
        module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            // Kernels initialise the workgroup memory they read.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    Pipeline {
        id: NEXT_PIPELINE.fetch_add(1, Ordering::Relaxed),
        pipeline,
        layout,
        uses_params,
        bindings,
    }
}
