//! What the examples share: their two optional arguments and the bundled data.

use std::path::Path;

use sparsetrain::data::Mnist;

/// `[density] [epochs]` from the command line, with defaults.
pub fn density_and_epochs(density: f64, epochs: usize) -> Result<(f64, usize), String> {
    let mut args = std::env::args().skip(1);
    let density = match args.next() {
        Some(s) => s
            .parse()
            .map_err(|_| format!("density `{s}` is not a number"))?,
        None => density,
    };
    let epochs = match args.next() {
        Some(s) => s
            .parse()
            .map_err(|_| format!("epochs `{s}` is not a whole number"))?,
        None => epochs,
    };
    Ok((density, epochs))
}

/// The MNIST files in the repository's `data/`.
pub fn bundled_mnist() -> sparsetrain::Result<Mnist> {
    Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data"))
}
