//! Adapter discovery and the device context.
//!
//! The device is created with the adapter's own limits (not wgpu's conservative defaults) and
//! every optional feature we can use that the adapter offers (timestamp queries, subgroups,
//! shader-f16), recorded so kernels and benchmarks can choose.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wgpu::util::DeviceExt;

use super::buffers::{BufferPool, GpuBuffer};
use super::pipelines::{Kernel, PipelineCache};
use super::recorder::Recorder;
use crate::error::{Error, Result};

/// Which family of kernels runs on this adapter: on CPU-type adapters (lavapipe) register
/// tiles without workgroup barriers (measured there: an order of magnitude faster, see
/// benches/RESULTS.md); on hardware GPUs the workgroup-memory tiles of `shaders/gemm.wgsl`
/// (the design for them; not yet measured on one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelVariant {
    RegisterTiled,
    WorkgroupTiled,
}

impl KernelVariant {
    pub fn for_device_type(t: wgpu::DeviceType) -> Self {
        match t {
            wgpu::DeviceType::Cpu | wgpu::DeviceType::Other => KernelVariant::RegisterTiled,
            _ => KernelVariant::WorkgroupTiled,
        }
    }
}

/// What `viewcraft devices` prints for one adapter.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterReport {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_size_x: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_shader_stage: u32,
    pub features: Vec<String>,
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// The optional features viewcraft asks for when the adapter has them.
fn wanted_features() -> wgpu::Features {
    wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16
}

fn report(index: usize, a: &wgpu::Adapter) -> AdapterReport {
    let info = a.get_info();
    let l = a.limits();
    let f = a.features() & wanted_features();
    AdapterReport {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_buffer_size: l.max_buffer_size,
        max_compute_workgroup_size_x: l.max_compute_workgroup_size_x,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
        max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
        max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
        features: f.iter_names().map(|(n, _)| n.to_string()).collect(),
    }
}

/// Adapters on Vulkan/Metal/DX12, or on GL when those have none (probing GL first would
/// wake EGL on machines that never use it). `WGPU_BACKEND` overrides the choice.
fn adapters() -> Vec<wgpu::Adapter> {
    let enumerate = |b| pollster::block_on(instance(b).enumerate_adapters(b));
    if let Some(b) = wgpu::Backends::from_env() {
        return enumerate(b);
    }
    let primary = enumerate(wgpu::Backends::PRIMARY);
    if !primary.is_empty() {
        return primary;
    }
    enumerate(wgpu::Backends::GL)
}

/// Every adapter wgpu can see, on every backend.
pub fn list_adapters() -> Vec<AdapterReport> {
    let adapters = pollster::block_on(
        instance(wgpu::Backends::all()).enumerate_adapters(wgpu::Backends::all()),
    );
    adapters
        .iter()
        .enumerate()
        .map(|(i, a)| report(i, a))
        .collect()
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

pub const NO_ADAPTER_HINT: &str = "no GPU adapter found; for a software Vulkan device install \
mesa-vulkan-drivers (apt-get install -y mesa-vulkan-drivers), or use VIEWCRAFT_DEVICE=cpu";

/// The device context shared by every GPU tensor.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub variant: KernelVariant,
    /// Whether shaders keep wgpu's injected bounds checks and loop bounds: on for hardware
    /// adapters, off for CPU-type ones (lavapipe, where tests run; every kernel is tested
    /// there against the CPU reference on odd shapes). `VIEWCRAFT_SHADER_CHECKS=0|1` overrides.
    pub shader_checks: bool,
    pool: BufferPool,
    pipelines: Mutex<PipelineCache>,
    rec: Mutex<Recorder>,
    /// Per-kernel (dispatches, wall seconds) when `VIEWCRAFT_PROFILE=1`: every dispatch is
    /// then submitted and waited for on its own, so totals include submit overhead.
    profile: Mutex<Option<std::collections::BTreeMap<String, (u64, f64)>>>,
    /// The first error the device reported (validation, out of memory, device loss) or a
    /// limit an allocation exceeded; [`Gpu::check`] turns it into `Error::Gpu`.
    errors: Arc<Mutex<Option<String>>>,
    /// Whether every allocation is filled with NaN first (`VIEWCRAFT_POISON=1`, or
    /// `set_poison`): a kernel that leaves an output element unwritten then fails its test
    /// instead of passing on a pooled buffer's stale, correct-looking values.
    poison: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}, {:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type, self.variant
        )
    }
}

