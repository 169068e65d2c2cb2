//! Resumable training checkpoints: parameters, optimizer moments and the loop's position,
//! written so that a run killed at any moment leaves the previous checkpoint intact.
//!
//! Layout: `DIR/step-000120/{state.json, params.safetensors, optimizer.safetensors,
//! best.safetensors}` and `DIR/latest` naming the newest complete step folder. A step folder is
//! written under a temporary name and renamed; `latest` is replaced atomically afterwards.

use crate::io::{atomic, hf_dir::safetensors_bytes};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the loop stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps done.
    pub step: usize,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Next micro-batch within the epoch's order.
    pub micro: usize,
    /// Input tokens seen so far.
    pub tokens: usize,
    /// Best validation loss so far and its step.
    pub best: Option<(f64, usize)>,
    /// Seed of the data order (the order of epoch e is a function of seed and e).
    pub seed: u64,
    /// A digest of the options that must not change across a resume.
    pub options_digest: String,
}

/// Everything a resumed run needs.
#[derive(Debug)]
pub struct Snapshot {
    /// Loop position.
    pub state: LoopState,
    /// Parameter values by name.
    pub params: BTreeMap<String, Tensor>,
    /// AdamW first moments by parameter name.
    pub m: BTreeMap<String, Tensor>,
    /// AdamW second moments by parameter name.
    pub v: BTreeMap<String, Tensor>,
    /// Parameters at the best validation loss, when known.
    pub best: Option<BTreeMap<String, Tensor>>,
}

fn write_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    atomic::write_bytes(path, &safetensors_bytes(tensors, &[], path)?)
}

fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        Error::format(
            path,
            format!(
                "unreadable checkpoint file ({})",
                crate::error::candle_message(&e)
            ),
        )
    })?;
    Ok(map.into_iter().collect())
}

/// Writes `snap` as the newest checkpoint in `dir` and removes older ones.
pub fn save(dir: &Path, snap: &Snapshot) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = format!("step-{:08}", snap.state.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write_tensors(&tmp.join("params.safetensors"), &snap.params)?;
    let moments: BTreeMap<String, Tensor> = snap
        .m
        .iter()
        .map(|(k, t)| (format!("m.{k}"), t.clone()))
        .chain(snap.v.iter().map(|(k, t)| (format!("v.{k}"), t.clone())))
        .collect();
    write_tensors(&tmp.join("optimizer.safetensors"), &moments)?;
    if let Some(best) = &snap.best {
        write_tensors(&tmp.join("best.safetensors"), best)?;
    }
    atomic::write_json(&tmp.join("state.json"), &snap.state)?;
    let final_dir = dir.join(&name);
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    atomic::write_bytes(&dir.join("latest"), name.as_bytes())?;
    // Older checkpoints are superseded only once `latest` points at the new one.
    for entry in std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
    {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with("step-") && n != name {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// The newest complete checkpoint in `dir`, if any.
pub fn load_latest(dir: &Path) -> Result<Option<Snapshot>> {
    let latest = dir.join("latest");
    if !latest.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
    let step_dir: PathBuf = dir.join(name.trim());
    let state_path = step_dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: LoopState =
        serde_json::from_str(&text).map_err(|e| Error::format(&state_path, e))?;
    let params = read_tensors(&step_dir.join("params.safetensors"))?;
    let mut m = BTreeMap::new();
    let mut v = BTreeMap::new();
    for (k, t) in read_tensors(&step_dir.join("optimizer.safetensors"))? {
        if let Some(name) = k.strip_prefix("m.") {
            m.insert(name.to_string(), t);
        } else if let Some(name) = k.strip_prefix("v.") {
            v.insert(name.to_string(), t);
        }
    }
    let best_path = step_dir.join("best.safetensors");
    let best = if best_path.is_file() {
        Some(read_tensors(&best_path)?)
    } else {
        None
    };
    Ok(Some(Snapshot {
        state,
        params,
        m,
        v,
        best,
    }))
}
