//! Hugging Face model directories: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, and `tokenizer.json`. Reading and writing.

use super::atomic;
use super::checkpoint::{Checkpoint, CheckpointFormat};
use super::tensor_file::{self, safetensors_bytes};
use super::tokenizer::Tokenizer;
use crate::model::{Model, ModelConfig, TensorMap};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The weights file of a model that holds modules no Hugging Face class has (bottleneck
/// adapters): named so that `transformers` refuses the directory instead of silently loading the
/// model without them.
pub const OFFSITE_WEIGHTS: &str = "offsite-model.safetensors";

/// The safetensors files of a model directory: the single file, or the shards listed by the
/// index (each once, in order).
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    for name in ["model.safetensors", OFFSITE_WEIGHTS] {
        let single = dir.join(name);
        if single.is_file() {
            return Ok(vec![single]);
        }
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
    for (name, t) in tensor_file::read(file, device)?.tensors {
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
    let tensors = crate::model::families::canonical_names(config.family, tensors);
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

/// Writes `model` (which must hold every layer) and `tokenizer` as a Hugging Face directory:
/// `config.json`, `model.safetensors`, `tokenizer.json` (+ `tokenizer_config.json`). A model
/// with bottleneck adapters is written in offsite's variant of that layout: the weights, adapters
/// included, go to [`OFFSITE_WEIGHTS`]; returns whether that happened.
pub fn save(dir: &Path, model: &Model, tokenizer: Option<&Tokenizer>) -> Result<bool> {
    let config = model.config();
    if model.layer_ids() != (0..config.num_layers).collect::<Vec<_>>() {
        return Err(Error::Invalid(
            "only a model holding all of its layers can be saved as a Hugging Face directory"
                .into(),
        ));
    }
    // A new directory is written under a temporary name and renamed into place, so a killed
    // run leaves no half of one. An existing one (it may hold the user's own files) is written
    // in place with its config.json removed first and written last: killed in between, it
    // reads as incomplete ("no config.json") rather than as new weights under an old config.
    if !dir.exists() {
        atomic::remove_stale_temporaries(dir);
        let tmp = atomic::temp_path(dir);
        let written = save_into(&tmp, model, tokenizer).and_then(|b| {
            std::fs::rename(&tmp, dir)
                .map_err(|e| Error::io(dir, e))
                .map(|_| b)
        });
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        return written;
    }
    let config = dir.join("config.json");
    if config.exists() {
        std::fs::remove_file(&config).map_err(|e| Error::io(&config, e))?;
    }
    save_into(dir, model, tokenizer)
}

/// [`save`]'s files, config.json last.
fn save_into(dir: &Path, model: &Model, tokenizer: Option<&Tokenizer>) -> Result<bool> {
    let config = model.config();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors: BTreeMap<String, Tensor> = model.dense_weights()?.into_iter().collect();
    let offsite_only = tensors.keys().any(|n| crate::peft::is_bottleneck_weight(n));
    let (name, stale) = if offsite_only {
        (OFFSITE_WEIGHTS, "model.safetensors")
    } else {
        ("model.safetensors", OFFSITE_WEIGHTS)
    };
    let weights = dir.join(name);
    atomic::write_bytes(&weights, &safetensors_bytes(&tensors, &[], &weights)?)?;
    // A weights file of the other kind from an earlier save would be read first.
    let stale = dir.join(stale);
    if stale.is_file() {
        std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
    }
    if let Some(tok) = tokenizer {
        tok.save(dir)?;
    }
    // config.json last: a directory with a config is a complete model.
    atomic::write_json(&dir.join("config.json"), &config.to_hf_json())?;
    Ok(offsite_only)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn sharded_checkpoint_loads_like_a_single_file() {
        let dir = tempfile::tempdir().unwrap();
        let model = Model::random(&ModelConfig::tiny(), 3, DType::F32).unwrap();
        save(dir.path(), &model, None).unwrap();
        let single = load(dir.path(), &Device::Cpu).unwrap();

        // Re-save the same tensors as two shards with an index, as transformers does.
        let sharded = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join("config.json"),
            sharded.path().join("config.json"),
        )
        .unwrap();
        let names: Vec<String> = single.tensors.names().map(str::to_string).collect();
        let (a, b) = names.split_at(names.len() / 2);
        let mut weight_map = serde_json::Map::new();
        for (i, part) in [a, b].iter().enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", i + 1);
            let tensors: BTreeMap<String, Tensor> = part
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        single
                            .tensors
                            .iter()
                            .find(|(k, _)| k == n)
                            .unwrap()
                            .1
                            .clone(),
                    )
                })
                .collect();
            let path = sharded.path().join(&file);
            std::fs::write(&path, safetensors_bytes(&tensors, &[], &path).unwrap()).unwrap();
            for n in part.iter() {
                weight_map.insert(n.clone(), file.clone().into());
            }
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(
            sharded.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let back = load(sharded.path(), &Device::Cpu).unwrap();
        assert_eq!(back.tensors.len(), single.tensors.len());
        let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
        let x = single
            .model()
            .unwrap()
            .forward(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let y = back
            .model()
            .unwrap()
            .forward(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(x, y);

        // A missing shard is reported by name.
        std::fs::remove_file(sharded.path().join("model-00002-of-00002.safetensors")).unwrap();
        let err = load(sharded.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    }
}
