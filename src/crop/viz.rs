//! Pictures of what ContrastiveCrop sees: heatmaps over the images with their boxes, and
//! sampled views of RandomResizedCrop next to ContrastiveCrop (the paper's Figure 3). Images
//! are enlarged with nearest-neighbour sampling so every pixel stays visible.

use std::path::Path;

use image::{Rgb as Px, RgbImage};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::sampler::{BoxF, ContrastiveCrop, Crop, RrcParams};
use crate::data::augment::{resized_crop, Rgb};
use crate::data::ImageSet;
use crate::error::{Error, Result};

const BOX: Px<u8> = Px([0, 255, 0]);
const RRC: Px<u8> = Px([255, 220, 0]);
const CCROP: Px<u8> = Px([255, 40, 200]);
const GAP: u32 = 4;

/// The jet colour of v ∈ [0, 1].
pub fn jet(v: f32) -> [u8; 3] {
    let f = |x: f32| ((1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0) * 255.0) as u8;
    [f(3.0), f(2.0), f(1.0)]
}

/// An image enlarged `s` times.
fn tile(img: &Rgb, s: u32) -> RgbImage {
    RgbImage::from_fn(img.w as u32 * s, img.h as u32 * s, |x, y| {
        let (xx, yy) = ((x / s) as usize, (y / s) as usize);
        Px([img.at(0, yy, xx), img.at(1, yy, xx), img.at(2, yy, xx)])
    })
}

/// The image blended half-and-half with its heatmap (`heat` [h·w] at image resolution).
fn heat_tile(img: &Rgb, heat: Option<&[f32]>, s: u32) -> RgbImage {
    let mut t = tile(img, s);
    if let Some(heat) = heat {
        for (x, y, p) in t.enumerate_pixels_mut() {
            let c = jet(heat[(y / s) as usize * img.w + (x / s) as usize]);
            for (v, c) in p.0.iter_mut().zip(c) {
                *v = ((*v as u16 + c as u16) / 2) as u8;
            }
        }
    }
    t
}

/// A 2-pixel rectangle outline, pixel rectangle [y0, y1) × [x0, x1).
fn rect(img: &mut RgbImage, y0: u32, x0: u32, y1: u32, x1: u32, c: Px<u8>) {
    let (w, h) = img.dimensions();
    let (x1, y1) = (x1.min(w), y1.min(h));
    for t in 0..2 {
        for x in x0..x1 {
            for y in [y0 + t, y1.saturating_sub(1 + t)] {
                if y < h {
                    img.put_pixel(x, y, c);
                }
            }
        }
        for y in y0..y1 {
            for x in [x0 + t, x1.saturating_sub(1 + t)] {
                if x < w {
                    img.put_pixel(x, y, c);
                }
            }
        }
    }
}

/// Draw a normalised box (the reference's last-index convention: bottom/right are the last
/// covered pixel, so the outline includes that pixel).
fn draw_box(t: &mut RgbImage, b: BoxF, h: usize, w: usize, s: u32) {
    draw_box_in(t, b, h, w, s, BOX);
}

fn draw_box_in(t: &mut RgbImage, b: BoxF, h: usize, w: usize, s: u32, col: Px<u8>) {
    let py = |f: f32, n: usize| ((f * n as f32).round() as u32).min(n as u32 - 1);
    let (y0, x0, y1, x1) = (py(b[0], h), py(b[1], w), py(b[2], h), py(b[3], w));
    rect(t, y0 * s, x0 * s, (y1 + 1) * s, (x1 + 1) * s, col);
}

fn draw_crop(t: &mut RgbImage, c: Crop, s: u32, col: Px<u8>) {
    rect(
        t,
        c.top as u32 * s,
        c.left as u32 * s,
        (c.top + c.height) as u32 * s,
        (c.left + c.width) as u32 * s,
        col,
    );
}

/// Tiles in a grid of `cols` columns on a grey background.
fn grid(tiles: &[RgbImage], cols: usize) -> RgbImage {
    let (tw, th) = tiles.first().map_or((1, 1), |t| t.dimensions());
    let cols = cols.min(tiles.len()).max(1);
    let rows = tiles.len().div_ceil(cols).max(1);
    let mut out = RgbImage::from_pixel(
        cols as u32 * (tw + GAP) + GAP,
        rows as u32 * (th + GAP) + GAP,
        Px([48, 48, 48]),
    );
    for (i, t) in tiles.iter().enumerate() {
        let (r, c) = ((i / cols) as i64, (i % cols) as i64);
        image::imageops::overlay(
            &mut out,
            t,
            c * (tw + GAP) as i64 + GAP as i64,
            r * (th + GAP) as i64 + GAP as i64,
        );
    }
    out
}

