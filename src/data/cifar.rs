//! CIFAR-10 / CIFAR-100 in the official binary format: fixed-size records of label byte(s)
//! followed by 3072 bytes (the R, G and B 32×32 planes). CIFAR-10: `data_batch_{1..5}.bin`
//! and `test_batch.bin`, 1 label byte; CIFAR-100: `train.bin` / `test.bin`, a coarse and a
//! fine label byte (the fine one is used). Batches that are missing are skipped (the shipped
//! subset has four training batches); at least one must exist.

use std::path::{Path, PathBuf};

use super::{verify_sha256sums, ImageSet};
use crate::error::{Error, Result};

pub const IMAGE_BYTES: usize = 3 * 32 * 32;

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    Cifar100,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Variant {
    fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }
    fn num_classes(self) -> u32 {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
    fn files(self, split: Split) -> Vec<&'static str> {
        match (self, split) {
            (Variant::Cifar10, Split::Train) => vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            (Variant::Cifar10, Split::Test) => vec!["test_batch.bin"],
            (Variant::Cifar100, Split::Train) => vec!["train.bin"],
            (Variant::Cifar100, Split::Test) => vec!["test.bin"],
        }
    }
}

/// Parse one binary batch; errors name the file, the record and what is wrong.
pub fn parse_batch(path: &Path, bytes: &[u8], variant: Variant, set: &mut ImageSet) -> Result<()> {
    let rec = variant.label_bytes() + IMAGE_BYTES;
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(Error::file(
            path,
            format!("truncated or not a {variant:?} binary batch: {} bytes is not a positive multiple of the {rec}-byte record", bytes.len()),
        ));
    }
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[variant.label_bytes() - 1] as u32;
        if label >= variant.num_classes() {
            return Err(Error::file(
                path,
                format!(
                    "record {i}: label {label} is not a class (0..{})",
                    variant.num_classes()
                ),
            ));
        }
        set.labels.push(label);
        set.pixels.extend_from_slice(&r[variant.label_bytes()..]);
    }
    Ok(())
}

/// Load a split from `root` (checking `SHA256SUMS` when present).
pub fn load(root: &Path, variant: Variant, split: Split) -> Result<ImageSet> {
    if !root.is_dir() {
        return Err(Error::file(root, "dataset directory not found"));
    }
    verify_sha256sums(root)?;
    let classes = match variant {
        Variant::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        Variant::Cifar100 => (0..100).map(|i| format!("class_{i}")).collect(),
    };
    let mut set = ImageSet {
        pixels: Vec::new(),
        labels: Vec::new(),
        height: 32,
        width: 32,
        classes,
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for name in variant.files(split) {
        let path = root.join(name);
        if !path.exists() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e))?;
        parse_batch(&path, &bytes, variant, &mut set)?;
        found.push(path);
    }
    if found.is_empty() {
        return Err(Error::file(
            root,
            format!(
                "no {variant:?} {split:?} batch found (expected {})",
                variant.files(split).join(", ")
            ),
        ));
    }
    Ok(set)
}

/// The CIFAR-10 subset shipped with the project (first 1017 images of each official batch;
/// four training batches and the test batch).
pub fn embedded_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-subset")
}
