//! ImageFolder: `root/<class>/*.{png,jpg,jpeg}` with classes in sorted order (torchvision's
//! convention), or a flat folder of unlabeled images (one class, `unlabeled`). Images are
//! decoded to RGB; with `size > 0` each is resized to size×size (PIL-style bilinear with
//! antialiasing), otherwise all must share one size. An unreadable image is an error naming
//! the file.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::augment::{resized_crop, Rgb};
use super::ImageSet;
use crate::crop::sampler::Crop;
use crate::error::{Error, Result};

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// The images under `root` (at most `limit`, 0 = all), in sorted class then file order.
pub fn load(root: &Path, size: usize, limit: usize) -> Result<ImageSet> {
    if !root.is_dir() {
        return Err(Error::file(root, "dataset directory not found"));
    }
    let entries = sorted_entries(root)?;
    let class_dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    let (classes, mut files): (Vec<String>, Vec<(PathBuf, u32)>) = if class_dirs.is_empty() {
        (
            vec!["unlabeled".into()],
            entries
                .iter()
                .filter(|p| is_image(p))
                .map(|p| (p.clone(), 0))
                .collect(),
        )
    } else {
        let mut files = Vec::new();
        for (c, d) in class_dirs.iter().enumerate() {
            for p in sorted_entries(d)? {
                if is_image(&p) {
                    files.push((p, c as u32));
                }
            }
        }
        (
            class_dirs
                .iter()
                .map(|d| d.file_name().unwrap_or_default().to_string_lossy().into())
                .collect(),
            files,
        )
    };
    if files.is_empty() {
        return Err(Error::file(
            root,
            "no .png/.jpg images (expected root/<class>/*.png or a flat folder of images)",
        ));
    }
    if limit > 0 {
        files.truncate(limit);
    }
    let decoded: Vec<Rgb> = files
        .par_iter()
        .map(|(p, _)| {
            let img = image::open(p)
                .map_err(|e| Error::file(p, format!("unreadable image: {e}")))?
                .to_rgb8();
            let (w, h) = (img.width() as usize, img.height() as usize);
            let mut planes = vec![0u8; 3 * h * w];
            for (i, px) in img.pixels().enumerate() {
                for c in 0..3 {
                    planes[c * h * w + i] = px.0[c];
                }
            }
            let rgb = Rgb::new(h, w, planes);
            Ok(if size > 0 && (h != size || w != size) {
                let whole = Crop {
                    top: 0,
                    left: 0,
                    height: h,
                    width: w,
                };
                resized_crop(&rgb, whole, size, size)
            } else {
                rgb
            })
        })
        .collect::<Result<_>>()?;
    let (h, w) = (decoded[0].h, decoded[0].w);
    if let Some(i) = decoded.iter().position(|r| r.h != h || r.w != w) {
        return Err(Error::file(
            &files[i].0,
            format!(
                "is {}×{} but the first image is {h}×{w}; set data.image_size to resize them all",
                decoded[i].w, decoded[i].h
            ),
        ));
    }
    Ok(ImageSet {
        pixels: decoded.into_iter().flat_map(|r| r.data).collect(),
        labels: files.iter().map(|f| f.1).collect(),
        height: h,
        width: w,
        classes,
    })
}

/// The split folder of an ImageFolder dataset: `root/train` or `root/val` (else
/// `root/test`); a root without those folders is the training split itself.
pub fn split_dir(root: &Path, train: bool) -> Result<PathBuf> {
    if train {
        let t = root.join("train");
        return Ok(if t.is_dir() { t } else { root.to_path_buf() });
    }
    ["val", "test"]
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_dir())
        .ok_or_else(|| {
            Error::file(
                root,
                "no val/ or test/ folder: evaluation needs one (root/train/<class>/…, root/val/<class>/…)",
            )
        })
}
