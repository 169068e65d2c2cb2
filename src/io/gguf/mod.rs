//! Loading a llama.cpp GGUF checkpoint: every tensor dequantized to f32 under its Hugging Face
//! name (with llama.cpp's value changes undone), the configuration and the tokenizer from the
//! metadata. What each architecture's file means is in [`layout`].

use super::checkpoint::{Checkpoint, CheckpointFormat};
use super::tokenizer::Tokenizer;
mod layout;

use layout::Layout;

use crate::model::config::HfJson;
use crate::model::{ModelConfig, TensorMap};
use crate::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// Whether the file starts with the GGUF magic bytes.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// The model configuration stored in GGUF metadata, read by the family from the HF
/// `config.json` the metadata stands for.
fn config_from_metadata(content: &Content, path: &Path) -> Result<(Layout, ModelConfig)> {
    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(Error::format(
                path,
                "GGUF metadata has no `general.architecture`",
            ))
        }
    };
    let layout = Layout::of(&arch, path)?;
    let raw = layout.hf_config(content, &arch, path)?;
    let json = HfJson { raw: &raw, path };
    let config = crate::model::architecture(layout.family()).config(&json)?;
    config.validate().map_err(|msg| Error::format(path, msg))?;
    Ok((layout, config))
}

/// Loads a GGUF file onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let content = Content::read(&mut file).map_err(|e| {
        let msg = crate::error::candle_message(&e);
        Error::format(path, format!("not a readable GGUF file ({msg})"))
    })?;
    let (layout, config) = config_from_metadata(&content, path)?;
    let mut tensors = TensorMap::new(path);
    let mut stored_dtypes = std::collections::BTreeMap::new();
    for info in content.tensor_infos.values() {
        *stored_dtypes
            .entry(format!("{:?}", info.ggml_dtype))
            .or_insert(0) += 1;
    }
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = layout.hf_name(name) else {
            // Tensors offsite has no use for (e.g. `rope_freqs.weight`) are skipped, but a bias
            // the layer would need cannot be: leaving it out would give a different model.
            if name.starts_with("blk.") && name.ends_with(".bias") {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor `{name}`: biases in a `{}` GGUF are not supported",
                        layout.name()
                    ),
                ));
            }
            continue;
        };
        // The reader multiplies the dimensions and the byte size unchecked: a damaged dimension
        // can wrap either around to a small number that passes its size check, then allocate
        // the unwrapped count. No GGML type stores an element in less than 2 bits.
        let dims = content.tensor_infos[name].shape.dims();
        if dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .is_none_or(|n| n as u64 / 4 > file_len)
        {
            return Err(Error::format(
                path,
                format!("tensor `{name}` has an impossible shape {dims:?}"),
            ));
        }
        let read = |file: &mut std::fs::File| -> candle_core::Result<Tensor> {
            let t = content.tensor(file, name, device)?.dequantize(device)?;
            let t = t.to_dtype(DType::F32)?;
            layout.restore(name, t, config.num_heads, config.num_kv_heads)
        };
        let t = read(&mut file).map_err(|e| {
            Error::format(
                path,
                format!("tensor `{name}`: {}", crate::error::candle_message(&e)),
            )
        })?;
        tensors.insert(hf, t, path);
    }
    let tokenizer = if content.metadata.contains_key("tokenizer.ggml.tokens") {
        Some(Tokenizer::from_gguf(&content, path)?)
    } else {
        None
    };
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: CheckpointFormat::Gguf,
        config,
        tensors,
        tokenizer,
        stored_dtypes,
    })
}
