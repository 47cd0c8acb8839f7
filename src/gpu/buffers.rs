//! Pooled storage buffers. A training step allocates and frees the same sizes in the same
//! order every step, so an exact-size free list (LIFO) hands back the very same buffers: no
//! allocation after the first step, and bind groups keyed by buffer ids hit the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
struct FreeLists {
    by_size: HashMap<u64, Vec<(u64, wgpu::Buffer)>>,
    live_bytes: u64,
    pooled_bytes: u64,
}

/// The pool; cloned handles share one free list.
#[derive(Clone)]
pub struct BufferPool {
    device: wgpu::Device,
    free: Arc<Mutex<FreeLists>>,
}

impl BufferPool {
    pub fn new(device: wgpu::Device) -> Self {
        Self {
            device,
            free: Arc::new(Mutex::new(FreeLists::default())),
        }
    }

    /// Size class in bytes: 256-byte granularity keeps offsets aligned for any use.
    fn class(len_f32: usize) -> u64 {
        ((len_f32.max(1) * 4) as u64).div_ceil(256) * 256
    }

    /// A buffer for `len` f32 values, contents undefined.
    pub fn alloc(&self, len: usize) -> GpuBuffer {
        let size = Self::class(len);
        let mut free = self.free.lock().expect("buffer pool poisoned");
        let (id, buffer) = match free.by_size.get_mut(&size).and_then(|v| v.pop()) {
            Some(b) => {
                free.pooled_bytes -= size;
                b
            }
            None => {
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("viewcraft tensor"),
                    size,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                (id, buffer)
            }
        };
        free.live_bytes += size;
        GpuBuffer(Arc::new(Inner {
            buffer: Some(buffer),
            id,
            len,
            size,
            pool: self.free.clone(),
        }))
    }

    /// (bytes held by live tensors, bytes waiting in the free lists).
    pub fn usage(&self) -> (u64, u64) {
        let f = self.free.lock().expect("buffer pool poisoned");
        (f.live_bytes, f.pooled_bytes)
    }

    /// Release every free buffer (after a phase with other shapes, e.g. evaluation).
    pub fn trim(&self) {
        let mut f = self.free.lock().expect("buffer pool poisoned");
        f.by_size.clear();
        f.pooled_bytes = 0;
    }
}

struct Inner {
    buffer: Option<wgpu::Buffer>,
    id: u64,
    len: usize,
    size: u64,
    pool: Arc<Mutex<FreeLists>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let (Some(buffer), Ok(mut free)) = (self.buffer.take(), self.pool.lock()) {
            free.live_bytes -= self.size;
            free.pooled_bytes += self.size;
            free.by_size
                .entry(self.size)
                .or_default()
                .push((self.id, buffer));
        }
    }
}

/// A shared handle to a pooled buffer of `len` f32 values. Returned to the pool when the last
/// handle drops. Reuse inside one unsubmitted encoder is safe: commands run in record order and
/// wgpu puts barriers between dispatches that touch the same buffer.
#[derive(Clone)]
pub struct GpuBuffer(Arc<Inner>);

impl GpuBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.0.buffer.as_ref().expect("live buffer")
    }
    pub fn id(&self) -> u64 {
        self.0.id
    }
    /// Number of f32 values.
    pub fn len(&self) -> usize {
        self.0.len
    }
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
    /// Bytes allocated (the size class).
    pub fn size(&self) -> u64 {
        self.0.size
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuffer#{}[{}]", self.0.id, self.0.len)
    }
}
