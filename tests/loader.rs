//! The two-view loader: deterministic for a seed whatever the number of worker threads,
//! whole shuffled batches in order, normalised views, and ContrastiveCrop mode reading the
//! per-image boxes.

use std::sync::Arc;
use viewcraft::crop::sampler::RrcParams;
use viewcraft::data::augment::{mean_std, Jitter};
use viewcraft::data::cifar::{self, Split, Variant};
use viewcraft::data::loader::{epoch, CropMode, ViewConfig};

fn setup() -> (Arc<viewcraft::data::ImageSet>, ViewConfig) {
    let set = cifar::load(&cifar::embedded_root(), Variant::Cifar10, Split::Test)
        .unwrap()
        .truncate(200);
    let (mean, std) = mean_std("cifar10").unwrap();
    (
        Arc::new(set),
        ViewConfig::two_views(32, RrcParams::default(), Jitter::default(), mean, std),
    )
}

#[test]
fn deterministic_across_worker_counts() {
    let (set, cfg) = setup();
    let mode = CropMode::Rrc;
    let a: Vec<_> = epoch(set.clone(), mode.clone(), cfg.clone(), 16, 42, 3, 1, 2, 0).collect();
    let b: Vec<_> = epoch(set.clone(), mode.clone(), cfg.clone(), 16, 42, 3, 3, 4, 0).collect();
    assert_eq!(a.len(), 200 / 16, "drop_last");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.indices, y.indices);
        assert_eq!(x.views[0], y.views[0]);
        assert_eq!(x.views[1], y.views[1]);
        assert_eq!(x.views[0].len(), 16 * 3 * 32 * 32);
        assert_ne!(x.views[0], x.views[1], "two different views");
    }
    let c: Vec<_> = epoch(set.clone(), mode.clone(), cfg.clone(), 16, 42, 4, 2, 2, 0).collect();
    assert_ne!(a[0].indices, c[0].indices, "another epoch, another order");
    let mut all: Vec<usize> = a.iter().flat_map(|b| b.indices.clone()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 192, "each image at most once per epoch");
    // Normalised values: roughly zero mean, unit scale.
    let v = &a[0].views[0];
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    assert!(mean.abs() < 1.0 && v.iter().all(|x| x.is_finite()));
}

#[test]
fn contrastive_mode_uses_the_boxes() {
    let (set, mut cfg) = setup();
    cfg.jitter = Jitter {
        brightness: 0.0,
        contrast: 0.0,
        saturation: 0.0,
        hue: 0.0,
        blur: false,
    };
    // A tiny box in the top-left corner with α → 0 pushes crops to the box's edges, i.e. to the
    // top-left part of the image; compare against the same images with the box bottom-right.
    for v in &mut cfg.views {
        v.rrc = RrcParams {
            scale: (0.1, 0.1),
            ratio: (1.0, 1.0),
        };
    }
    let tl = Arc::new(vec![[0.0f32, 0.0, 0.1, 0.1]; set.len()]);
    let br = Arc::new(vec![[0.9f32, 0.9, 1.0, 1.0]; set.len()]);
    let a: Vec<_> = epoch(
        set.clone(),
        CropMode::boxes(&cfg, 0.1, None, tl).unwrap(),
        cfg.clone(),
        8,
        1,
        0,
        2,
        2,
        0,
    )
    .take(1)
    .collect();
    let b: Vec<_> = epoch(
        set.clone(),
        CropMode::boxes(&cfg, 0.1, None, br).unwrap(),
        cfg.clone(),
        8,
        1,
        0,
        2,
        2,
        0,
    )
    .take(1)
    .collect();
    assert_eq!(a[0].indices, b[0].indices);
    assert_ne!(a[0].views[0], b[0].views[0], "boxes change the crops");
}

#[test]
fn starting_mid_epoch_gives_the_remaining_batches() {
    let (set, cfg) = setup();
    let mode = CropMode::Rrc;
    let all: Vec<_> = epoch(set.clone(), mode.clone(), cfg.clone(), 16, 5, 2, 2, 2, 0).collect();
    let rest: Vec<_> = epoch(set, mode, cfg, 16, 5, 2, 3, 2, 4).collect();
    assert_eq!(rest.len(), all.len() - 4);
    for (x, y) in all[4..].iter().zip(&rest) {
        assert_eq!(x.indices, y.indices);
        assert_eq!(x.views, y.views);
    }
}

#[test]
fn dropping_mid_epoch_stops_workers() {
    let (set, cfg) = setup();
    let mut it = epoch(set, CropMode::Rrc, cfg, 8, 7, 0, 2, 1, 0);
    assert!(it.next().is_some());
    drop(it); // must not hang
}

