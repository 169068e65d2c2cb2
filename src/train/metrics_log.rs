//! The training run's JSON-lines metrics log (`OUTPUT.metrics.jsonl`), kept consistent with the
//! checkpoints across resumes.

use crate::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

/// Appends JSON lines to the metrics log.
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens the log; on resume, keeps only the lines up to `keep_until` (the checkpoint's step),
    /// so a crashed run's later lines do not appear twice.
    pub fn open(path: PathBuf, keep_until: Option<usize>) -> Result<Self> {
        let mut kept = String::new();
        if let (Some(step), Ok(text)) = (keep_until, std::fs::read_to_string(&path)) {
            for line in text.lines() {
                let s = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64());
                if s.is_some_and(|s| s as usize <= step) {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
        }
        crate::io::atomic::write_bytes(&path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { file, path })
    }

    pub fn write(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").map_err(|e| Error::io(&self.path, e))
    }
}
