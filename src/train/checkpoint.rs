//! Resumable training checkpoints: parameters, optimizer moments and the loop's position,
//! written so that a run killed at any moment leaves the previous checkpoint intact.
//!
//! Layout: `DIR/step-000120/{state.json, params.safetensors, optimizer.safetensors,
//! best.safetensors}` and `DIR/latest` naming the newest complete step folder. A step folder is
//! written under a temporary name and renamed; `latest` is replaced atomically afterwards.

use crate::io::{
    atomic,
    tensor_file::{self, safetensors_bytes},
};
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

/// Key, in the sealed params file's metadata, of the SHA-256 of the loop state: state.json is
/// plain JSON, so its seal rides with the parameters it belongs to.
const STATE_SHA256: &str = "offsite.state_sha256";

/// SHA-256 of a loop state's compact JSON (what is compared, so formatting does not matter).
fn state_digest(state: &LoopState) -> Result<String> {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(state).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(json)))
}

fn write_tensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    extra: &[(&str, &str)],
) -> Result<()> {
    atomic::write_bytes(path, &safetensors_bytes(tensors, extra, path)?)
}

/// The tensors of a checkpoint file (checked against its seal, finite) and its metadata.
fn read_tensors(path: &Path) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    let file = tensor_file::read(path, &Device::Cpu)?;
    let mut map = crate::model::TensorMap::new(path);
    for (name, t) in file.tensors {
        map.insert(name, t, path);
    }
    // A NaN moment or parameter would only resurface as a NaN loss steps later.
    map.check_finite()?;
    let tensors = map.into_entries().map(|(n, t, _)| (n, t)).collect();
    Ok((tensors, file.metadata))
}

/// Writes `snap` as the newest checkpoint in `dir` and removes older ones.
pub fn save(dir: &Path, snap: &Snapshot) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = format!("step-{:08}", snap.state.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let digest = state_digest(&snap.state)?;
    write_tensors(
        &tmp.join("params.safetensors"),
        &snap.params,
        &[(STATE_SHA256, &digest)],
    )?;
    let moments: BTreeMap<String, Tensor> = snap
        .m
        .iter()
        .map(|(k, t)| (format!("m.{k}"), t.clone()))
        .chain(snap.v.iter().map(|(k, t)| (format!("v.{k}"), t.clone())))
        .collect();
    write_tensors(&tmp.join("optimizer.safetensors"), &moments, &[])?;
    if let Some(best) = &snap.best {
        write_tensors(&tmp.join("best.safetensors"), best, &[])?;
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
    let name = name.trim();
    // Only a step folder of this directory: a damaged or hostile `latest` must not send the
    // resume elsewhere on the disk.
    let digits = name.strip_prefix("step-").unwrap_or("");
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(Error::format(
            &latest,
            format!(
                "names `{}`, not a step folder (`step-NNNNNNNN`)",
                name.escape_debug()
            ),
        ));
    }
    let step_dir: PathBuf = dir.join(name);
    let state_path = step_dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: LoopState =
        serde_json::from_str(&text).map_err(|e| Error::format(&state_path, e))?;
    let (params, meta) = read_tensors(&step_dir.join("params.safetensors"))?;
    // Checkpoints from before this seal have no digest: taken as they are.
    if meta
        .get(STATE_SHA256)
        .is_some_and(|d| *d != state_digest(&state).unwrap_or_default())
    {
        return Err(Error::format(
            &state_path,
            "damaged: the loop state does not match the SHA-256 recorded with the parameters",
        ));
    }
    let mut m = BTreeMap::new();
    let mut v = BTreeMap::new();
    for (k, t) in read_tensors(&step_dir.join("optimizer.safetensors"))?.0 {
        if let Some(name) = k.strip_prefix("m.") {
            m.insert(name.to_string(), t);
        } else if let Some(name) = k.strip_prefix("v.") {
            v.insert(name.to_string(), t);
        }
    }
    let best_path = step_dir.join("best.safetensors");
    let best = if best_path.is_file() {
        Some(read_tensors(&best_path)?.0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let t = |v: f32| Tensor::new(&[v, v + 1.0], &Device::Cpu).unwrap();
        Snapshot {
            state: LoopState {
                step: 7,
                epoch: 0,
                micro: 3,
                tokens: 100,
                best: None,
                seed: 1,
                options_digest: "d".into(),
            },
            params: BTreeMap::from([("w".to_string(), t(1.0))]),
            m: BTreeMap::from([("w".to_string(), t(0.1))]),
            v: BTreeMap::from([("w".to_string(), t(0.01))]),
            best: None,
        }
    }

    #[test]
    fn round_trip_then_damage_and_a_foreign_latest_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &snapshot()).unwrap();
        let back = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(back.state, snapshot().state);
        assert_eq!(back.params["w"].to_vec1::<f32>().unwrap(), [1.0, 2.0]);

        // One flipped bit in the parameters: refused by name, never trained on.
        let params = dir.path().join("step-00000007/params.safetensors");
        let mut bytes = std::fs::read(&params).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        std::fs::write(&params, bytes).unwrap();
        let err = load_latest(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("params.safetensors") && err.contains("damaged"),
            "{err}"
        );

        // A changed value in state.json (plain JSON, sealed through the parameters file).
        save(dir.path(), &snapshot()).unwrap();
        let state = dir.path().join("step-00000007/state.json");
        let text = std::fs::read_to_string(&state).unwrap();
        std::fs::write(&state, text.replace("\"micro\": 3", "\"micro\": 2")).unwrap();
        let err = load_latest(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("damaged"),
            "{err}"
        );
        // Reformatted but equal: still fine.
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        std::fs::write(&state, value.to_string()).unwrap();
        load_latest(dir.path()).unwrap().unwrap();

        std::fs::write(dir.path().join("latest"), "../../etc").unwrap();
        let err = load_latest(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("latest") && err.contains("not a step folder"),
            "{err}"
        );
    }
}
