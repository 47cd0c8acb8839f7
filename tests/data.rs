//! Datasets: the shipped CIFAR-10 subset loads and verifies, records round-trip, and corrupt
//! or truncated files give an error naming the file and the problem.

use viewcraft::data::cifar::{self, Split, Variant};
use viewcraft::data::verify_sha256sums;

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("viewcraft-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn shipped_subset_loads_and_verifies() {
    let root = cifar::embedded_root();
    assert_eq!(verify_sha256sums(&root).unwrap(), 5);
    let train = cifar::load(&root, Variant::Cifar10, Split::Train).unwrap();
    let test = cifar::load(&root, Variant::Cifar10, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (4 * 1017, 1017));
    assert_eq!(train.image(0).len(), 3072);
    // Every class is present and images are not blank.
    for c in 0..10 {
        assert!(train.labels.contains(&c));
    }
    let first = train.image(0);
    assert!(first.iter().any(|&p| p != first[0]));
    assert_eq!(train.clone().truncate(100).len(), 100);
}

#[test]
fn records_round_trip() {
    let dir = tmpdir("rt");
    let mut bytes = Vec::new();
    for i in 0..3u8 {
        bytes.push(i * 3); // label
        bytes.extend((0..3072).map(|p| ((p as u32 * 7 + i as u32) % 251) as u8));
    }
    std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
    let s = cifar::load(&dir, Variant::Cifar10, Split::Test).unwrap();
    assert_eq!(s.labels, vec![0, 3, 6]);
    assert_eq!(s.image(2)[500], ((500 * 7 + 2) % 251) as u8);
    // CIFAR-100: coarse + fine label bytes, the fine one is used.
    let mut b100 = vec![4u8, 77];
    b100.extend(vec![9u8; 3072]);
    std::fs::write(dir.join("test.bin"), &b100).unwrap();
    assert_eq!(
        cifar::load(&dir, Variant::Cifar100, Split::Test)
            .unwrap()
            .labels,
        vec![77]
    );
}

#[test]
fn bad_files_are_named() {
    let dir = tmpdir("bad");
    std::fs::write(dir.join("test_batch.bin"), vec![1u8; 3073 + 100]).unwrap();
    let e = cifar::load(&dir, Variant::Cifar10, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test_batch.bin") && e.contains("truncated"),
        "{e}"
    );
    let mut rec = vec![12u8];
    rec.extend(vec![0u8; 3072]);
    std::fs::write(dir.join("test_batch.bin"), rec).unwrap();
    let e = cifar::load(&dir, Variant::Cifar10, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(e.contains("record 0") && e.contains("label 12"), "{e}");
    let e = cifar::load(&dir, Variant::Cifar10, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no Cifar10 Train batch"), "{e}");
    std::fs::write(
        dir.join("SHA256SUMS"),
        format!("{}  test_batch.bin\n", "0".repeat(64)),
    )
    .unwrap();
    let e = cifar::load(&dir, Variant::Cifar10, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test_batch.bin") && e.contains("checksum mismatch"),
        "{e}"
    );
    let e = cifar::load(&dir.join("missing"), Variant::Cifar10, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");
}

fn pickle_dir(layout: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cifar-pickle")
        .join(layout)
}

#[test]
fn python_pickle_layouts_match_the_binary_records() {
    let bin = cifar::load(&cifar::embedded_root(), Variant::Cifar10, Split::Train).unwrap();
    let bin_test = cifar::load(&cifar::embedded_root(), Variant::Cifar10, Split::Test).unwrap();
    for layout in ["py2", "p2", "p4", "p5"] {
        let dir = pickle_dir(layout);
        let tr = cifar::load(&dir, Variant::Cifar10, Split::Train)
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
        let te = cifar::load(&dir, Variant::Cifar10, Split::Test).unwrap();
        assert_eq!((tr.len(), te.len()), (6, 6), "{layout}");
        for i in 0..6 {
            assert_eq!(tr.labels[i], bin.labels[i], "{layout} label {i}");
            assert_eq!(tr.image(i), bin.image(i), "{layout} image {i}");
            assert_eq!(te.image(i), bin_test.image(i), "{layout} test image {i}");
        }
        assert_eq!(tr.classes[3], "cat");
    }
}

#[test]
fn a_root_holding_the_standard_folder_is_found() {
    let root = tmpdir("nested");
    let inner = root.join("cifar-10-batches-py");
    std::fs::create_dir_all(&inner).unwrap();
    for f in ["data_batch_1", "test_batch", "batches.meta"] {
        std::fs::copy(pickle_dir("py2").join(f), inner.join(f)).unwrap();
    }
    assert_eq!(
        cifar::load(&root, Variant::Cifar10, Split::Test)
            .unwrap()
            .len(),
        6
    );
}

#[test]
fn bad_pickles_are_named() {
    let dir = tmpdir("badpickle");
    let good = std::fs::read(pickle_dir("py2").join("test_batch")).unwrap();
    std::fs::write(dir.join("test_batch"), &good[..good.len() / 2]).unwrap();
    let e = cifar::load(&dir, Variant::Cifar10, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(e.contains("test_batch") && e.contains("truncated"), "{e}");
    std::fs::write(dir.join("test_batch"), b"not a pickle at all").unwrap();
    let e = cifar::load(&dir, Variant::Cifar10, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(e.contains("test_batch") && e.contains("pickle"), "{e}");
    // A label list that does not match the images: drop the last label's APPENDS entry by
    // asking for CIFAR-100's fine labels, which a CIFAR-10 batch does not have.
    std::fs::write(dir.join("test"), &good).unwrap();
    let e = cifar::load(&dir, Variant::Cifar100, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fine_labels"), "{e}");
}
