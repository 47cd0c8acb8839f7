//! STL-10 in its binary format (`stl10_binary/`): `{train,test,unlabeled}_X.bin` hold uint8
//! images of 3×96×96, each channel plane stored column-major (pixel (c, y, x) at
//! c·9216 + x·96 + y); `{train,test}_y.bin` hold one 1-based label byte per image. The
//! unlabeled split has no labels (they are set to 0 and must not be used for evaluation).

use std::path::{Path, PathBuf};

use super::ImageSet;
use crate::error::{Error, Result};

pub const SIDE: usize = 96;
const IMAGE: usize = 3 * SIDE * SIDE;

pub const CLASSES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];

fn dir(root: &Path) -> PathBuf {
    let inner = root.join("stl10_binary");
    if inner.is_dir() {
        inner
    } else {
        root.to_path_buf()
    }
}

/// Images of `X.bin` in CHW row-major order.
fn read_images(path: &Path, limit: usize) -> Result<(Vec<u8>, usize)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    if bytes.is_empty() || !bytes.len().is_multiple_of(IMAGE) {
        return Err(Error::file(
            path,
            format!(
                "truncated or not an STL-10 image file: {} bytes is not a positive multiple of {IMAGE} (3×96×96)",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / IMAGE;
    let n = if limit > 0 { n.min(limit) } else { n };
    let mut out = vec![0u8; n * IMAGE];
    for (i, img) in bytes.chunks_exact(IMAGE).take(n).enumerate() {
        let o = &mut out[i * IMAGE..(i + 1) * IMAGE];
        for c in 0..3 {
            for x in 0..SIDE {
                for y in 0..SIDE {
                    o[(c * SIDE + y) * SIDE + x] = img[c * SIDE * SIDE + x * SIDE + y];
                }
            }
        }
    }
    Ok((out, n))
}

fn read_labels(path: &Path, n: usize) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    if bytes.len() < n {
        return Err(Error::file(
            path,
            format!("holds {} labels for {n} images", bytes.len()),
        ));
    }
    bytes[..n]
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if (1..=10).contains(&l) {
                Ok(l as u32 - 1)
            } else {
                Err(Error::file(
                    path,
                    format!("record {i}: label {l} is not a class (1..=10, 1-based)"),
                ))
            }
        })
        .collect()
}

/// Split `name` (`train`, `test`, `unlabeled`), at most `limit` images (0 = all).
pub fn load(root: &Path, name: &str, limit: usize) -> Result<ImageSet> {
    if !root.is_dir() {
        return Err(Error::file(root, "dataset directory not found"));
    }
    let d = dir(root);
    super::verify_sha256sums(&d)?;
    let (pixels, n) = read_images(&d.join(format!("{name}_X.bin")), limit)?;
    let labels = if name == "unlabeled" {
        vec![0; n]
    } else {
        read_labels(&d.join(format!("{name}_y.bin")), n)?
    };
    Ok(ImageSet {
        pixels,
        labels,
        height: SIDE,
        width: SIDE,
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}

/// Pre-training images: train followed by unlabeled (SPEC A.4), at most `limit` in all.
pub fn load_pretrain(root: &Path, limit: usize) -> Result<ImageSet> {
    let mut set = load(root, "train", limit)?;
    let rest = if limit > 0 {
        limit.saturating_sub(set.len())
    } else {
        0
    };
    if limit == 0 || rest > 0 {
        let u = load(root, "unlabeled", rest)?;
        set.pixels.extend(u.pixels);
        set.labels.extend(u.labels);
    }
    Ok(set)
}
