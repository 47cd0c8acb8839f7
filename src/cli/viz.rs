//! `viewcraft viz`: heatmaps, boxes, object proposals and crops of a checkpoint's model for
//! the first N training images, as PNGs plus `boxes.json` and `proposals.json`.

use std::path::Path;

use crate::autograd::Tape;
use crate::config::{Config, MethodCfg};
use crate::crop::heatmap::boxes;
use crate::crop::proposals::{from_maps, heat_maps};
use crate::crop::sampler::{BoxF, RrcParams, WHOLE_IMAGE};
use crate::crop::viz::{self, input_rgb, Panel};
use crate::crop::CropKind;
use crate::data::augment::Jitter;
use crate::data::loader::{
    make_views, mask_inputs, Augment, Batch, CropMode, ViewConfig, ViewMask,
};
use crate::data::masking::{BatchNoise, Strategy};
use crate::data::ImageSet;
use crate::data::{normalization, Split};
use crate::error::{Error, Result};
use crate::nn::resnet::ResNet;
use crate::nn::ParamStore;
use crate::ops::saliency_mask::{cell_saliency, foreground};
use crate::tensor::Device;
use crate::tensor::Tensor;
use crate::train::checkpoint::load_backbone;
use crate::train::masking::{MaskTraining, Masker};

pub fn run(
    ckpt: &Path,
    out: &Path,
    limit: usize,
    k: Option<f32>,
    data: Option<&Path>,
    dataset: Option<&str>,
    device: &Device,
) -> Result<()> {
    if limit == 0 {
        return Err(Error::Config {
            field: "--limit".into(),
            msg: "must be at least 1".into(),
        });
    }
    let run_cfg = super::eval::checkpoint_config(ckpt)?;
    let k = k.unwrap_or_else(|| run_cfg.as_ref().map_or(0.1, |c| c.crop.box_thresh));
    if !(k > 0.0 && k < 1.0) {
        return Err(Error::Config {
            field: "--k".into(),
            msg: format!("{k} must be in (0, 1)"),
        });
    }
    let d = super::eval::checkpoint_data(ckpt, data, dataset)?;
    let set = crate::data::open(
        &d.dataset,
        &d.root_path(),
        Split::Train,
        limit,
        d.image_size,
    )?;
    let (mean, std) = normalization(&d.dataset);
    let (net, mut store) = load_backbone(ckpt, device)?;
    std::fs::create_dir_all(out)
        .map_err(|e| Error::file(out, format!("cannot create the output directory: {e}")))?;
    let (h, w) = (set.height, set.width);
    let (mut heat, mut bxs): (Vec<Option<Vec<f32>>>, Vec<BoxF>) = (Vec::new(), Vec::new());
    let max_proposals = run_cfg
        .as_ref()
        .map_or(crate::crop::proposals::DEFAULT_MAX_PROPOSALS, |c| {
            c.crop.max_proposals
        });
    let mut props: Vec<Vec<BoxF>> = Vec::new();
    for start in (0..set.len()).step_by(64) {
        let end = (start + 64).min(set.len());
        let mut tape = Tape::new();
        let bound = store.bind(&mut tape, false);
        let x = tape.input(set.eval_batch(start..end, mean, std, device)?);
        let fm = tape.no_grad(|t| net.forward_features(t, &mut store, &bound, x, false))?;
        let f = tape.value(fm);
        let n = f.shape().first().copied().unwrap_or(0);
        // Boxes from the same kernel training uses; a constant map gets the whole image.
        let (b, v) = boxes(f, (h, w), k)?;
        let (b, v) = (b.to_vec()?, v.to_vec()?);
        for j in 0..n {
            bxs.push(if v[j] > 0.5 {
                [b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3]]
            } else {
                WHOLE_IMAGE
            });
        }
        // The heatmaps training uses (on the device), pictured and labelled into proposals
        // by the code objectcrop's refreshes run (none: nothing above k).
        let maps = heat_maps(f, (h, w))?;
        props.extend(
            from_maps(&maps, (h, w), k, max_proposals)
                .into_iter()
                .map(Option::unwrap_or_default),
        );
        heat.extend(maps);
    }
    let json = serde_json::json!({
        "k": k,
        "checkpoint": ckpt.display().to_string(),
        "dataset": d.dataset,
        "images": set.len(),
        "convention": "[top, left, bottom, right] as fractions; bottom/right = last covered pixel / size",
        "boxes": bxs,
    });
    crate::train::atomic::write_atomic(&out.join("boxes.json"), format!("{json}\n").as_bytes())?;
    viz::heatmaps_png(&set, &heat, &bxs, &out.join("heatmaps.png"))?;
    viz::boxes_png(&set, &bxs, &out.join("boxes.png"))?;
    let json = serde_json::json!({
        "k": k,
        "max_proposals": max_proposals,
        "convention": "per image, ranked by summed heat: [top, left, bottom, right] as fractions; bottom/right = last covered pixel / size; [] = nothing above k",
        "proposals": props,
    });
    crate::train::atomic::write_atomic(
        &out.join("proposals.json"),
        format!("{json}\n").as_bytes(),
    )?;
    viz::proposals_png(&set, &props, &out.join("proposals.png"))?;
    let rows = set.len().min(8);
    let (rrc, alpha) = run_cfg
        .as_ref()
        .map_or((RrcParams::default(), 0.1), |c| (c.rrc(), c.crop.alpha));
    viz::views_png(&set, &bxs[..rows], rrc, alpha, 4, &out.join("views.png"))?;
    let area = bxs
        .iter()
        .map(|b| ((b[2] - b[0]) * (b[3] - b[1])) as f64)
        .sum::<f64>()
        / bxs.len().max(1) as f64;
    let per_image = props.iter().map(Vec::len).sum::<usize>() as f64 / props.len().max(1) as f64;
    let strong = match run_cfg.as_ref() {
        Some(c) if matches!(c.method, MethodCfg::Clsa(_)) => {
            strong_png(c, &set, (mean, std), &out.join("strong.png"))?;
            ", strong.png"
        }
        _ => "",
    };
    let masks = match run_cfg.as_ref().filter(|c| c.mask.on()) {
        Some(c) => {
            let own = (net.clone(), store.clone());
            masks_png(c, &set, own, (mean, std), device, &out.join("masks.png"))?;
            ", masks.png"
        }
        None => "",
    };
    println!(
        "wrote heatmaps.png, boxes.png, proposals.png, views.png{masks}{strong}, boxes.json and proposals.json ({} images, k = {k}, mean box area {area:.3}, {per_image:.2} proposals per image) to {}",
        set.len(),
        out.display()
    );
    Ok(())
}

