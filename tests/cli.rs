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
    fails_with(&["bench", "kernels", "--densities", "0.02,-0.1"], "density");
    fails_with(&["bench", "train", "--densities", "1.5"], "density");
}

#[test]
fn bench_kernels_prints_a_table_and_the_cross_over() {
    let out = sparsetrain(&[
        "bench",
        "kernels",
        "--shapes",
        "30x40",
        "--batches",
        "16",
        "--densities",
        "0.1,1",
        "--samples",
        "1",
        "--isa",
        "all",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "30×40",
        "forward W·X",
        "portable",
        "Cross-over",
        "dense kernels above 30% density",
        "sgemm",
        "conv2",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    let json: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(
        json["crossovers"].as_array().unwrap().len(),
        3 * sparsetrain::sparse::InstructionSet::available().len()
    );
    fails_with(&["bench", "kernels", "--shapes", "30x0"], "shape");
    fails_with(&["bench", "kernels", "--isa", "sse9"], "isa");
    fails_with(
        &["bench", "kernels", "--batches", "64,0"],
        "positive integer",
    );
    fails_with(&["bench", "train", "--rounds", "0"], "positive integer");
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
    fails_with(&["--dense-kernels-above", "2"], "dense-kernels-above");
    fails_with(
        &["--dense-kernels-above", "sometimes"],
        "dense-kernels-above",
    );
    fails_with(&["--init", "xavier"], "init");
    fails_with(&["--validation-fraction", "1"], "validation-fraction");
    fails_with(&["--no-such-flag"], "no-such-flag");
    fails_with(&["--model", "lenet7"], "unknown model `lenet7`");
    fails_with(&["--model", "wrn-16"], "unknown model");
}

#[test]
fn lenet5_trains_reports_its_channels_and_inspects() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "train",
        "--model",
        "lenet5",
        "--epochs",
        "1",
        "--train-samples",
        "500",
        "--update-every",
        "3",
        "--verbose",
        "--no-plots",
        "--run",
        "l5",
    ];
    let stdout = succeeds(&run_in(dir.path(), &args));
    assert!(
        stdout.contains("LeNet-5-Caffe") && stdout.contains("conv2.weight"),
        "{stdout}"
    );
    assert!(
        stdout.contains("mask update after step 3") && stdout.contains("channel speed-up ×"),
        "{stdout}"
    );
    let inspect = succeeds(&run_in(dir.path(), &["inspect", "runs/l5"]));
    assert!(
        inspect.contains("50×20×5×5") && inspect.contains("of 20"),
        "conv2 listed with its kernel dimensions and input channels: {inspect}"
    );
    // LeNet-5's own default learning rate, recorded for resuming.
    let config = std::fs::read_to_string(dir.path().join("runs/l5/config.toml")).unwrap();
    assert!(config.contains("lr = 0.05"), "{config}");
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
        &["bench", "train", "--data", "/no/such/dir", "--rounds", "1"],
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

/// The binary run in a scratch directory, given the bundled data if the
/// command reads data (`inspect` and `plot` only read a run).
fn run_in(dir: &std::path::Path, args: &[&str]) -> Output {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
    let reads_data = !matches!(args.first(), Some(&"inspect") | Some(&"plot"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_sparsetrain"));
    command.args(args).current_dir(dir);
    if reads_data {
        command.args(["--data", data]);
    }
    command.output().expect("the binary runs")
}

fn succeeds(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_run_directory_holds_config_metrics_checkpoint_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&run_in(
        dir.path(),
        &["--epochs", "2", "--train-samples", "2000", "--run", "first"],
    ));
    let run = dir.path().join("runs/first");
    for file in [
        "config.toml",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "loss.png",
        "loss.svg",
        "accuracy.png",
        "density.svg",
        "connectivity.png",
    ] {
        assert!(run.join(file).is_file(), "{file} is missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"kind\":\"epoch\""))
            .count(),
        2
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"kind\":\"mask_update\""))
            .count(),
        1
    );

    // The same name again gets a fresh directory: nothing is overwritten.
    succeeds(&run_in(
        dir.path(),
        &[
            "--epochs",
            "1",
            "--train-samples",
            "500",
            "--run",
            "first",
            "--no-plots",
        ],
    ));
    assert!(
        dir.path()
            .join("runs/first-2/checkpoint.safetensors")
            .is_file()
    );
    assert!(!dir.path().join("runs/first-2/loss.png").exists());

    let inspect = succeeds(&run_in(dir.path(), &["inspect", "runs/first"]));
    assert!(
        inspect.contains("fc1.weight") && inspect.contains("after 2 epochs"),
        "{inspect}"
    );
    let eval = succeeds(&run_in(dir.path(), &["eval", "--checkpoint", "runs/first"]));
    assert!(
        eval.contains("test accuracy") && eval.contains("confusion matrix"),
        "{eval}"
    );
    let plot = succeeds(&run_in(dir.path(), &["plot", "runs/first"]));
    assert!(plot.contains("connectivity.svg"), "{plot}");
}

