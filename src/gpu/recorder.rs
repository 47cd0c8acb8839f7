//! The step recorder: every dispatch and copy goes into one command encoder (inside one open
//! compute pass while only dispatches follow each other) until something needs the results on
//! the host. Kernel parameters are appended to a host-side arena and uploaded with a single
//! `write_buffer` right before the submit; each dispatch binds its block by dynamic offset, so
//! bind groups depend only on buffers and are cached.

use std::collections::HashMap;
use std::sync::Arc;

use super::buffers::GpuBuffer;
use super::pipelines::{Pipeline, PARAM_BLOCK};

/// Parameter blocks per submission before an automatic flush.
const ARENA_BLOCKS: u64 = 4096;
/// Cached bind groups before the cache is cleared (shapes changed many times).
const MAX_BIND_GROUPS: usize = 16384;

/// (pipeline id, [buffer id] in binding order).
type BindKey = (u64, Vec<u64>);

pub(crate) struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    arena: Vec<u8>,
    arena_buf: wgpu::Buffer,
    bind_groups: HashMap<BindKey, wgpu::BindGroup>,
    timestamps: Option<(wgpu::QuerySet, u32)>,
    pub dispatches: u64,
    pub submits: u64,
}

impl Recorder {
    pub fn new(device: &wgpu::Device) -> Self {
        let arena_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("viewcraft param arena"),
            size: ARENA_BLOCKS * PARAM_BLOCK,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Self {
            encoder: None,
            pass: None,
            arena: Vec::new(),
            arena_buf,
            bind_groups: HashMap::new(),
            timestamps: None,
            dispatches: 0,
            submits: 0,
        }
    }

    fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("viewcraft step"),
            })
        })
    }

    fn close_pass(&mut self) {
        self.pass = None;
    }

    /// Record one dispatch; `buffers` are bound whole, in binding order.
    pub fn dispatch(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        p: &Arc<Pipeline>,
        buffers: &[&GpuBuffer],
        params: &[u32],
        grid: [u32; 3],
    ) {
        assert_eq!(
            buffers.len(),
            p.bindings.len(),
            "kernel {:?} takes {} storage buffers",
            p.pipeline,
            p.bindings.len()
        );
        assert!(
            params.len() * 4 <= PARAM_BLOCK as usize,
            "params exceed one block"
        );
        if self.arena.len() as u64 >= ARENA_BLOCKS * PARAM_BLOCK {
            self.flush(device, queue);
        }
        let offset = self.arena.len() as u32;
        self.arena.extend_from_slice(bytemuck::cast_slice(params));
        self.arena.resize(offset as usize + PARAM_BLOCK as usize, 0);

        let key = (p.id, buffers.iter().map(|b| b.id()).collect::<Vec<_>>());
        if !self.bind_groups.contains_key(&key) {
            if self.bind_groups.len() >= MAX_BIND_GROUPS {
                self.bind_groups.clear();
            }
            let mut entries = Vec::with_capacity(buffers.len() + 1);
            if p.uses_params {
                entries.push(wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &self.arena_buf,
                        offset: 0,
                        size: wgpu::BufferSize::new(PARAM_BLOCK),
                    }),
                });
            }
            for (b, &binding) in buffers.iter().zip(&p.bindings) {
                entries.push(wgpu::BindGroupEntry {
                    binding,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b.buffer(),
                        offset: 0,
                        size: wgpu::BufferSize::new(b.size()),
                    }),
                });
            }
            let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &p.layout,
                entries: &entries,
            });
            self.bind_groups.insert(key.clone(), bg);
        }
        let bg = &self.bind_groups[&key];
        if self.pass.is_none() {
            let ts = self.timestamps.take();
            let enc = self.encoder.get_or_insert_with(|| {
                device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("viewcraft step"),
                })
            });
            let pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("viewcraft kernels"),
                timestamp_writes: ts
                    .as_ref()
                    .map(|(qs, first)| wgpu::ComputePassTimestampWrites {
                        query_set: qs,
                        beginning_of_pass_write_index: Some(*first),
                        end_of_pass_write_index: None,
                    }),
            });
            self.pass = Some(pass.forget_lifetime());
        }
        let pass = self.pass.as_mut().expect("open pass");
        pass.set_pipeline(&p.pipeline);
        let offsets: &[u32] = if p.uses_params { &[offset] } else { &[] };
        pass.set_bind_group(0, bg, offsets);
        pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        self.dispatches += 1;
    }

    /// Copy `len` f32 values between buffers, in record order with the dispatches.
    pub fn copy(
        &mut self,
        device: &wgpu::Device,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        len: u64,
    ) {
        self.close_pass();
        self.encoder(device)
            .copy_buffer_to_buffer(src, src_off * 4, dst, dst_off * 4, len * 4);
    }

    /// Zero a whole buffer, in record order with the dispatches.
    pub fn clear(&mut self, device: &wgpu::Device, buf: &wgpu::Buffer) {
        self.close_pass();
        self.encoder(device).clear_buffer(buf, 0, None);
    }

    /// The next compute pass writes a GPU timestamp at its start into `qs[first]`.
    pub fn time_next_pass(&mut self, qs: wgpu::QuerySet, first: u32) {
        self.close_pass();
        self.timestamps = Some((qs, first));
    }

    /// Write a timestamp into `qs[index]` after everything recorded so far (an empty pass's
    /// end-of-pass write: the work between may span several passes, copies and clears).
    /// False when no pass took the start timestamp of `time_next_pass` (nothing to time).
    pub fn end_timing(&mut self, device: &wgpu::Device, qs: &wgpu::QuerySet, index: u32) -> bool {
        if self.timestamps.take().is_some() {
            return false;
        }
        self.close_pass();
        drop(
            self.encoder(device)
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("viewcraft timing end"),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: qs,
                        beginning_of_pass_write_index: None,
                        end_of_pass_write_index: Some(index),
                    }),
                }),
        );
        true
    }

    pub fn resolve_queries(
        &mut self,
        device: &wgpu::Device,
        qs: &wgpu::QuerySet,
        n: u32,
        dst: &wgpu::Buffer,
    ) {
        self.close_pass();
        self.encoder(device).resolve_query_set(qs, 0..n, dst, 0);
    }

    /// Submit everything recorded so far (one command buffer).
    pub fn flush(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
    ) -> Option<wgpu::SubmissionIndex> {
        self.close_pass();
        let enc = self.encoder.take()?;
        if !self.arena.is_empty() {
            queue.write_buffer(&self.arena_buf, 0, &self.arena);
            self.arena.clear();
        }
        let _ = device;
        self.submits += 1;
        Some(queue.submit([enc.finish()]))
    }

    pub fn clear_bind_groups(&mut self) {
        self.bind_groups.clear();
    }
}
