//! Device errors are errors, not panics: a tensor over the adapter's storage-buffer limit and
//! a wgpu validation error both come back from `Gpu::check` (and so from every sync and
//! readback) as `Error::Gpu` naming what happened; a training step that cannot fit the
//! adapter is refused before it runs.

mod common;
use common::*;
use viewcraft::error::Error;

#[test]
fn limits_and_validation_errors_become_gpu_errors() {
    // A device of its own: its errors must not reach other tests' devices.
    let Some(d) = own_gpu("errors", None) else {
        return;
    };
    let g = d.gpu().unwrap();
    g.check().unwrap();
    let limit = g
        .limits
        .max_storage_buffer_binding_size
        .min(g.limits.max_buffer_size);
    let _big = g.alloc((limit / 4 + 1) as usize);
    match g.check() {
        Err(Error::Gpu(m)) => assert!(m.contains("storage-buffer limit"), "{m}"),
        other => panic!("expected Error::Gpu, got {other:?}"),
    }
    g.check().unwrap();
    // An invalid buffer (MAP_READ with STORAGE): wgpu's validation error, captured.
    let _bad = g.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid on purpose"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    match g.sync() {
        Err(Error::Gpu(m)) => assert!(!m.is_empty()),
        other => panic!("expected Error::Gpu, got {other:?}"),
    }
}

#[test]
fn a_step_over_the_limit_is_refused_before_it_runs() {
    let Some(d) = gpu() else { return };
    let g = d.gpu().unwrap();
    let limit = g
        .limits
        .max_storage_buffer_binding_size
        .min(g.limits.max_buffer_size);
    // SimCLR at width 64 with both views of the batch in the stem: 2·B·64·32·32·4 bytes.
    let batch = ((limit / (2 * 64 * 32 * 32 * 4)) as usize + 1).next_multiple_of(2);
    let m = simclr(64, 0, &d);
    let specs = vec![
        viewcraft::data::loader::ViewSpec {
            source: viewcraft::data::loader::CropSource::Box,
            size: 32,
            rrc: viewcraft::crop::sampler::RrcParams::default(),
            augment: viewcraft::data::loader::Augment::Ssl,
            mask: viewcraft::data::loader::ViewMask::None,
        };
        2
    ];
    let e = viewcraft::train::check_device_limits(&m, &specs, batch, g).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("train.batch_size") && msg.contains("MiB"),
        "{msg}"
    );
    viewcraft::train::check_device_limits(&m, &specs, 2, g).unwrap();
}