impl Gpu {
    /// Open an adapter. `spec` is `auto` (the best hardware adapter: discrete > integrated >
    /// virtual; an error when there are only software adapters such as llvmpipe, which are
    /// slower here than the CPU path), `gpu` (the best adapter of any type, software ones
    /// included) or a case-insensitive substring of an adapter name (`llvmpipe`, `nvidia`...).
    pub fn open(spec: &str) -> Result<Arc<Gpu>> {
        Self::open_with_variant(spec, None)
    }

    /// The `index`-th hardware adapter (modulo their number): rank `index` of a node's
    /// data-parallel processes. Adapters of one backend only (the best one's: Vulkan, Metal or
    /// DX12 ahead of GL), so a card listed by two backends counts once, while identical cards
    /// stay distinct.
    pub fn open_nth_hardware(index: usize) -> Result<Arc<Gpu>> {
        let mut hw: Vec<wgpu::Adapter> = adapters()
            .into_iter()
            .filter(|a| {
                !matches!(
                    a.get_info().device_type,
                    wgpu::DeviceType::Cpu | wgpu::DeviceType::Other
                )
            })
            .collect();
        hw.sort_by_key(|a| {
            let i = a.get_info();
            (
                i.backend == wgpu::Backend::Gl,
                rank(i.device_type),
                i.device_pci_bus_id,
                i.device,
            )
        });
        let Some(backend) = hw.first().map(|a| a.get_info().backend) else {
            return Err(Error::NoAdapter("no hardware GPU adapter found".into()));
        };
        hw.retain(|a| a.get_info().backend == backend);
        let n = hw.len();
        Self::from_adapter(hw.swap_remove(index % n), None)
    }