/// `strong.png` of a CLSA run: for the first 8 images, the image and 6 views of its first
/// strong spec (RandomResizedCrop, the weak recipe, RandAugment), as its loader makes them.
fn strong_png(
    c: &Config,
    set: &ImageSet,
    (mean, std): ([f32; 3], [f32; 3]),
    path: &Path,
) -> Result<()> {
    let size = set.height;
    let Some(spec) = c
        .view_specs(size)
        .into_iter()
        .find(|v| v.augment == Augment::Strong)
    else {
        return Ok(());
    };
    let view = ViewConfig {
        views: vec![spec; 6],
        jitter: Jitter {
            blur: c.data.blur,
            ..Jitter::default()
        },
        mean,
        std,
        mask: None,
    };
    let rows: Vec<Vec<Panel>> = (0..set.len().min(8))
        .map(|i| {
            let mut r = vec![Panel {
                img: crate::data::augment::Rgb::new(set.height, set.width, set.image(i).to_vec()),
                foreground: None,
            }];
            r.extend(
                make_views(set, i, &CropMode::Rrc, &view, c.train.seed, 1)
                    .iter()
                    .map(|x| Panel {
                        img: input_rgb(x, spec.size, mean, std, false),
                        foreground: None,
                    }),
            );
            r
        })
        .collect();
    viz::panels_png(&rows, path)
}

