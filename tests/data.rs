//! The IDX reader and the MNIST loader on good and bad files: every problem
//! is an error that names the file, never a panic.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use sparsetrain::data::{Mnist, read_idx};

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A directory with a tiny valid MNIST-format dataset (4 training and 2 test
/// images of 3×2 pixels), written raw or gzipped.
fn tiny_dataset(gzipped: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let files: [(&str, Vec<u8>); 4] = [
        ("train-images-idx3-ubyte", idx_bytes(&[4, 3, 2], &[7; 24])),
        ("train-labels-idx1-ubyte", idx_bytes(&[4], &[0, 1, 2, 9])),
        ("t10k-images-idx3-ubyte", idx_bytes(&[2, 3, 2], &[9; 12])),
        ("t10k-labels-idx1-ubyte", idx_bytes(&[2], &[3, 4])),
    ];
    for (name, bytes) in files {
        write(dir.path(), name, &bytes, gzipped);
    }
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8], gzipped: bool) -> PathBuf {
    let path = if gzipped {
        dir.join(format!("{name}.gz"))
    } else {
        dir.join(name)
    };
    std::fs::write(&path, if gzipped { gzip(bytes) } else { bytes.to_vec() }).unwrap();
    path
}

/// Loads `dir`, expecting an error whose message contains every one of `needles`.
fn load_error(dir: &Path, needles: &[&str]) {
    let err = Mnist::load(dir)
        .expect_err("the dataset is broken")
        .to_string();
    for needle in needles {
        assert!(
            err.contains(needle),
            "error `{err}` should mention `{needle}`"
        );
    }
}

#[test]
fn the_bundled_mnist_loads() {
    let mnist = Mnist::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("data").as_path()).unwrap();
    assert_eq!((mnist.train.len(), mnist.test.len()), (60_000, 10_000));
    assert_eq!(mnist.image_size, (28, 28));
    assert_eq!(mnist.train.num_features(), 784);
    // Every digit occurs in the test set.
    for digit in 0..10 {
        assert!(mnist.test.labels().contains(&digit));
    }
}

#[test]
fn raw_and_gzipped_files_read_the_same() {
    let raw = Mnist::load(tiny_dataset(false).path()).unwrap();
    let gz = Mnist::load(tiny_dataset(true).path()).unwrap();
    assert_eq!(raw.train.pixels(), gz.train.pixels());
    assert_eq!(raw.test.labels(), gz.test.labels());
    assert_eq!(raw.image_size, (3, 2));
}

#[test]
fn a_missing_directory_is_an_error() {
    load_error(
        Path::new("/no/such/directory"),
        &["/no/such/directory", "does not exist"],
    );
}

#[test]
fn a_missing_file_is_named() {
    let dir = tiny_dataset(true);
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    load_error(dir.path(), &["t10k-labels-idx1-ubyte", "missing file"]);
}

#[test]
fn a_truncated_file_is_reported() {
    let dir = tiny_dataset(false);
    write(
        dir.path(),
        "train-images-idx3-ubyte",
        &idx_bytes(&[4, 3, 2], &[7; 20]),
        false,
    );
    load_error(dir.path(), &["train-images-idx3-ubyte", "truncated"]);
}

#[test]
fn a_truncated_gzip_stream_is_reported() {
    let dir = tiny_dataset(true);
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_idx(&path).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte.gz"), "{err}");
    load_error(dir.path(), &["train-images-idx3-ubyte.gz"]);
}

#[test]
fn a_corrupt_gzip_stream_is_reported() {
    let dir = tiny_dataset(true);
    let path = dir.path().join("t10k-images-idx3-ubyte.gz");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[12..20] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    load_error(dir.path(), &["t10k-images-idx3-ubyte.gz"]);
}

#[test]
fn a_wrong_magic_number_is_reported() {
    let dir = tiny_dataset(false);
    let mut bytes = idx_bytes(&[4], &[0, 1, 2, 3]);
    bytes[1] = 0x13;
    write(dir.path(), "train-labels-idx1-ubyte", &bytes, false);
    load_error(dir.path(), &["train-labels-idx1-ubyte", "magic"]);
}

#[test]
fn image_and_label_counts_must_agree() {
    let dir = tiny_dataset(false);
    write(
        dir.path(),
        "train-labels-idx1-ubyte",
        &idx_bytes(&[3], &[0, 1, 2]),
        false,
    );
    load_error(
        dir.path(),
        &["train-labels-idx1-ubyte", "3 labels", "4 images"],
    );
}

#[test]
fn labels_must_be_digits() {
    let dir = tiny_dataset(false);
    write(
        dir.path(),
        "t10k-labels-idx1-ubyte",
        &idx_bytes(&[2], &[3, 12]),
        false,
    );
    load_error(dir.path(), &["t10k-labels-idx1-ubyte", "label 12"]);
}

#[test]
fn images_must_have_three_dimensions() {
    let dir = tiny_dataset(false);
    write(
        dir.path(),
        "train-images-idx3-ubyte",
        &idx_bytes(&[4, 6], &[7; 24]),
        false,
    );
    load_error(dir.path(), &["train-images-idx3-ubyte", "shape"]);
}

#[test]
fn train_and_test_images_must_have_one_size() {
    let dir = tiny_dataset(false);
    write(
        dir.path(),
        "t10k-images-idx3-ubyte",
        &idx_bytes(&[2, 2, 3], &[9; 12]),
        false,
    );
    load_error(dir.path(), &["3×2", "2×3"]);
}
