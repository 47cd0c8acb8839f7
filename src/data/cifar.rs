//! CIFAR-10 / CIFAR-100 in the official binary format: fixed-size records of label byte(s)
//! followed by 3072 bytes (the R, G and B 32×32 planes). CIFAR-10: `data_batch_{1..5}.bin`
//! and `test_batch.bin`, 1 label byte; CIFAR-100: `train.bin` / `test.bin`, a coarse and a
//! fine label byte (the fine one is used). Also the Python-pickle layout torchvision downloads
//! (`cifar-10-batches-py`: `data_batch_{1..5}`, `test_batch`; `cifar-100-python`: `train`,
//! `test`, fine labels), and a root that contains one of those folders. Batches that are
//! missing are skipped (the shipped subset has four training batches); at least one must exist.

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
    /// The pickle layout's file names (the binary names without `.bin`).
    fn pickle_files(self, split: Split) -> Vec<&'static str> {
        self.files(split)
            .into_iter()
            .map(|f| f.trim_end_matches(".bin"))
            .collect()
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

/// Parse one pickled batch (a dict with `data` [N, 3072] uint8 and `labels` /
/// `fine_labels`); errors name the file and what is wrong.
pub fn parse_pickle_batch(
    path: &Path,
    bytes: &[u8],
    variant: Variant,
    set: &mut ImageSet,
) -> Result<()> {
    let bad = |m: String| Error::file(path, m);
    let v = super::pickle::parse(bytes)
        .map_err(|e| bad(format!("not a readable CIFAR pickle: {e}")))?;
    let key = match variant {
        Variant::Cifar10 => "labels",
        Variant::Cifar100 => "fine_labels",
    };
    let labels = v
        .get(key)
        .and_then(|l| l.ints())
        .ok_or_else(|| bad(format!("no `{key}` list of ints in the pickled dict")))?;
    let data = v
        .get("data")
        .ok_or_else(|| bad("no `data` array in the pickled dict".into()))?;
    let raw = data
        .payloads()
        .into_iter()
        .max_by_key(|p| p.len())
        .unwrap_or_default();
    if raw.len() != labels.len() * IMAGE_BYTES || labels.is_empty() {
        return Err(bad(format!(
            "truncated or mislabelled: `data` holds {} bytes for {} labels (expected {} × {IMAGE_BYTES})",
            raw.len(),
            labels.len(),
            labels.len()
        )));
    }
    for (i, &l) in labels.iter().enumerate() {
        if l < 0 || l >= variant.num_classes() as i64 {
            return Err(bad(format!(
                "record {i}: label {l} is not a class (0..{})",
                variant.num_classes()
            )));
        }
        set.labels.push(l as u32);
    }
    set.pixels.extend_from_slice(&raw);
    Ok(())
}

/// Class names from the pickle layout's `batches.meta` / `meta`, when present and readable.
fn pickle_class_names(root: &Path, variant: Variant) -> Option<Vec<String>> {
    let (file, key) = match variant {
        Variant::Cifar10 => ("batches.meta", "label_names"),
        Variant::Cifar100 => ("meta", "fine_label_names"),
    };
    let v = super::pickle::parse(&std::fs::read(root.join(file)).ok()?).ok()?;
    match v.get(key)? {
        super::pickle::Value::List(names) => names
            .iter()
            .map(|n| n.as_text().map(str::to_string))
            .collect(),
        _ => None,
    }
}

/// `root` itself, or the standard folder inside it (`cifar-10-batches-bin`, `…-py`,
/// `cifar-100-binary`, `cifar-100-python`).
fn dataset_dir(root: &Path, variant: Variant) -> PathBuf {
    let names: &[&str] = match variant {
        Variant::Cifar10 => &["cifar-10-batches-bin", "cifar-10-batches-py"],
        Variant::Cifar100 => &["cifar-100-binary", "cifar-100-python"],
    };
    names
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| root.to_path_buf())
}

/// Load a split from `root` (checking `SHA256SUMS` when present).
pub fn load(root: &Path, variant: Variant, split: Split) -> Result<ImageSet> {
    if !root.is_dir() {
        return Err(Error::file(root, "dataset directory not found"));
    }
    let root = dataset_dir(root, variant);
    let root = root.as_path();
    verify_sha256sums(root)?;
    let mut classes: Vec<String> = match variant {
        Variant::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        Variant::Cifar100 => (0..100).map(|i| format!("class_{i}")).collect(),
    };
    let mut set = ImageSet {
        pixels: Vec::new(),
        labels: Vec::new(),
        height: 32,
        width: 32,
        classes: Vec::new(),
    };
    let binary = variant.files(split).iter().any(|n| root.join(n).exists());
    let names = if binary {
        variant.files(split)
    } else {
        variant.pickle_files(split)
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for name in names {
        let path = root.join(name);
        if !path.exists() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e))?;
        if binary {
            parse_batch(&path, &bytes, variant, &mut set)?;
        } else {
            parse_pickle_batch(&path, &bytes, variant, &mut set)?;
        }
        found.push(path);
    }
    if found.is_empty() {
        return Err(Error::file(
            root,
            format!(
                "no {variant:?} {split:?} batch found (expected {} in the binary layout or {} in the Python-pickle layout)",
                variant.files(split).join(", "),
                variant.pickle_files(split).join(", ")
            ),
        ));
    }
    if !binary {
        if let Some(names) = pickle_class_names(root, variant) {
            if names.len() == classes.len() {
                classes = names;
            }
        }
    }
    set.classes = classes;
    Ok(set)
}

/// The CIFAR-10 subset shipped with the project (first 1017 images of each official batch;
/// four training batches and the test batch).
pub fn embedded_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-subset")
}