    /// Like `open`, forcing a kernel family (tests run both families on one adapter).
    pub fn open_with_variant(spec: &str, variant: Option<KernelVariant>) -> Result<Arc<Gpu>> {
        let mut adapters = adapters();
        if adapters.is_empty() {
            return Err(Error::NoAdapter(NO_ADAPTER_HINT.to_string()));
        }
        let spec_l = spec.to_lowercase();
        let adapter = if matches!(spec_l.as_str(), "auto" | "" | "gpu") {
            // Prefer Vulkan/Metal/DX12 over GL for the same device type.
            adapters.sort_by_key(|a| {
                let i = a.get_info();
                (rank(i.device_type), i.backend == wgpu::Backend::Gl)
            });
            let best = adapters.swap_remove(0);
            let info = best.get_info();
            if spec_l != "gpu"
                && matches!(
                    info.device_type,
                    wgpu::DeviceType::Cpu | wgpu::DeviceType::Other
                )
            {
                return Err(Error::NoAdapter(format!(
                    "no hardware GPU adapter found; `{}` is a software adapter, slower here than the CPU path (select it with --device gpu or --device {})",
                    info.name,
                    info.name.split_whitespace().next().unwrap_or("gpu").to_lowercase()
                )));
            }
            best
        } else {
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            match adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&spec_l))
            {
                Some(a) => a,
                None => {
                    return Err(Error::NoAdapter(format!(
                    "no adapter name contains `{spec}` (VIEWCRAFT_DEVICE / --device); adapters: {}",
                    names.join(", ")
                )))
                }
            }
        };
        Self::from_adapter(adapter, variant)
    }

    fn from_adapter(adapter: wgpu::Adapter, forced: Option<KernelVariant>) -> Result<Arc<Gpu>> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features() & wanted_features();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("viewcraft"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Gpu(format!("{}: cannot open device: {e}", info.name)))?;
        let variant =
            forced.unwrap_or_else(
                || match std::env::var("VIEWCRAFT_KERNELS").ok().as_deref() {
                    Some("register") => KernelVariant::RegisterTiled,
                    Some("workgroup") => KernelVariant::WorkgroupTiled,
                    _ => KernelVariant::for_device_type(info.device_type),
                },
            );
        // Errors become `Error::Gpu` at the next check instead of wgpu's default panic.
        let errors: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let sink = errors.clone();
        let name = info.name.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| format!("{name}: {e}"));
        }));
        let lost = errors.clone();
        let name = info.name.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                let mut slot = lost.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| format!("{name}: device lost ({reason:?}): {msg}"));
            }
        });
        let rec = Recorder::new(&device);
        let shader_checks = match std::env::var("VIEWCRAFT_SHADER_CHECKS").ok().as_deref() {
            Some("1") => true,
            Some("0") => false,
            _ => !matches!(
                info.device_type,
                wgpu::DeviceType::Cpu | wgpu::DeviceType::Other
            ),
        };
        Ok(Arc::new(Gpu {
            pool: BufferPool::new(device.clone()),
            device,
            queue,
            info,
            limits,
            features,
            variant,
            shader_checks,
            pipelines: Mutex::new(PipelineCache::default()),
            rec: Mutex::new(rec),
            errors,
            poison: std::env::var("VIEWCRAFT_POISON")
                .is_ok_and(|v| v == "1")
                .into(),
            profile: Mutex::new(
                std::env::var("VIEWCRAFT_PROFILE")
                    .is_ok_and(|v| v == "1")
                    .then(Default::default),
            ),
        }))
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// A buffer for `len` f32 values (contents undefined).
    pub fn alloc(&self, len: usize) -> GpuBuffer {
        let bytes = len as u64 * 4;
        let limit = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if bytes > limit {
            self.report(format!(
                "{}: a tensor of {len} values ({} MiB) exceeds the adapter's storage-buffer limit of {} MiB: lower train.batch_size (or method.queue, the model width, the image size)",
                self.info.name,
                bytes >> 20,
                limit >> 20
            ));
        }
        let buf = self.pool.alloc(len);
        if len > 0 && self.poison.load(std::sync::atomic::Ordering::Relaxed) {
            self.dispatch(
                Kernel::new("elementwise", "fill"),
                &[],
                &[&buf],
                &[len as u32, f32::NAN.to_bits(), 0, 0],
                super::grid_1d(len, 256),
            );
        }
        buf
    }

    /// Fill every allocation from now on with NaN (tests), or stop.
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, std::sync::atomic::Ordering::Relaxed)
    }

    /// Remember `msg` as the device's error (the first one wins).
    fn report(&self, msg: String) {
        let mut slot = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(msg);
    }

    /// The first error the device reported since the last check, as `Error::Gpu`.
    pub fn check(&self) -> Result<()> {
        let mut slot = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(msg) => Err(Error::Gpu(msg)),
            None => Ok(()),
        }
    }

    /// Upload host data. Goes through a staging buffer and a recorded copy so that it stays in
    /// order with the dispatches already recorded (a pooled buffer may be reused in the step).
    pub fn upload(&self, data: &[f32]) -> GpuBuffer {
        let dst = self.alloc(data.len());
        if data.is_empty() {
            return dst;
        }
        let staging = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("viewcraft upload"),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::COPY_SRC,
            });
        self.rec().copy(
            &self.device,
            &staging,
            0,
            dst.buffer(),
            0,
            data.len() as u64,
        );
        dst
    }

    fn rec(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.rec.lock().expect("recorder poisoned")
    }

    /// Record one dispatch. `buffers` bind the kernel's storage bindings in binding order;
    /// `params` fill its `params` uniform.
    pub fn dispatch(
        &self,
        kernel: Kernel,
        constants: &[(&str, f64)],
        buffers: &[&GpuBuffer],
        params: &[u32],
        grid: [u32; 3],
    ) {
        let p = self.pipelines.lock().expect("pipeline cache poisoned").get(
            &self.device,
            kernel,
            constants,
            self.shader_checks,
        );
        self.profiled(&format!("{}.{}", kernel.shader, kernel.entry), || {
            self.rec()
                .dispatch(&self.device, &self.queue, &p, buffers, params, grid)
        });
    }

    /// Run `record`; when profiling, wait for it alone and add its wall time to `label`.
    fn profiled(&self, label: &str, record: impl FnOnce()) {
        if !self.profiling() {
            return record();
        }
        let _ = self.sync();
        let t0 = Instant::now();
        record();
        let _ = self.sync();
        let dt = t0.elapsed().as_secs_f64();
        if let Some(m) = self.profile.lock().expect("profile poisoned").as_mut() {
            let e = m.entry(label.to_string()).or_default();
            e.0 += 1;
            e.1 += dt;
        }
    }

    /// Whether every dispatch is being timed (`VIEWCRAFT_PROFILE=1` or `set_profiling`).
    pub fn profiling(&self) -> bool {
        self.profile.lock().expect("profile poisoned").is_some()
    }

    /// Time every dispatch from now on (each is then submitted and waited for alone), or stop.
    pub fn set_profiling(&self, on: bool) {
        let mut p = self.profile.lock().expect("profile poisoned");
        if on != p.is_some() {
            *p = on.then(Default::default);
        }
    }

    /// The per-kernel (label, dispatches, seconds) collected since the last call.
    pub fn take_profile(&self) -> Vec<(String, u64, f64)> {
        self.profile
            .lock()
            .expect("profile poisoned")
            .as_mut()
            .map_or_else(Vec::new, |m| {
                std::mem::take(m)
                    .into_iter()
                    .map(|(k, (n, s))| (k, n, s))
                    .collect()
            })
    }

    /// Record a copy of `len` values from `src[src_off..]` to `dst[dst_off..]`.
    pub fn copy(
        &self,
        src: &GpuBuffer,
        src_off: usize,
        dst: &GpuBuffer,
        dst_off: usize,
        len: usize,
    ) {
        if len == 0 {
            return;
        }
        self.rec().copy(
            &self.device,
            src.buffer(),
            src_off as u64,
            dst.buffer(),
            dst_off as u64,
            len as u64,
        );
    }

    /// Record zeroing `buf` (a fill, far cheaper than a kernel's stores on llvmpipe).
    pub fn clear(&self, buf: &GpuBuffer) {
        self.rec().clear(&self.device, buf.buffer());
    }

    /// Submit what has been recorded.
    pub fn flush(&self) {
        self.rec().flush(&self.device, &self.queue);
    }

    /// Submit and wait for the GPU to finish.
    pub fn sync(&self) -> Result<()> {
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("{}: {e}", self.info.name)))?;
        self.check()
    }

    /// Read `len` values of `buf` back to the host (flushes and waits).
    pub fn read(&self, buf: &GpuBuffer, len: usize) -> Result<Vec<f32>> {
        self.check()?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = (len * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("viewcraft readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut rec = self.rec();
            rec.copy(&self.device, buf.buffer(), 0, &staging, 0, len as u64);
            rec.flush(&self.device, &self.queue);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("{}: {e}", self.info.name)))?;
        self.check()?;
        rx.recv()
            .map_err(|e| Error::Gpu(e.to_string()))?
            .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
        let out = bytemuck::cast_slice::<u8, f32>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Time what `f` records: wall seconds from first record to completion, and the GPU's own
    /// seconds from timestamp queries when the adapter has them (from the start of the first
    /// compute pass to after everything recorded, copies and fills included).
    pub fn time<R>(&self, f: impl FnOnce() -> R) -> Result<(R, f64, Option<f64>)> {
        self.sync()?;
        // The profiler waits after every dispatch; its runs report wall time.
        let ts = self.features.contains(wgpu::Features::TIMESTAMP_QUERY) && !self.profiling();
        let qs = ts.then(|| {
            self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("viewcraft timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            })
        });
        if let Some(qs) = &qs {
            self.rec().time_next_pass(qs.clone(), 0);
        }
        let t0 = Instant::now();
        let r = f();
        let gpu_s = if let Some(qs) = qs
            .as_ref()
            .filter(|qs| self.rec().end_timing(&self.device, qs, 1))
        {
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("viewcraft timestamps"),
                size: 256,
                usage: wgpu::BufferUsages::QUERY_RESOLVE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            self.rec().resolve_queries(&self.device, qs, 2, &resolve);
            Some(resolve)
        } else {
            None
        };
        self.sync()?;
        let wall = t0.elapsed().as_secs_f64();
        let gpu = match gpu_s {
            Some(resolve) => {
                let tmp = self.alloc(64);
                self.rec()
                    .copy(&self.device, &resolve, 0, tmp.buffer(), 0, 4);
                let v = self.read(&tmp, 4)?;
                let t0 = (v[0].to_bits() as u64) | ((v[1].to_bits() as u64) << 32);
                let t1 = (v[2].to_bits() as u64) | ((v[3].to_bits() as u64) << 32);
                let period = self.queue.get_timestamp_period() as f64;
                (t1 > t0).then(|| (t1 - t0) as f64 * period * 1e-9)
            }
            None => None,
        };
        Ok((r, wall, gpu))
    }

    /// Bytes in live tensors and in the free lists.
    pub fn memory_usage(&self) -> (u64, u64) {
        self.pool.usage()
    }

    /// Drop pooled buffers and cached bind groups (after a change of shapes).
    pub fn trim(&self) {
        self.rec().clear_bind_groups();
        self.pool.trim();
    }

    /// (dispatches recorded, submits) so far: a training step should add exactly one submit.
    pub fn counters(&self) -> (u64, u64) {
        let r = self.rec();
        (r.dispatches, r.submits)
    }

    /// Number of distinct compiled pipelines.
    pub fn pipelines_compiled(&self) -> usize {
        self.pipelines
            .lock()
            .expect("pipeline cache poisoned")
            .len()
    }
}
