//! Checkpoints: resuming is bit-identical to never stopping; broken files are
//! clear errors; an interrupted save leaves the previous checkpoint loadable.

use std::path::Path;
use std::sync::OnceLock;

use sparsetrain::checkpoint::Checkpoint;
use sparsetrain::prelude::*;
use sparsetrain::sparsity::MaskUpdates;

fn mnist() -> &'static Mnist {
    static MNIST: OnceLock<Mnist> = OnceLock::new();
    MNIST.get_or_init(|| Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data")).unwrap())
}

/// 2 000 samples: 20 steps an epoch, 4 epochs.
fn config(method: Method, adjust: impl FnOnce(&mut MaskUpdates)) -> TrainConfig {
    let mut sparse = SparseSettings::method(method, 0.05);
    if let Some(updates) = &mut sparse.updates {
        adjust(updates);
    }
    TrainConfig {
        epochs: 4,
        train_samples: Some(2_000),
        sparse: Some(sparse),
        ..TrainConfig::default()
    }
}

/// Trains `config` straight through, and again with a stop, a checkpoint and
/// a fresh trainer after `stop_after` epochs; the two must agree bit for bit.
fn check_resume(config: TrainConfig, stop_after: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.safetensors");
    let (train, test) = (&mnist().train, &mnist().test);

    let mut straight = Trainer::new(config.clone(), train, test).unwrap();
    let straight_summary = straight.run(&mut ()).unwrap();

    let mut first = Trainer::new(config.clone(), train, test).unwrap();
    for _ in 0..stop_after {
        first.train_epoch(&mut ()).unwrap();
    }
    first.save_checkpoint(&path).unwrap();
    drop(first);

    let checkpoint = Checkpoint::open(&path).unwrap();
    // The checkpoint records the shard count the trainer chose.
    let chosen = TrainConfig {
        batch_shards: Some(straight.batch_shards()),
        ..config.clone()
    };
    assert_eq!(checkpoint.config().unwrap(), chosen);
    assert_eq!(checkpoint.epochs_done().unwrap(), stop_after);
    let mut resumed = Trainer::new(checkpoint.config().unwrap(), train, test).unwrap();
    resumed.restore(&checkpoint).unwrap();
    let resumed_summary = resumed.run(&mut ()).unwrap();

    assert_eq!(resumed.epochs_done(), config.epochs);
    assert_eq!(resumed.steps_done(), straight.steps_done());
    assert!(
        resumed.params() == straight.params(),
        "weights, structure and momentum must match bit for bit"
    );
    assert_eq!(
        resumed_summary.test_accuracy,
        straight_summary.test_accuracy
    );
}

#[test]
fn resuming_sparse_momentum_is_bit_identical() {
    check_resume(config(Method::SparseMomentum, |_| {}), 2);
}

#[test]
fn resuming_inside_a_momentum_window_is_bit_identical() {
    // Updates every 30 steps with a 25-step window: the checkpoint after
    // epoch 2 (step 40) falls inside the window before the update at step 60.
    check_resume(
        config(Method::SparseMomentum, |u| {
            u.update_every = Some(30);
            u.momentum_window = Some(sparsetrain::sparsity::MomentumWindow::LastSteps(25));
        }),
        2,
    );
}

#[test]
fn resuming_random_growth_restores_the_random_numbers() {
    check_resume(config(Method::Set, |_| {}), 1);
}

#[test]
fn resuming_rigl_is_bit_identical() {
    check_resume(config(Method::Rigl, |u| u.update_every = Some(15)), 3);
}

fn saved_checkpoint(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("run.safetensors");
    let mut trainer = Trainer::new(
        config(Method::SparseMomentum, |_| {}),
        &mnist().train,
        &mnist().test,
    )
    .unwrap();
    trainer.train_epoch(&mut ()).unwrap();
    trainer.save_checkpoint(&path).unwrap();
    path
}

#[test]
fn a_truncated_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Checkpoint::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("run.safetensors") && err.contains("truncated or corrupt"),
        "{err}"
    );
}

#[test]
fn a_corrupt_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] ^= 0x7f; // the header length
    std::fs::write(&path, &bytes).unwrap();
    assert!(Checkpoint::open(&path).is_err());
    std::fs::write(&path, b"not a checkpoint at all").unwrap();
    let err = Checkpoint::open(&path).unwrap_err().to_string();
    assert!(err.contains("run.safetensors"), "{err}");
    let err = Checkpoint::open(&dir.path().join("missing.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.safetensors"), "{err}");
}