#[test]
fn the_saved_config_reproduces_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let first = succeeds(&run_in(
        dir.path(),
        &[
            "--epochs",
            "1",
            "--train-samples",
            "1000",
            "--method",
            "rigl",
            "--density",
            "0.1",
            "--dense-kernels-above",
            "never",
            "--run",
            "a",
            "--json",
            "--no-plots",
        ],
    ));
    let again = succeeds(&run_in(
        dir.path(),
        &[
            "--config",
            "runs/a/config.toml",
            "--run",
            "b",
            "--json",
            "--no-plots",
        ],
    ));
    let accuracy = |out: &str| -> f64 {
        let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        json["test_accuracy"].as_f64().unwrap()
    };
    assert_eq!(
        accuracy(&first),
        accuracy(&again),
        "same settings, same result"
    );
    let config = std::fs::read_to_string(dir.path().join("runs/b/config.toml")).unwrap();
    assert!(
        config.contains("method = \"rigl\"")
            && config.contains("density = 0.1")
            && config.contains("dense-kernels-above = \"never\""),
        "{config}"
    );
    // Flags on the command line win over the file.
    let overridden = succeeds(&run_in(
        dir.path(),
        &[
            "--config",
            "runs/a/config.toml",
            "--density",
            "0.2",
            "--run",
            "c",
            "--no-plots",
        ],
    ));
    assert!(overridden.contains("20.00%"), "{overridden}");
}

#[test]
fn an_interrupted_run_resumes_from_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparsetrain"))
        .args([
            "--epochs",
            "6",
            "--train-samples",
            "5000",
            "--run",
            "long",
            "--no-plots",
            "--data",
            data,
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = dir.path().join("runs/long/checkpoint.safetensors");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !checkpoint.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(checkpoint.exists(), "the first epoch wrote a checkpoint");

    let resumed = succeeds(&run_in(
        dir.path(),
        &["--resume", "runs/long", "--no-plots"],
    ));
    let after: usize = resumed
        .split("resumed after epoch ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line in {resumed}"));
    assert!(
        (1..6).contains(&after),
        "the kill interrupted the run (it resumed after epoch {after})"
    );
    assert!(resumed.contains("6 epochs"), "{resumed}");
    let metrics = std::fs::read_to_string(dir.path().join("runs/long/metrics.jsonl")).unwrap();
    let epochs: Vec<u64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "epoch")
        .map(|r| r["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1, 2, 3, 4, 5, 6], "every epoch logged once");
}

#[test]
fn bad_run_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.safetensors"),
        b"definitely not safetensors",
    )
    .unwrap();
    let out = run_in(dir.path(), &["inspect", "broken.safetensors"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.safetensors"));
    let out = run_in(dir.path(), &["--resume", "runs/none"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("runs/none"));
    let out = run_in(dir.path(), &["plot", "runs/none"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("metrics.jsonl")
    );
}
