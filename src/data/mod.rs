//! Datasets. Images are kept as uint8 CHW planes (what every format stores), converted to
//! normalised f32 by the augmentation pipeline.

pub mod augment;
pub mod cifar;
pub mod filters;
pub mod image_folder;
pub mod loader;
pub mod masking;
pub mod pickle;
pub mod stl10;
pub mod strong;

use std::path::Path;

use crate::error::{Error, Result};

/// An in-memory labelled image dataset of fixed-size RGB images.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// [N, 3, H, W] uint8, channel planes.
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub height: usize,
    pub width: usize,
    pub classes: Vec<String>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The CHW bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = 3 * self.height * self.width;
        &self.pixels[i * s..(i + 1) * s]
    }
    /// Images `range` with the evaluation transform (normalisation only), as a tensor
    /// [len, 3, H, W] on `device`.
    pub fn eval_batch(
        &self,
        range: std::ops::Range<usize>,
        mean: [f32; 3],
        std: [f32; 3],
        device: &crate::tensor::Device,
    ) -> Result<crate::tensor::Tensor> {
        self.eval_batch_with(range, mean, std, false, device)
    }

    /// [`ImageSet::eval_batch`], each image high-passed after normalisation when
    /// `high_pass` (the inputs of a run that masked with `hp`, SPEC B.3).
    pub fn eval_batch_with(
        &self,
        range: std::ops::Range<usize>,
        mean: [f32; 3],
        std: [f32; 3],
        high_pass: bool,
        device: &crate::tensor::Device,
    ) -> Result<crate::tensor::Tensor> {
        let (h, w, n) = (self.height, self.width, range.len());
        let mut x = Vec::with_capacity(n * 3 * h * w);
        for i in range {
            let v = augment::normalize(&augment::Rgb::new(h, w, self.image(i).to_vec()), mean, std);
            if high_pass {
                x.extend(filters::high_pass(&v, (3, h, w))?);
            } else {
                x.extend(v);
            }
        }
        crate::tensor::Tensor::from_vec(x, &[n, 3, h, w], device)
    }

    /// The first `n` images (all when `n` is 0 or larger than the set).
    pub fn truncate(mut self, n: usize) -> ImageSet {
        if n > 0 && n < self.len() {
            self.pixels.truncate(n * 3 * self.height * self.width);
            self.labels.truncate(n);
        }
        self
    }
}

/// Verify `dir/SHA256SUMS` (lines "hex  name") against the files it lists; a missing sums
/// file is fine, a mismatch or a missing listed file is an error naming the file.
pub fn verify_sha256sums(dir: &Path) -> Result<usize> {
    use sha2::{Digest, Sha256};
    let sums = dir.join("SHA256SUMS");
    let Ok(text) = std::fs::read_to_string(&sums) else {
        return Ok(0);
    };
    let mut n = 0;
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (hex, name) = line
            .split_once(char::is_whitespace)
            .map(|(h, n)| (h, n.trim().trim_start_matches('*')))
            .ok_or_else(|| {
                Error::file(
                    &sums,
                    format!("line {}: expected `<sha256>  <file>`", lineno + 1),
                )
            })?;
        let path = dir.join(name);
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::file(&path, format!("listed in SHA256SUMS but unreadable: {e}")))?;
        let got = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        if !got.eq_ignore_ascii_case(hex) {
            return Err(Error::file(
                &path,
                format!(
                    "checksum mismatch (SHA256 {got}, SHA256SUMS says {hex}): the file is corrupt"
                ),
            ));
        }
        n += 1;
    }
    Ok(n)
}

/// Which split of a dataset.
pub use cifar::Split;

/// Dataset kinds `data.dataset` accepts.
pub const DATASETS: [&str; 4] = ["cifar10", "cifar100", "stl10", "imagefolder"];

/// The `split` of dataset `name` under `root`, first `subset` images (0 = all); `size`
/// resizes ImageFolder images (0 = keep).
pub fn open(name: &str, root: &Path, split: Split, subset: usize, size: usize) -> Result<ImageSet> {
    let variant = match name {
        "cifar10" => cifar::Variant::Cifar10,
        "cifar100" => cifar::Variant::Cifar100,
        "stl10" => {
            return stl10::load(
                root,
                if split == Split::Train {
                    "train"
                } else {
                    "test"
                },
                subset,
            )
        }
        "imagefolder" => {
            return image_folder::load(
                &image_folder::split_dir(root, split == Split::Train)?,
                size,
                subset,
            )
        }
        other => {
            return Err(Error::Config {
                field: "data.dataset".into(),
                msg: format!("`{other}` is not one of {}", DATASETS.join(", ")),
            })
        }
    };
    Ok(cifar::load(root, variant, split)?.truncate(subset))
}

/// The pre-training images: the training split, and for STL-10 train + unlabeled (SPEC A.4).
pub fn open_pretrain(name: &str, root: &Path, subset: usize, size: usize) -> Result<ImageSet> {
    match name {
        "stl10" => stl10::load_pretrain(root, subset),
        _ => open(name, root, Split::Train, subset, size),
    }
}

/// Per-dataset normalisation (SPEC A.4); ImageFolder gets ImageNet's, unknown names CIFAR-10's.
pub fn normalization(name: &str) -> ([f32; 3], [f32; 3]) {
    augment::mean_std(name)
        .or_else(|| augment::mean_std("cifar10"))
        .unwrap_or(([0.5; 3], [0.5; 3]))
}