/// A row of tiles side by side.
fn row(tiles: &[RgbImage]) -> RgbImage {
    grid(tiles, tiles.len())
}

fn save(img: &RgbImage, path: &Path) -> Result<()> {
    img.save(path)
        .map_err(|e| Error::file(path, format!("cannot write the picture: {e}")))
}

fn scale_for(h: usize) -> u32 {
    (128 / h.max(1)).max(1) as u32
}

/// `heatmaps.png`: per image, the image and its heatmap overlay with the box (8 pairs a row).
pub fn heatmaps_png(
    set: &ImageSet,
    heat: &[Option<Vec<f32>>],
    boxes: &[BoxF],
    path: &Path,
) -> Result<()> {
    let (h, w, s) = (set.height, set.width, scale_for(set.height));
    let tiles: Vec<RgbImage> = (0..heat.len())
        .flat_map(|i| {
            let img = Rgb::new(h, w, set.image(i).to_vec());
            let mut over = heat_tile(&img, heat[i].as_deref(), s);
            draw_box(&mut over, boxes[i], h, w, s);
            [tile(&img, s), over]
        })
        .collect();
    save(&grid(&tiles, 16), path)
}

/// `boxes.png`: every image with its box.
pub fn boxes_png(set: &ImageSet, boxes: &[BoxF], path: &Path) -> Result<()> {
    let (h, w, s) = (set.height, set.width, scale_for(set.height));
    let tiles: Vec<RgbImage> = (0..boxes.len())
        .map(|i| {
            let mut t = tile(&Rgb::new(h, w, set.image(i).to_vec()), s);
            draw_box(&mut t, boxes[i], h, w, s);
            t
        })
        .collect();
    save(&grid(&tiles, 16), path)
}

/// `proposals.png`: every image with its object proposals, the highest-ranked (most heat) in
/// green, the next in cyan, the rest in blue; an image without any proposal is left plain.
pub fn proposals_png(set: &ImageSet, proposals: &[Vec<BoxF>], path: &Path) -> Result<()> {
    let (h, w, s) = (set.height, set.width, scale_for(set.height));
    let colours = [BOX, Px([0, 220, 255]), Px([60, 90, 255])];
    let tiles: Vec<RgbImage> = proposals
        .iter()
        .enumerate()
        .map(|(i, list)| {
            let mut t = tile(&Rgb::new(h, w, set.image(i).to_vec()), s);
            // Lowest rank first so the best proposal is drawn on top.
            for (r, &b) in list.iter().enumerate().rev() {
                draw_box_in(&mut t, b, h, w, s, colours[r.min(2)]);
            }
            t
        })
        .collect();
    save(&grid(&tiles, 16), path)
}

/// `views.png`: one row per image — the image with its box; the outlines of `views`
/// RandomResizedCrop crops (yellow) and the crops themselves; the outlines of ContrastiveCrop
/// crops (magenta) and the crops themselves. Both samplers get the same seeds.
pub fn views_png(
    set: &ImageSet,
    boxes: &[BoxF],
    rrc: RrcParams,
    alpha: f64,
    views: usize,
    path: &Path,
) -> Result<()> {
    let (h, w, s) = (set.height, set.width, scale_for(set.height));
    let ccrop = ContrastiveCrop::new(rrc, alpha)?;
    let rows: Vec<RgbImage> = (0..boxes.len())
        .map(|i| {
            let img = Rgb::new(h, w, set.image(i).to_vec());
            let mut first = tile(&img, s);
            draw_box(&mut first, boxes[i], h, w, s);
            let mut tiles = vec![first];
            for (kind, col) in [(0, RRC), (1, CCROP)] {
                let mut rng = StdRng::seed_from_u64(i as u64);
                let crops: Vec<Crop> = (0..views)
                    .map(|_| match kind {
                        0 => rrc.sample(&mut rng, h, w),
                        _ => ccrop.sample(&mut rng, h, w, boxes[i]),
                    })
                    .collect();
                let mut outl = tile(&img, s);
                draw_box(&mut outl, boxes[i], h, w, s);
                for &c in &crops {
                    draw_crop(&mut outl, c, s, col);
                }
                tiles.push(outl);
                tiles.extend(crops.iter().map(|&c| tile(&resized_crop(&img, c, h, w), s)));
            }
            row(&tiles)
        })
        .collect();
    save(&stack(&rows), path)
}

