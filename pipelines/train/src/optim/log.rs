//! The loss log: `<run>/loss.csv`, one row per optimiser step.
//!
//! ```text
//! step,loss,lr,grad_norm,seconds
//! 1,0.8731,2e-6,3.1,0.412
//! ```
//!
//! `step` is the optimiser step the row reports (counting from 1 after the first step),
//! `seconds` the wall-clock seconds that step took (not cumulative). Numbers are written in
//! Rust's shortest round-trip form (`NaN` and `inf` included). Rows are buffered and flushed
//! every [`LossLog::set_flush_every`] rows (default 20) and when the log is dropped.
//!
//! Resuming from a checkpoint at step `s` drops the rows with step > `s` (written after that
//! checkpoint by the interrupted run), so a resumed run continues one clean curve.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use vdit_core::output::PartialOutput;

use super::shards;
use crate::{Error, Result};

/// The first line of every loss log.
pub const LOSS_HEADER: &str = "step,loss,lr,grad_norm,seconds";

/// The file name of the loss log in a run folder.
const LOSS_FILE: &str = "loss.csv";

/// One row of the loss log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossRow {
    /// The optimiser step.
    pub step: u64,
    /// The training loss of the step.
    pub loss: f64,
    /// The learning rate the step used.
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall-clock seconds the step took.
    pub seconds: f64,
}

impl LossRow {
    /// The CSV line (with its newline).
    fn line(&self) -> String {
        format!(
            "{},{},{},{},{}\n",
            self.step, self.loss, self.lr, self.grad_norm, self.seconds
        )
    }

    /// Parses a CSV line (without its newline).
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.trim_end().split(',');
        let step = fields.next()?.trim().parse().ok()?;
        let mut number = || fields.next()?.trim().parse::<f64>().ok();
        let row = Self {
            step,
            loss: number()?,
            lr: number()?,
            grad_norm: number()?,
            seconds: number()?,
        };
        fields.next().is_none().then_some(row)
    }
}

/// The loss log of the run in `run_dir`: `run_dir/loss.csv`.
pub fn loss_csv(run_dir: &Path) -> PathBuf {
    run_dir.join(LOSS_FILE)
}

/// The rows of the loss log at `path`. A last line cut short (by a crash mid-write) is ignored;
/// any other malformed line is an error naming it.
pub fn read_loss_csv(path: &Path) -> Result<Vec<LossRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    parse_log(path, &text)
}

/// Parses the text of a loss log.
fn parse_log(path: &Path, text: &str) -> Result<Vec<LossRow>> {
    let mut lines = text.lines();
    match lines.next() {
        Some(first) if first.trim_end() == LOSS_HEADER => {}
        _ => {
            return Err(Error::Usage(format!(
                "{} is not a vdit loss log (its first line is not {LOSS_HEADER}): move it away \
                 or give another run folder",
                path.display()
            )))
        }
    }
    let lines: Vec<&str> = lines.collect();
    let mut rows = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match LossRow::parse(line) {
            Some(row) => rows.push(row),
            None if i + 1 == lines.len() => {}
            None => {
                return Err(Error::Usage(format!(
                    "line {} of {} is not a loss row ({line:?}): fix or delete that line",
                    i + 2,
                    path.display()
                )))
            }
        }
    }
    Ok(rows)
}

/// An open loss log, appending rows.
#[derive(Debug)]
pub struct LossLog {
    path: PathBuf,
    out: BufWriter<File>,
    pending: usize,
    flush_every: usize,
}

impl LossLog {
    /// Starts a new log at `run_dir/loss.csv` (the folder is created). An earlier vdit loss log
    /// there is replaced; any other file there is refused.
    pub fn start(run_dir: &Path) -> Result<Self> {
        Self::open(run_dir, None)
    }

    /// Continues the log at `run_dir/loss.csv` after resuming from the checkpoint at `step`:
    /// rows with a step above `step` are dropped. Starts a new log when there is none.
    pub fn resume(run_dir: &Path, step: u64) -> Result<Self> {
        Self::open(run_dir, Some(step))
    }

    /// [`LossLog::start`] (`None`) or [`LossLog::resume`] (`Some(step)`).
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io("write", run_dir, e))?;
        let path = loss_csv(run_dir);
        vdit_core::output::check_link(&path)?;
        let kept = if path.exists() {
            if !path.is_file() {
                return Err(Error::Usage(format!(
                    "{} is not a file: move it away or give another run folder",
                    path.display()
                )));
            }
            // Checks that the file is ours even when starting afresh.
            let rows = read_loss_csv(&path)?;
            match resume_step {
                Some(step) => rows.into_iter().filter(|r| r.step <= step).collect(),
                None => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let mut text = format!("{LOSS_HEADER}\n");
        for row in &kept {
            text.push_str(&row.line());
        }
        let partial = PartialOutput::new(&path)?;
        shards::write_synced(partial.temp(), text.as_bytes())?;
        partial.commit()?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("write", &path, e))?;
        Ok(Self {
            path,
            out: BufWriter::new(file),
            pending: 0,
            flush_every: 20,
        })
    }

    /// Flush after every `rows` appended rows (at least 1).
    pub fn set_flush_every(&mut self, rows: usize) {
        self.flush_every = rows.max(1);
    }

    /// Appends one row (flushed every few rows).
    pub fn append(&mut self, row: &LossRow) -> Result<()> {
        self.out
            .write_all(row.line().as_bytes())
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.pending += 1;
        if self.pending >= self.flush_every {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes buffered rows to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.pending = 0;
        Ok(())
    }

    /// The CSV file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_text() {
        let row = LossRow {
            step: 7,
            loss: 0.1 + 0.2,
            lr: 3e-5,
            grad_norm: f64::NAN,
            seconds: f64::INFINITY,
        };
        let back = LossRow::parse(row.line().trim_end()).unwrap();
        assert_eq!(back.step, 7);
        assert_eq!(back.loss.to_bits(), row.loss.to_bits());
        assert_eq!(back.lr, 3e-5);
        assert!(back.grad_norm.is_nan());
        assert_eq!(back.seconds, f64::INFINITY);
        assert!(LossRow::parse("1,2,3,4").is_none());
        assert!(LossRow::parse("1,2,3,4,5,6").is_none());
    }

    #[test]
    fn a_cut_last_line_is_ignored_but_a_bad_middle_line_is_not() {
        let path = Path::new("loss.csv");
        let text = format!("{LOSS_HEADER}\n1,1,1,1,1\n2,0.5,1,1,1\n3,0.2");
        assert_eq!(parse_log(path, &text).unwrap().len(), 2);
        let text = format!("{LOSS_HEADER}\n1,1,1,1,1\n2,x,1,1,1\n3,0.2,1,1,1\n");
        let err = parse_log(path, &text).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(parse_log(path, "a,b\n1,2\n").is_err());
    }
}
