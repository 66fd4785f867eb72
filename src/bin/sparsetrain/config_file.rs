//! `--config FILE`: settings from a TOML file, as if given as flags.
//!
//! The file holds `flag = value` lines with the flags' names (without `--`):
//!
//! ```toml
//! method = "rigl"
//! density = 0.02
//! epochs = 50
//! layer-density = ["fc1.weight=0.01"]
//! ```
//!
//! Its settings are turned into flags and placed *before* those on the
//! command line; the command overrides later occurrences of a flag, so what
//! the user types wins over the file. clap then checks everything as usual.

use std::path::Path;

use crate::args::CliError;

/// Subcommands whose flags a config file may set.
const TRAINING_COMMANDS: [&str; 2] = ["train", "seeds"];

/// `argv` with `--config FILE` replaced by the file's settings.
pub fn expand(argv: Vec<String>) -> Result<Vec<String>, CliError> {
    let Some(at) = argv
        .iter()
        .position(|a| a == "--config" || a.starts_with("--config="))
    else {
        return Ok(argv);
    };
    let path = match argv[at].strip_prefix("--config=") {
        Some(path) => path.to_string(),
        None => argv
            .get(at + 1)
            .cloned()
            .ok_or("--config needs a file: --config FILE")?,
    };
    let taken = if argv[at].contains('=') { 1 } else { 2 };
    let flags = flags_from(Path::new(&path))?;
    let mut expanded: Vec<String> = argv[..at].to_vec();
    expanded.extend(argv[at + taken..].iter().cloned());
    // After the program name and the subcommand, if there is one.
    let insert_at = if expanded
        .get(1)
        .is_some_and(|a| TRAINING_COMMANDS.contains(&a.as_str()))
    {
        2
    } else {
        1
    };
    expanded.splice(insert_at..insert_at, flags);
    Ok(expanded)
}

/// The file's settings as flags.
fn flags_from(path: &Path) -> Result<Vec<String>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: not a valid TOML file: {e}", path.display()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let flag = format!("--{key}");
        let values = match value {
            toml::Value::Array(items) => items,
            single => vec![single],
        };
        for value in values {
            match value {
                toml::Value::Boolean(true) => flags.push(flag.clone()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => flags.extend([flag.clone(), s]),
                toml::Value::Integer(n) => flags.extend([flag.clone(), n.to_string()]),
                toml::Value::Float(x) => flags.extend([flag.clone(), x.to_string()]),
                other => {
                    return Err(format!(
                        "{}: `{key}` = {other} is not a flag value (use text, a number, true or a list)",
                        path.display()
                    )
                    .into());
                }
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn file_settings_come_before_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(
            &file,
            "density = 0.02\ndense = false\nverbose = true\nlayer-density = [\"a=1\", \"b=0.5\"]\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let expanded = expand(argv(&[
            "st",
            "train",
            "--config",
            file,
            "--density",
            "0.05",
        ]))
        .unwrap();
        assert_eq!(
            expanded,
            argv(&[
                "st",
                "train",
                "--density",
                "0.02",
                "--layer-density",
                "a=1",
                "--layer-density",
                "b=0.5",
                "--verbose",
                "--density",
                "0.05"
            ])
        );
        let expanded = expand(argv(&["st", &format!("--config={file}")])).unwrap();
        assert_eq!(expanded[1], "--density");
    }

    #[test]
    fn a_bad_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "density = [[1]]\n").unwrap();
        let err = expand(argv(&["st", "--config", file.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml") && err.contains("density"), "{err}");
        std::fs::write(&file, "density = \n").unwrap();
        assert!(expand(argv(&["st", "--config", file.to_str().unwrap()])).is_err());
        let err = expand(argv(&["st", "--config", "/no/file.toml"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/file.toml"), "{err}");
        assert!(expand(argv(&["st", "--config"])).is_err());
    }
}