/// Rows of one size stacked top to bottom.
fn stack(rows: &[RgbImage]) -> RgbImage {
    let (rw, rh) = rows.first().map_or((1, 1), |r| r.dimensions());
    let mut out = RgbImage::from_pixel(rw, rh * rows.len().max(1) as u32, Px([48, 48, 48]));
    for (k, r) in rows.iter().enumerate() {
        image::imageops::overlay(&mut out, r, 0, (k as u32 * rh) as i64);
    }
    out
}

/// A model input [3, S, S] as a picture: normalisation undone (`mean`, `std`), or, for
/// high-passed views (`stretch`), the image's own range mapped to 0..255.
pub fn input_rgb(x: &[f32], size: usize, mean: [f32; 3], std: [f32; 3], stretch: bool) -> Rgb {
    let hw = size * size;
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let data = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let u = if stretch {
                (v - lo) / (hi - lo).max(1e-12)
            } else {
                v * std[i / hw] + mean[i / hw]
            };
            (u * 255.0).round().clamp(0.0, 255.0) as u8
        })
        .collect();
    Rgb::new(size, size, data)
}

/// The boundary of the foreground cells of a `g`×`g` grid over a tile of a `size`-pixel
/// image enlarged `s` times: the cell edges between a foreground cell and a background cell
/// or the image border.
fn outline_cells(t: &mut RgbImage, fg: &[bool], g: usize, size: usize, s: u32) {
    let on = |r: i64, c: i64| {
        r >= 0 && c >= 0 && r < g as i64 && c < g as i64 && fg[r as usize * g + c as usize]
    };
    let span = |i: usize| super::saliency::cell_span(i, g, size);
    let (w, h) = t.dimensions();
    let mut put = |x: u32, y: u32| {
        if x < w && y < h {
            t.put_pixel(x, y, BOX);
        }
    };
    for r in 0..g as i64 {
        for c in 0..g as i64 {
            if !on(r, c) {
                continue;
            }
            let (ys, xs) = (span(r as usize), span(c as usize));
            let (y0, y1, x0, x1) = (
                ys.start as u32 * s,
                ys.end as u32 * s,
                xs.start as u32 * s,
                xs.end as u32 * s,
            );
            for k in 0..2 {
                if !on(r - 1, c) {
                    (x0..x1).for_each(|x| put(x, y0 + k));
                }
                if !on(r + 1, c) {
                    (x0..x1).for_each(|x| put(x, (y1 - 1).saturating_sub(k)));
                }
                if !on(r, c - 1) {
                    (y0..y1).for_each(|y| put(x0 + k, y));
                }
                if !on(r, c + 1) {
                    (y0..y1).for_each(|y| put((x1 - 1).saturating_sub(k), y));
                }
            }
        }
    }
}

/// One picture of a panel grid (`masks.png`, `strong.png`): an image and, optionally, the
/// foreground cells of a `grid`×`grid` grid to outline.
pub struct Panel {
    pub img: Rgb,
    pub foreground: Option<(Vec<bool>, usize)>,
}

/// Rows of panels (`masks.png`: per image the query with its foreground cells outlined, the
/// masked query, the key with its foreground cells, the hard negatives; `strong.png`: per image
/// the image and strong views), every panel enlarged to the first one's size.
pub fn panels_png(rows: &[Vec<Panel>], path: &Path) -> Result<()> {
    let size = rows.first().and_then(|r| r.first()).map_or(1, |p| p.img.h);
    let s = scale_for(size);
    let tiles: Vec<RgbImage> = rows
        .iter()
        .map(|r| {
            let panels: Vec<RgbImage> = r
                .iter()
                .map(|p| {
                    let resized = if p.img.h == size {
                        p.img.clone()
                    } else {
                        let c = Crop {
                            top: 0,
                            left: 0,
                            height: p.img.h,
                            width: p.img.w,
                        };
                        resized_crop(&p.img, c, size, size)
                    };
                    let mut t = tile(&resized, s);
                    if let Some((fg, g)) = &p.foreground {
                        outline_cells(&mut t, fg, *g, size, s);
                    }
                    t
                })
                .collect();
            row(&panels)
        })
        .collect();
    save(&stack(&tiles), path)
}
