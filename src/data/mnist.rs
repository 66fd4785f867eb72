//! MNIST and any other dataset in MNIST's file layout.
//!
//! A directory qualifies if it holds the four standard file names, each raw or
//! with `.gz` appended: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`. Fashion-MNIST and
//! KMNIST ship exactly so.

use std::path::{Path, PathBuf};

use ndarray::Array2;

use crate::conv::ImageShape;
use crate::data::dataset::Dataset;
use crate::data::idx::{IdxArray, read_idx};
use crate::error::{Error, Result};

/// The number of classes of MNIST-format datasets: digits (or garments) 0–9.
pub const NUM_CLASSES: usize = 10;

/// The standard file names, without the optional `.gz`.
pub const FILE_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The training and test sets, values `pixel / 255` (not yet normalised).
#[derive(Debug, Clone)]
pub struct Mnist {
    /// 60 000 samples for MNIST.
    pub train: Dataset,
    /// 10 000 samples for MNIST.
    pub test: Dataset,
    /// Image height and width in pixels.
    pub image_size: (usize, usize),
}

impl Mnist {
    /// Loads the four files from `dir`, checking that images and labels agree.
    pub fn load(dir: &Path) -> Result<Mnist> {
        if !dir.is_dir() {
            return Err(Error::Dataset {
                dir: dir.to_path_buf(),
                problem: "the directory does not exist".into(),
            });
        }
        let [train_images, train_labels, test_images, test_labels] =
            FILE_NAMES.map(|name| find_file(dir, name));
        let (train, train_size) = load_split(&train_images?, &train_labels?)?;
        let (test, test_size) = load_split(&test_images?, &test_labels?)?;
        if train_size != test_size {
            return Err(Error::Dataset {
                dir: dir.to_path_buf(),
                problem: format!(
                    "training images are {}×{} but test images are {}×{}",
                    train_size.0, train_size.1, test_size.0, test_size.1
                ),
            });
        }
        Ok(Mnist {
            train,
            test,
            image_size: train_size,
        })
    }
}

/// `dir/name` if it exists, else `dir/name.gz`, else an error naming both.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if raw.is_file() {
        Ok(raw)
    } else if gz.is_file() {
        Ok(gz)
    } else {
        Err(Error::Dataset {
            dir: dir.to_path_buf(),
            problem: format!("missing file: neither {name} nor {name}.gz exists"),
        })
    }
}

/// Reads one images file and its labels file into a dataset.
fn load_split(images_path: &Path, labels_path: &Path) -> Result<(Dataset, (usize, usize))> {
    let images = read_idx(images_path)?;
    let labels = read_idx(labels_path)?;
    let (count, height, width) = image_dims(&images, images_path)?;
    let label_count = label_dims(&labels, labels_path)?;
    if count != label_count {
        return Err(Error::BadFile {
            path: labels_path.to_path_buf(),
            problem: format!(
                "{label_count} labels, but {} holds {count} images",
                images_path.display()
            ),
        });
    }
    if let Some((i, &label)) = labels
        .bytes
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= NUM_CLASSES)
    {
        return Err(Error::BadFile {
            path: labels_path.to_path_buf(),
            problem: format!("label {label} of sample {i} is not a class 0–9"),
        });
    }
    let pixels = Array2::from_shape_vec((count, height * width), images.bytes)
        .expect("read_idx returned exactly count·height·width bytes");
    let labels = labels.bytes.iter().map(|&l| l as usize).collect();
    let image = ImageShape {
        channels: 1,
        height,
        width,
    };
    let dataset = Dataset::new(pixels, labels, NUM_CLASSES)?.with_image_shape(image)?;
    Ok((dataset, (height, width)))
}

fn image_dims(images: &IdxArray, path: &Path) -> Result<(usize, usize, usize)> {
    match images.dims[..] {
        [count, height, width] if height > 0 && width > 0 => Ok((count, height, width)),
        _ => Err(Error::BadFile {
            path: path.to_path_buf(),
            problem: format!(
                "expected images of shape [count, height, width], found dimensions {:?}",
                images.dims
            ),
        }),
    }
}

fn label_dims(labels: &IdxArray, path: &Path) -> Result<usize> {
    match labels.dims[..] {
        [count] => Ok(count),
        _ => Err(Error::BadFile {
            path: path.to_path_buf(),
            problem: format!(
                "expected labels of shape [count], found dimensions {:?}",
                labels.dims
            ),
        }),
    }
}
