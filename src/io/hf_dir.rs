//! Hugging Face model directories: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, and `tokenizer.json`. Reading and writing.

use super::atomic;
use super::checkpoint::{Checkpoint, CheckpointFormat};
use super::tokenizer::Tokenizer;
use crate::model::{Model, ModelConfig, TensorMap};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The safetensors files of a model directory: the single file, or the shards listed by the
/// index (each once, in order).
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::format(
            dir,
            "no model.safetensors or model.safetensors.index.json in this directory",
        ));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&index, e))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(&index, "no `weight_map` object"))?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| Error::format(&index, format!("`{name}` maps to a non-string")))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(Error::format(
                &index,
                format!("suspicious shard name `{file}`"),
            ));
        }
        files.insert(file.to_string());
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Reads every tensor of one safetensors file as f32.
fn read_safetensors(
    file: &Path,
    device: &Device,
    into: &mut TensorMap,
    stored_dtypes: &mut BTreeMap<String, usize>,
) -> Result<()> {
    let tensors = candle_core::safetensors::load(file, device).map_err(|e| {
        let msg = crate::error::candle_message(&e);
        Error::format(file, format!("not a readable safetensors file ({msg})"))
    })?;
    for (name, t) in tensors {
        *stored_dtypes.entry(format!("{:?}", t.dtype())).or_insert(0) += 1;
        let t = t.to_dtype(DType::F32).map_err(|e| {
            Error::format(
                file,
                format!("tensor `{name}`: {}", crate::error::candle_message(&e)),
            )
        })?;
        into.insert(name, t, file);
    }
    Ok(())
}

/// Loads a Hugging Face model directory onto `device`.
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let config = ModelConfig::from_hf_json(&dir.join("config.json"))?;
    let mut tensors = TensorMap::new(dir);
    let mut stored_dtypes = BTreeMap::new();
    for file in weight_files(dir)? {
        read_safetensors(&file, device, &mut tensors, &mut stored_dtypes)?;
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.is_file() {
        Some(Tokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    Ok(Checkpoint {
        path: dir.to_path_buf(),
        format: CheckpointFormat::HfDir,
        config,
        tensors,
        tokenizer,
        stored_dtypes,
    })
}

/// Serializes named tensors as safetensors bytes (with HF's `format: pt` metadata).
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<Vec<u8>> {
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let contiguous = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    safetensors::serialize(contiguous, metadata).map_err(|e| Error::format(path, e))
}

/// Writes `model` (which must hold every layer) and `tokenizer` as a Hugging Face directory:
/// `config.json`, `model.safetensors`, `tokenizer.json` (+ `tokenizer_config.json`).
pub fn save(dir: &Path, model: &Model, tokenizer: Option<&Tokenizer>) -> Result<()> {
    let config = model.config();
    if model.layer_ids() != (0..config.num_layers).collect::<Vec<_>>() {
        return Err(Error::Invalid(
            "only a model holding all of its layers can be saved as a Hugging Face directory"
                .into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors: BTreeMap<String, Tensor> = model
        .named_weights()
        .into_iter()
        .map(|(name, w)| (name, w.tensor().clone()))
        .collect();
    let weights = dir.join("model.safetensors");
    atomic::write_bytes(&weights, &safetensors_bytes(&tensors, &weights)?)?;
    if let Some(tok) = tokenizer {
        tok.save(dir)?;
    }
    // config.json last: a directory with a config is a complete model.
    atomic::write_json(&dir.join("config.json"), &config.to_hf_json())
}