#[test]
fn an_interrupted_save_leaves_the_previous_checkpoint_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    let before = std::fs::read(&path).unwrap();
    // A crash mid-save leaves a partial temporary file beside the checkpoint;
    // the checkpoint itself is only ever replaced whole, by a rename.
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, &before[..100]).unwrap();
    let checkpoint = Checkpoint::open(&path).unwrap();
    assert_eq!(checkpoint.epochs_done().unwrap(), 1);
    // The next save goes through and replaces both.
    let mut trainer =
        Trainer::new(checkpoint.config().unwrap(), &mnist().train, &mnist().test).unwrap();
    trainer.restore(&checkpoint).unwrap();
    trainer.train_epoch(&mut ()).unwrap();
    trainer.save_checkpoint(&path).unwrap();
    assert_eq!(Checkpoint::open(&path).unwrap().epochs_done().unwrap(), 2);
    assert!(!Path::new(&temporary).exists());
}

#[test]
fn divergence_leaves_the_last_good_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    let before = std::fs::read(&path).unwrap();
    let checkpoint = Checkpoint::open(&path).unwrap();
    let exploding = TrainConfig {
        lr: 1e9,
        ..checkpoint.config().unwrap()
    };
    let mut trainer = Trainer::new(exploding, &mnist().train, &mnist().test).unwrap();
    trainer.restore(&checkpoint).unwrap();
    let err = trainer.run(&mut ()).unwrap_err();
    assert!(
        matches!(err, Error::NonFiniteLoss { epoch: 2, .. }),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "nothing was written over the good checkpoint"
    );
}

#[test]
fn a_checkpoint_from_other_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    let checkpoint = Checkpoint::open(&path).unwrap();
    let config = TrainConfig {
        validation_fraction: 0.5,
        ..checkpoint.config().unwrap()
    };
    let mut trainer = Trainer::new(config, &mnist().train, &mnist().test).unwrap();
    let err = trainer.restore(&checkpoint).unwrap_err().to_string();
    assert!(err.contains("other data"), "{err}");
}

#[test]
fn resuming_lenet5_inside_a_momentum_window_is_bit_identical() {
    // 600 samples: 6 steps an epoch; updates every 4 steps with a 3-step
    // window, so the checkpoint after epoch 1 (step 6) holds the running
    // dense momentum of the convolutions (steps 5–6 of the window before step 8).
    let mut config = config(Method::SparseMomentum, |u| {
        u.update_every = Some(4);
        u.momentum_window = Some(sparsetrain::sparsity::MomentumWindow::LastSteps(3));
    });
    config.model = Architecture::LeNet5;
    config.train_samples = Some(600);
    config.epochs = 3;
    check_resume(config, 1);
}

#[test]
fn resuming_when_a_short_last_batch_starts_a_window_is_bit_identical() {
    // Batches of 256, 256, 256 and 132: a window that starts on the short
    // batch may hold fc1's momentum in another form than one that starts on
    // a full batch. Each window must choose afresh, so that a resumed run
    // chooses as the uninterrupted one did.
    let mut config = config(Method::SparseMomentum, |u| {
        u.update_every = Some(3);
        u.momentum_window = Some(sparsetrain::sparsity::MomentumWindow::LastSteps(2));
    });
    config.batch_size = 256;
    config.train_samples = Some(900);
    config.epochs = 5;
    check_resume(config, 3);
}

/// Rewrites one metadata value of a safetensors file in place (its header is
/// an 8-byte length and JSON; the tensors' offsets count from its end).
fn set_metadata(path: &Path, key: &str, value: &str) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    header["__metadata__"][key] = value.into();
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + header_len..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn tampered_metadata_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());

    // A 64-byte seed that is not hex, with a character of several bytes
    // where a hex pair would start.
    let seed = format!("€{}", "a".repeat(61));
    assert_eq!(seed.len(), 64);
    set_metadata(&path, "sparse_learning.rng_seed", &seed);
    let checkpoint = Checkpoint::open(&path).unwrap();
    let mut trainer =
        Trainer::new(checkpoint.config().unwrap(), &mnist().train, &mnist().test).unwrap();
    let err = trainer.restore(&checkpoint).unwrap_err().to_string();
    assert!(
        err.contains("rng_seed") && err.contains("run.safetensors"),
        "{err}"
    );

    // Dimensions that do not lay out the stored matrix (a reader would
    // divide by the zero kernel size).
    let name = checkpoint.param_names().unwrap()[0].clone();
    let (rows, cols) = checkpoint.param_shape(&name).unwrap();
    for dims in [format!("{rows},1,0,0"), format!("{rows},{}", cols + 1)] {
        set_metadata(&path, &format!("{name}.dims"), &dims);
        let err = Checkpoint::open(&path)
            .unwrap()
            .param_dims(&name)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&dims) && err.contains("run.safetensors"),
            "{err}"
        );
    }
}
