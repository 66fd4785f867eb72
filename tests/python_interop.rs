//! The README's Python snippet loads a checkpoint into SciPy (and PyTorch if
//! installed). The test runs the snippet exactly as the README shows it, where
//! python3 with safetensors, NumPy and SciPy is available; otherwise it says
//! why it skips (`.ci/run` installs them with pip when it can).

use std::path::Path;
use std::process::Command;

use sparsetrain::prelude::*;

/// The first ```python block of the README.
fn readme_snippet() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("```python\n")
        .expect("the README has a Python snippet")
        + "```python\n".len();
    let end = start + readme[start..].find("```").expect("the snippet ends");
    readme[start..end].to_string()
}

#[test]
fn the_readme_snippet_loads_a_checkpoint_into_scipy() {
    let probe = Command::new("python3")
        .args(["-c", "import safetensors, numpy, scipy"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!(
                "skipping: python3 with safetensors, numpy and scipy is not available (pip install safetensors numpy scipy)"
            );
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint.safetensors");
    let mnist = Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data")).unwrap();
    let config = TrainConfig {
        epochs: 1,
        train_samples: Some(1_000),
        sparse: Some(SparseSettings::method(Method::SparseMomentum, 0.05)),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(config, &mnist.train, &mnist.test).unwrap();
    trainer.run(&mut ()).unwrap();
    trainer.save_checkpoint(&checkpoint).unwrap();

    let script = dir.path().join("load.py");
    std::fs::write(&script, readme_snippet()).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(&checkpoint)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for layer in trainer.layers() {
        let line = format!(
            "{} ({}, {}) {}",
            layer.name, layer.shape.0, layer.shape.1, layer.nnz
        );
        assert!(stdout.contains(&line), "expected `{line}` in:\n{stdout}");
    }
}
