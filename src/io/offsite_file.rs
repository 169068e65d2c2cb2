//! The container of the files the two parties exchange (the emulator package, the tuned
//! adapter): a sealed safetensors file ([`super::tensor_file`]) whose header carries our JSON
//! metadata under [`METADATA_KEY`], with a `format` naming what the file is. What each format's
//! metadata holds belongs to its owner (`emulator::package`, `emulator::adapter`).

use super::{atomic, tensor_file};
use crate::model::TensorMap;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

pub use tensor_file::Seal;

/// Key of our JSON in the safetensors header's `__metadata__`.
pub const METADATA_KEY: &str = "offsite";
/// Format name of emulator packages.
pub const PACKAGE_FORMAT: &str = "offsite-emulator";
/// Format name of adapter files.
pub const ADAPTER_FORMAT: &str = "offsite-adapter";
/// A LoRA adapter in PEFT's directory layout keeps its weights (and our metadata) here.
pub const PEFT_WEIGHTS: &str = "adapter_model.safetensors";

/// What a format is, for messages.
fn describe(format: &str) -> String {
    match format {
        PACKAGE_FORMAT => "an emulator package".into(),
        ADAPTER_FORMAT => "an adapter".into(),
        other => format!("an `{other}` file"),
    }
}

/// The file holding the tensors of `path`: itself, or a PEFT directory's weights file.
pub fn weights_file(path: &Path) -> std::path::PathBuf {
    if path.is_dir() {
        path.join(PEFT_WEIGHTS)
    } else {
        path.to_path_buf()
    }
}

/// Writes `tensors` as a sealed safetensors file with `meta` as our JSON metadata, atomically.
pub fn write(path: &Path, tensors: &TensorMap, meta: &impl Serialize) -> Result<()> {
    let tensors: BTreeMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let meta = serde_json::to_string(meta).map_err(|e| Error::format(path, e))?;
    atomic::write_bytes(
        path,
        &tensor_file::safetensors_bytes(&tensors, &[(METADATA_KEY, &meta)], path)?,
    )
}

/// The `format` recorded in an offsite file's metadata (`offsite-emulator`, `offsite-adapter`),
/// or `None` for any other file (a model checkpoint, a plain safetensors file). Reads the header
/// only.
pub fn format(path: &Path) -> Option<String> {
    if path.is_dir() {
        let weights = weights_file(path);
        return weights.is_file().then(|| format(&weights)).flatten();
    }
    Some(meta(path)?.get("format")?.as_str()?.to_string())
}

/// The offsite metadata of a safetensors file as JSON, reading the header only (`None` when the
/// file is unreadable or not one of ours). Not checked against the seal: for recognising a
/// file; [`read`] checks.
pub fn meta(path: &Path) -> Option<serde_json::Value> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // A header longer than the file is damage, not a reason to allocate.
    if len > 100_000_000 || len > f.metadata().ok()?.len() {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let meta = header.get("__metadata__")?.get(METADATA_KEY)?.as_str()?;
    serde_json::from_str(meta).ok()
}

/// The metadata of `path` as `M`, once it says it is of `format`.
fn parse_meta<M: serde::de::DeserializeOwned>(
    path: &Path,
    value: serde_json::Value,
    format: &str,
) -> Result<M> {
    let found = value
        .get("format")
        .and_then(|f| f.as_str())
        .unwrap_or("unknown");
    if found != format {
        return Err(Error::format(
            path,
            format!("not {} (this is an `{found}` file)", describe(format)),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| Error::format(path, format!("corrupt offsite metadata ({e})")))
}

/// The metadata of an offsite file of `format` from its header alone, not checked against the
/// seal: for learning how a file was made before loading it ([`read`] checks).
pub fn peek<M: serde::de::DeserializeOwned>(path: &Path, format: &str) -> Result<M> {
    if !path.is_file() {
        return Err(Error::format(
            path,
            format!("no such file (expected {})", describe(format)),
        ));
    }
    let value = meta(path).ok_or_else(|| {
        Error::format(
            path,
            format!("not {} (no offsite metadata)", describe(format)),
        )
    })?;
    parse_meta(path, value, format)
}

/// Reads an offsite file of `format`: checked against its seal, then its parsed metadata, the
/// tensors (as f32) and how it was checked.
pub fn read<M: serde::de::DeserializeOwned>(
    path: &Path,
    format: &str,
    device: &Device,
) -> Result<(M, TensorMap, Seal)> {
    let file = tensor_file::read(path, device)?;
    let meta_json = file
        .metadata
        .get(METADATA_KEY)
        .ok_or_else(|| Error::format(path, "no offsite metadata: not an offsite file"))?;
    let value: serde_json::Value = serde_json::from_str(meta_json)
        .map_err(|e| Error::format(path, format!("corrupt offsite metadata ({e})")))?;
    let meta = parse_meta(path, value, format)?;
    let mut tensors = TensorMap::new(path);
    for (name, t) in file.tensors {
        // Bytes (packed codes, masks, GGUF blocks) stay bytes; values are computed on in f32.
        let t = match t.dtype() {
            candle_core::DType::U8 => t,
            _ => t.to_dtype(candle_core::DType::F32)?,
        };
        tensors.insert(name, t, path);
    }
    tensors.check_finite()?;
    Ok((meta, tensors, file.seal))
}