/// `masks.png` of a run that masked: for the first 8 images, the views its loader makes
/// (epoch 1, RandomResizedCrop) masked as its steps mask them, by the checkpoint's backbone
/// (or the run's saliency backbone).
fn masks_png(
    c: &Config,
    set: &ImageSet,
    own: (ResNet, ParamStore),
    (mean, std): ([f32; 3], [f32; 3]),
    device: &Device,
    path: &Path,
) -> Result<()> {
    let Some(training) = MaskTraining::from_config(c) else {
        return Ok(());
    };
    let (recipe, size) = (training.recipe, set.height);
    let specs = crate::train::views_or_default(
        c.view_specs(size),
        &CropKind::Rcrop,
        size,
        c.rrc(),
        Some(&training),
    );
    let view = ViewConfig {
        views: specs,
        jitter: Jitter {
            blur: c.data.blur,
            ..Jitter::default()
        },
        mean,
        std,
        mask: Some(recipe),
    };
    let (seed, n, nv) = (c.train.seed, set.len().min(8), view.views.len());
    let noise: Vec<BatchNoise> = (0..nv)
        .map(|v| {
            let s = &view.views[v];
            BatchNoise::draw(
                &recipe,
                s.size,
                s.mask == ViewMask::Pos,
                (seed, 1, 0, v as u64),
            )
        })
        .collect();
    let mut batch = Batch {
        views: vec![Vec::new(); nv],
        sizes: view.views.iter().map(|v| v.size).collect(),
        indices: (0..n).collect(),
        labels: set.labels[..n].to_vec(),
        plain: vec![Vec::new(); nv],
        plans: vec![Vec::new(); nv],
        fills: vec![Vec::new(); nv],
    };
    for i in 0..n {
        let mut vs = make_views(set, i, &CropMode::Rrc, &view, seed, 1);
        let m = mask_inputs(&mut vs, i, &view, &noise, seed, 1);
        for (v, x) in vs.into_iter().enumerate() {
            batch.views[v].extend(x);
            batch.plain[v].extend(&m.plain[v]);
            batch.plans[v].extend(&m.plans[v]);
            batch.fills[v].extend(&m.fills[v]);
        }
    }
    let mut masker = match &training.saliency_backbone {
        Some(p) => {
            let (net, store) = load_backbone(p, device)?;
            Masker::with_backbone(recipe, net, store)
        }
        None => Masker::with_backbone(recipe, own.0, own.1),
    };
    let shape = |v: usize| [n, 3, batch.sizes[v], batch.sizes[v]];
    let mut xs = (0..nv)
        .map(|v| Tensor::from_vec(batch.views[v].clone(), &shape(v), device))
        .collect::<Result<Vec<_>>>()?;
    masker.apply(None, &view, &batch, &mut xs, device)?;
    // The unmasked picture of a view (its plain version for hp) and its foreground cells.
    let g = recipe.grid;
    let hp = recipe.strategy == Strategy::HighPass;
    let plain = |v: usize| -> &Vec<f32> {
        if batch.plain[v].is_empty() {
            &batch.views[v]
        } else {
            &batch.plain[v]
        }
    };
    let mut fg: Vec<Option<Vec<f32>>> = vec![None; nv];
    for (v, slot) in fg.iter_mut().enumerate() {
        if view.saliency_source(v) == Some(v) || (0..nv).any(|u| view.saliency_source(u) == Some(v))
        {
            let f =
                masker.features(None, Tensor::from_vec(plain(v).clone(), &shape(v), device)?)?;
            *slot = Some(cell_saliency(&f, g)?.to_vec()?);
        }
    }
    let cells = g * g;
    let rows: Vec<Vec<Panel>> = (0..n)
        .map(|i| -> Result<Vec<Panel>> {
            let mut panels = Vec::new();
            for v in 0..nv {
                let sz = batch.sizes[v];
                let hw = 3 * sz * sz;
                let one = |t: &[f32]| t[i * hw..(i + 1) * hw].to_vec();
                // Sources first (with their foreground cells), then the masked view.
                if let Some(sal) = &fg[v] {
                    panels.push(Panel {
                        img: input_rgb(&one(plain(v)), sz, mean, std, false),
                        foreground: Some((foreground(&sal[i * cells..(i + 1) * cells]), g)),
                    });
                }
                if view.saliency_source(v).is_some() {
                    panels.push(Panel {
                        img: input_rgb(&one(&xs[v].to_vec()?), sz, mean, std, hp),
                        foreground: None,
                    });
                }
            }
            Ok(panels)
        })
        .collect::<Result<_>>()?;
    viz::panels_png(&rows, path)
}
