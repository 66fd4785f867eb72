//! The `sparsetrain` binary as a user runs it: bad settings give a one-line
//! error and a failing exit code, never a panic; a short run prints its JSON.

use std::process::{Command, Output};

fn sparsetrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparsetrain"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

/// Runs with `args`, expecting failure with `needle` in the error and no panic.
fn fails_with(args: &[&str], needle: &str) {
    let out = sparsetrain(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: `{stderr}` should mention `{needle}`"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
}

#[test]
fn density_outside_the_unit_interval_is_refused() {
    fails_with(&["--density", "0"], "density");
    fails_with(&["--density", "1.5"], "density");
    fails_with(&["--density", "-0.2"], "density");
    fails_with(&["train", "--density", "-0.2"], "density");
    fails_with(
        &["bench", "--densities", "0.02,-0.1", "--kernels-only"],
        "density",
    );
}

#[test]
fn other_bad_settings_are_refused() {
    fails_with(&["--epochs", "0"], "epochs");
    fails_with(&["--batch-size", "0"], "batch-size");
    fails_with(&["--lr", "-1"], "lr");
    fails_with(&["--threads", "0"], "threads");
    fails_with(
        &[
            "--prune-rate",
            "1.5",
            "--epochs",
            "1",
            "--train-samples",
            "100",
        ],
        "prune-rate",
    );
    fails_with(&["--momentum-window", "soon"], "momentum-window");
    fails_with(&["--init", "xavier"], "init");
    fails_with(&["--validation-fraction", "1"], "validation-fraction");
    fails_with(&["--no-such-flag"], "no-such-flag");
}

#[test]
fn bad_sparse_learning_settings_are_refused() {
    fails_with(&["--method", "lottery"], "lottery");
    fails_with(&["--prune-rate", "-0.5"], "prune-rate");
    fails_with(
        &["--layer-density", "fc9.weight=1", "--epochs", "1"],
        "fc9.weight",
    );
    fails_with(&["--layer-density", "fc1.weight"], "NAME=DENSITY");
    fails_with(
        &["--layer-density", "fc1.weight=1", "--epochs", "1"],
        "overridden layers",
    );
    fails_with(
        &["--method", "static", "--growth", "random"],
        "--method static",
    );
    fails_with(&["--distribution", "gaussian"], "gaussian");
    fails_with(&["--growth", "psychic"], "psychic");
    fails_with(&["--prune-schedule", "sawtooth"], "sawtooth");
    fails_with(&["--stop-updates-after", "2"], "stop-updates-after");
    fails_with(
        &[
            "--update-every",
            "0",
            "--epochs",
            "1",
            "--train-samples",
            "100",
        ],
        "update-every",
    );
    fails_with(&["seeds", "--seeds", "0"], "seeds");
}

#[test]
fn the_seeds_command_writes_its_tables() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let run = sparsetrain(&[
        "seeds",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--train-samples",
        "1000",
        "--method",
        "set",
        "--density",
        "0.1",
        "--out",
        dir,
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("seed 17") && stdout.contains("seed 18"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(out.path().join("seeds-set-0.1.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        3,
        "a header and one row per seed: {csv}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("seeds-set-0.1.json")).unwrap(),
    )
    .unwrap();
    let errors: Vec<f64> = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["test_error"].as_f64().unwrap())
        .collect();
    let mean = (errors[0] + errors[1]) / 2.0;
    assert!((json["test_error"]["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!(
        errors.iter().all(|&e| e < 0.5),
        "1000 samples of MNIST beat chance: {errors:?}"
    );
}

#[test]
fn a_missing_data_directory_is_refused() {
    fails_with(
        &["--data", "/no/such/dir", "--epochs", "1"],
        "does not exist",
    );
    fails_with(
        &["bench", "--data", "/no/such/dir", "--rounds", "1"],
        "does not exist",
    );
}

#[test]
fn help_lists_the_flags() {
    let out = sparsetrain(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--epochs",
        "--density",
        "--lr",
        "--batch-size",
        "--seed",
        "--threads",
        "--dense",
        "--data",
        "--json",
    ] {
        assert!(help.contains(flag), "--help should list {flag}");
    }
}

#[test]
fn a_short_run_prints_progress_and_a_json_summary() {
    let out = sparsetrain(&[
        "--epochs",
        "2",
        "--train-samples",
        "3000",
        "--json",
        "--seed",
        "3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("fc1.weight") && stdout.contains("epoch   2"),
        "{stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let accuracy = json["test_accuracy"].as_f64().unwrap();
    assert!(
        accuracy > 0.6,
        "3000 samples × 2 epochs should beat chance (10 %) by far, got {accuracy}"
    );
    assert!((json["test_error"].as_f64().unwrap() - (1.0 - accuracy)).abs() < 1e-12);
    assert_eq!(json["epochs"], 2);
    assert!((json["density"].as_f64().unwrap() - 0.05).abs() < 1e-3);
    let nnz: u64 = json["layer_nnz"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(nnz, 13_310, "5 % of LeNet-300-100's 266 200 weights");
}
