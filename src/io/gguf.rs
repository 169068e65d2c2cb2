//! Loading a llama.cpp GGUF checkpoint: every tensor dequantized to f32 under its Hugging Face
//! name, the configuration and the tokenizer from the metadata.

use super::checkpoint::{Checkpoint, CheckpointFormat};
use super::tokenizer::Tokenizer;
use crate::model::{Family, ModelConfig, TensorMap};
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

/// A numeric metadata value of any integer or float type.
fn number(content: &Content, key: &str) -> Option<f64> {
    Some(match content.metadata.get(key)? {
        Value::U8(v) => *v as f64,
        Value::I8(v) => *v as f64,
        Value::U16(v) => *v as f64,
        Value::I16(v) => *v as f64,
        Value::U32(v) => *v as f64,
        Value::I32(v) => *v as f64,
        Value::U64(v) => *v as f64,
        Value::I64(v) => *v as f64,
        Value::F32(v) => *v as f64,
        Value::F64(v) => *v,
        _ => return None,
    })
}

/// A required numeric metadata value.
fn required(content: &Content, key: &str, path: &Path) -> Result<f64> {
    number(content, key)
        .ok_or_else(|| Error::format(path, format!("GGUF metadata `{key}` is missing")))
}

/// The model configuration stored in GGUF metadata.
fn config_from_metadata(content: &Content, path: &Path) -> Result<ModelConfig> {
    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(Error::format(
                path,
                "GGUF metadata has no `general.architecture`",
            ))
        }
    };
    let family = Family::parse(&arch, path)?;
    // GGUF tensor names are mapped to HF names for LLaMA's layout only.
    if family != Family::Llama {
        return Err(Error::format(
            path,
            format!("GGUF files of `{arch}` models are not supported (only llama); use the Hugging Face directory"),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = required(content, &key("embedding_length"), path)? as usize;
    let heads = required(content, &key("attention.head_count"), path)? as usize;
    let vocab_size = match content.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a.len(),
        _ => content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| Error::format(path, "cannot tell the vocabulary size"))?,
    };
    let head_dim = number(content, &key("attention.key_length"))
        .or_else(|| number(content, &key("rope.dimension_count")))
        .map(|d| d as usize)
        .unwrap_or(hidden / heads.max(1));
    let config = ModelConfig {
        family,
        num_layers: required(content, &key("block_count"), path)? as usize,
        hidden_size: hidden,
        intermediate_size: required(content, &key("feed_forward_length"), path)? as usize,
        num_heads: heads,
        num_kv_heads: number(content, &key("attention.head_count_kv")).unwrap_or(heads as f64)
            as usize,
        head_dim,
        vocab_size,
        rope_theta: number(content, &key("rope.freq_base")).unwrap_or(10_000.0),
        // Stored as f32: 1e-5 reads back as 9.99999974e-6, exactly what transformers uses.
        rms_norm_eps: number(content, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        max_position_embeddings: number(content, &key("context_length")).unwrap_or(2048.0) as usize,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        bos_token_id: number(content, "tokenizer.ggml.bos_token_id").map(|v| v as u32),
        eos_token_id: number(content, "tokenizer.ggml.eos_token_id").map(|v| v as u32),
        local_rope_theta: None,
        hf_config: None,
    };
    config.validate().map_err(|msg| Error::format(path, msg))?;
    Ok(config)
}

/// The HF name of a GGUF tensor, or `None` for tensors we do not use.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's row permutation of q/k (made for its interleaved RoPE) so that HF's
/// rotate-half RoPE applies: rows `[head, half, pair]` become `[head, pair, half]`.
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    // A damaged head count must be an error, not a reshape that candle's copy trips over.
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        candle_core::bail!("{rows} rows cannot be split into {n_head} heads of pairs");
    }
    let head_dim = rows / n_head;
    w.reshape((n_head, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// Loads a GGUF file onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let content = Content::read(&mut file).map_err(|e| {
        let msg = crate::error::candle_message(&e);
        Error::format(path, format!("not a readable GGUF file ({msg})"))
    })?;
    let config = config_from_metadata(&content, path)?;
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
        let Some(hf) = hf_name(name) else { continue };
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
            if name.ends_with("attn_q.weight") {
                unpermute_qk(&t, config.num_heads)
            } else if name.ends_with("attn_k.weight") {
                unpermute_qk(&t, config.num_kv_heads)
            } else {
                Ok(t)
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_names() {
        assert_eq!(
            hf_name("blk.12.attn_k.weight").as_deref(),
            Some("model.layers.12.self_attn.k_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_moves_pairs_to_halves() -> candle_core::Result<()> {
        // One head of dim 4 with rows stored as interleaved pairs (a0 b0 a1 b1) → (a0 a1 b0 b1).
        let w = Tensor::new(&[[0f32], [10.], [1.], [11.]], &Device::Cpu)?;
        let u = unpermute_qk(&w, 1)?;
        assert_eq!(u.flatten_all()?.to_vec1::<f32>()?, vec![0., 1., 10., 11.]);
        Ok(())
    }
}
