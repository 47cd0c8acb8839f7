//! `viewcraft viz`: heatmaps, boxes, object proposals and crops of a checkpoint's model for
//! the first N training images, as PNGs plus `boxes.json` and `proposals.json`.

use std::path::Path;

use crate::autograd::Tape;
use crate::crop::heatmap::boxes;
use crate::crop::proposals::{from_maps, heat_maps};
use crate::crop::sampler::{BoxF, RrcParams, WHOLE_IMAGE};
use crate::crop::viz;
use crate::data::{normalization, Split};
use crate::error::{Error, Result};
use crate::tensor::Device;
use crate::train::checkpoint::load_backbone;

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
    let (rrc, alpha) = run_cfg.as_ref().map_or((RrcParams::default(), 0.1), |c| {
        (
            RrcParams {
                scale: (c.crop.scale[0], c.crop.scale[1]),
                ratio: (c.crop.ratio[0], c.crop.ratio[1]),
            },
            c.crop.alpha,
        )
    });
    viz::views_png(&set, &bxs[..rows], rrc, alpha, 4, &out.join("views.png"))?;
    let area = bxs
        .iter()
        .map(|b| ((b[2] - b[0]) * (b[3] - b[1])) as f64)
        .sum::<f64>()
        / bxs.len().max(1) as f64;
    let per_image = props.iter().map(Vec::len).sum::<usize>() as f64 / props.len().max(1) as f64;
    println!(
        "wrote heatmaps.png, boxes.png, proposals.png, views.png, boxes.json and proposals.json ({} images, k = {k}, mean box area {area:.3}, {per_image:.2} proposals per image) to {}",
        set.len(),
        out.display()
    );
    Ok(())
}
