//! A run's metrics: one JSON line per epoch and per mask update.
//!
//! `metrics.jsonl` in a run directory holds records like
//!
//! ```text
//! {"kind":"epoch","epoch":1,"train_loss":0.46,"test_accuracy":0.936,...,"layers":[...]}
//! {"kind":"mask_update","step":540,"prune_rate":0.495,"layers":[...]}
//! ```
//!
//! Each line is written and flushed as it happens, so a run stopped at any
//! point leaves a readable log; [`RunLog::resume`] drops what came after the
//! checkpoint a run is resumed from, so the log never repeats an epoch.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sparsity::MaskUpdate;
use crate::train::EpochStats;

/// One line of a run's metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// The end of an epoch (after evaluation and any epoch-end mask update).
    Epoch(EpochStats),
    /// A mask update.
    MaskUpdate(MaskUpdate),
}

/// Appends records to a metrics file.
#[derive(Debug)]
pub struct RunLog {
    path: PathBuf,
    file: File,
}

impl RunLog {
    /// Starts a new, empty log at `path` (replacing any old one).
    pub fn create(path: &Path) -> Result<RunLog> {
        let file = File::create(path).map_err(|source| io(path, source))?;
        Ok(RunLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Continues the log at `path` after `epochs_done` epochs: records of later
    /// epochs, and mask updates after their last step, are dropped.
    pub fn resume(path: &Path, epochs_done: usize) -> Result<RunLog> {
        let kept: Vec<Record> = if path.exists() {
            let records = read(path)?;
            let last_step = records
                .iter()
                .filter_map(|r| match r {
                    Record::Epoch(e) if e.epoch == epochs_done => Some(e.steps_done),
                    _ => None,
                })
                .next()
                .unwrap_or(0);
            records
                .into_iter()
                .filter(|r| match r {
                    Record::Epoch(e) => e.epoch <= epochs_done,
                    Record::MaskUpdate(u) => u.step <= last_step,
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut log = RunLog::create(path)?;
        for record in &kept {
            log.write(record)?;
        }
        Ok(log)
    }

    /// Appends an epoch's record, preceded by its mask updates.
    pub fn epoch(&mut self, stats: &EpochStats) -> Result<()> {
        for update in &stats.mask_updates {
            self.write(&Record::MaskUpdate(update.clone()))?;
        }
        self.write(&Record::Epoch(stats.clone()))
    }

    fn write(&mut self, record: &Record) -> Result<()> {
        let line = serde_json::to_string(record).expect("records serialise to JSON");
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(|source| io(&self.path, source))
    }
}

/// Every record of a metrics file, in order.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let file = File::open(path).map_err(|source| io(path, source))?;
    let mut records = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| io(path, source))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            problem: format!("line {} is not a metrics record: {e}", number + 1),
        })?;
        records.push(record);
    }
    Ok(records)
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