#[test]
fn blur_option_changes_the_views_deterministically() {
    let (set, cfg) = setup();
    let mode = CropMode::Rrc;
    let blurred = ViewConfig {
        jitter: Jitter {
            blur: true,
            ..Jitter::default()
        },
        ..cfg.clone()
    };
    let plain: Vec<_> = epoch(set.clone(), mode.clone(), cfg, 16, 9, 1, 2, 2, 0)
        .take(1)
        .collect();
    let a: Vec<_> = epoch(
        set.clone(),
        mode.clone(),
        blurred.clone(),
        16,
        9,
        1,
        2,
        2,
        0,
    )
    .take(1)
    .collect();
    let b: Vec<_> = epoch(set, mode, blurred, 16, 9, 1, 1, 2, 0)
        .take(1)
        .collect();
    assert_eq!(a[0].views, b[0].views, "deterministic with blur");
    assert_ne!(
        a[0].views[0], plain[0].views[0],
        "blur is applied to some images"
    );
}

fn spec(
    source: viewcraft::data::loader::CropSource,
    size: usize,
    augment: viewcraft::data::loader::Augment,
) -> viewcraft::data::loader::ViewSpec {
    viewcraft::data::loader::ViewSpec {
        source,
        size,
        rrc: RrcParams::default(),
        augment,
        mask: viewcraft::data::loader::ViewMask::None,
    }
}

#[test]
fn view_specs_give_one_tensor_per_view_at_its_size() {
    use viewcraft::data::loader::{Augment, CropSource};
    let (set, mut cfg) = setup();
    cfg.views = vec![
        spec(CropSource::Box, 32, Augment::Ssl),
        spec(CropSource::Scene, 24, Augment::Flip),
        spec(CropSource::Scene, 17, Augment::None),
    ];
    let a: Vec<_> = epoch(set.clone(), CropMode::Rrc, cfg.clone(), 8, 3, 1, 1, 2, 0).collect();
    let b: Vec<_> = epoch(set, CropMode::Rrc, cfg, 8, 3, 1, 3, 2, 0).collect();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.sizes, [32, 24, 17]);
        for (v, s) in x.sizes.iter().enumerate() {
            assert_eq!(x.views[v].len(), 8 * 3 * s * s, "view {v}");
        }
        assert_eq!(x.views, y.views, "whatever the worker count");
    }
}

#[test]
fn object_mode_crops_from_proposals_deterministically() {
    use viewcraft::crop::object::ObjectCrop;
    use viewcraft::data::loader::{Augment, CropSource};
    let (set, mut cfg) = setup();
    cfg.views = vec![
        spec(CropSource::Object, 32, Augment::None),
        spec(CropSource::Dilated, 32, Augment::None),
    ];
    let props = |b: [f32; 4]| Arc::new(vec![vec![b, [0.5, 0.5, 0.9, 0.9]]; set.len()]);
    let mode = |p, swap| CropMode::Objects {
        crop: ObjectCrop::default(),
        proposals: p,
        swap,
    };
    let run = |m: CropMode, workers| -> Vec<_> {
        epoch(set.clone(), m, cfg.clone(), 8, 5, 2, workers, 2, 0)
            .take(2)
            .collect()
    };
    let a = run(mode(props([0.0, 0.0, 0.3, 0.3]), false), 1);
    let b = run(mode(props([0.0, 0.0, 0.3, 0.3]), false), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.views, y.views, "deterministic whatever the worker count");
    }
    let c = run(mode(props([0.6, 0.6, 0.95, 0.95]), false), 2);
    assert_ne!(a[0].views[0], c[0].views[0], "proposals change the crops");
    let rrc = run(CropMode::Rrc, 2);
    assert_ne!(
        a[0].views[0], rrc[0].views[0],
        "object crops are not the warm-up's RRC"
    );
    // With swap, some images trade their two views (same crops, other order).
    let s = run(mode(props([0.0, 0.0, 0.3, 0.3]), true), 2);
    let px = 3 * 32 * 32;
    let (mut swapped, mut kept) = (0, 0);
    for j in 0..8 {
        let img = |b: &viewcraft::data::loader::Batch, v: usize| {
            b.views[v][j * px..(j + 1) * px].to_vec()
        };
        if img(&s[0], 0) == img(&a[0], 1) && img(&s[0], 1) == img(&a[0], 0) {
            swapped += 1;
        } else if img(&s[0], 0) == img(&a[0], 0) {
            kept += 1;
        }
    }
    assert!(
        swapped > 0 && kept > 0 && swapped + kept == 8,
        "swapped {swapped}, kept {kept}"
    );
}
