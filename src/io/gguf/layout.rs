//! What a GGUF file of each supported architecture means in Hugging Face terms: the
//! `config.json` its metadata stands for, the HF name of each tensor, and the changes llama.cpp's
//! converter made to some values (which loading undoes). The family then reads that config.json
//! exactly as it reads one from an HF directory, so there is one interpretation of each family's
//! settings.

use crate::model::Family;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Tensor;
use serde_json::{json, Map, Value as Json};
use std::path::Path;

/// The GGUF architectures offsite reads (`general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `llama`: q/k rows permuted for llama.cpp's interleaved RoPE.
    Llama,
    /// `qwen2`: LLaMA's names plus q/k/v biases; no permutation (NeoX RoPE).
    Qwen2,
    /// `gemma3`: four norms per layer plus q/k norms, every norm stored as `1 + w`.
    Gemma3,
}

/// The architectures accepted, for error messages.
const SUPPORTED: &str = "llama, qwen2, gemma3";

impl Layout {
    /// The layout of a file whose `general.architecture` is `arch`.
    pub fn of(arch: &str, path: &Path) -> Result<Self> {
        match arch {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "gemma3" => Ok(Self::Gemma3),
            other => Err(Error::format(
                path,
                format!(
                    "GGUF files of `{other}` models are not supported (GGUF: {SUPPORTED}); use the Hugging Face directory"
                ),
            )),
        }
    }

    /// The `general.architecture` value of the layout.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Gemma3 => "gemma3",
        }
    }

    /// The model family the layout belongs to.
    pub fn family(self) -> Family {
        match self {
            Self::Llama => Family::Llama,
            Self::Qwen2 => Family::Qwen2,
            Self::Gemma3 => Family::Gemma3,
        }
    }

    /// The HF `config.json` the metadata stands for (keys under `{arch}.`), with llama.cpp's
    /// built-in settings for what the file does not store.
    pub fn hf_config(self, content: &Content, arch: &str, path: &Path) -> Result<Json> {
        let key = |k: &str| format!("{arch}.{k}");
        let num = |k: &str| number(content, &key(k));
        let req = |k: &str| {
            num(k).ok_or_else(|| {
                Error::format(path, format!("GGUF metadata `{arch}.{k}` is missing"))
            })
        };
        let hidden = req("embedding_length")?;
        let heads = req("attention.head_count")?;
        let vocab_size = match content.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => content
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0])
                .ok_or_else(|| Error::format(path, "cannot tell the vocabulary size"))?,
        };
        let head_dim = num("attention.key_length")
            .or_else(|| num("rope.dimension_count"))
            .unwrap_or(if heads > 0.0 { hidden / heads } else { 0.0 });
        let mut c = Map::new();
        let mut set = |k: &str, v: Json| {
            c.insert(k.to_string(), v);
        };
        set("model_type", json!(self.family().name()));
        set("num_hidden_layers", json!(req("block_count")? as usize));
        set("hidden_size", json!(hidden as usize));
        set(
            "intermediate_size",
            json!(req("feed_forward_length")? as usize),
        );
        set("num_attention_heads", json!(heads as usize));
        set(
            "num_key_value_heads",
            json!(num("attention.head_count_kv").unwrap_or(heads) as usize),
        );
        set("head_dim", json!(head_dim as usize));
        set("vocab_size", json!(vocab_size));
        // Stored as f32: 1e-5 reads back as 9.99999974e-6, exactly what transformers uses.
        if let Some(eps) = num("attention.layer_norm_rms_epsilon") {
            set("rms_norm_eps", json!(eps));
        }
        if let Some(ctx) = num("context_length") {
            set("max_position_embeddings", json!(ctx as usize));
        }
        set(
            "tie_word_embeddings",
            json!(!content.tensor_infos.contains_key("output.weight")),
        );
        for (hf, gguf) in [
            ("bos_token_id", "tokenizer.ggml.bos_token_id"),
            ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ] {
            if let Some(id) = number(content, gguf) {
                set(hf, json!(id as i64));
            }
        }
        // RoPE scaling is refused by the families: carry it so that the error says so.
        if let Some(Value::String(kind)) = content.metadata.get(&key("rope.scaling.type")) {
            if kind != "none" {
                let factor = num("rope.scaling.factor").unwrap_or(1.0);
                set("rope_scaling", json!({"rope_type": kind, "factor": factor}));
            }
        }
        match self {
            Self::Llama | Self::Qwen2 => {
                set(
                    "rope_theta",
                    json!(num("rope.freq_base").unwrap_or(10_000.0)),
                );
                set("hidden_act", json!("silu"));
            }
            Self::Gemma3 => {
                // llama.cpp's Gemma 3: global layers use the file's RoPE base, local ones 10,000;
                // every sixth layer is global unless the file says otherwise; queries are scaled
                // by head_dim^-½ (the 27B model, which differs, is not a case we load).
                set(
                    "rope_theta",
                    json!(num("rope.freq_base").unwrap_or(1_000_000.0)),
                );
                set("rope_local_base_freq", json!(10_000.0));
                set("query_pre_attn_scalar", json!(head_dim as usize));
                set("hidden_activation", json!("gelu_pytorch_tanh"));
                if let Some(w) = num("attention.sliding_window") {
                    set("sliding_window", json!(w as usize));
                }
                if let Some(p) = num("attention.sliding_window_pattern") {
                    set("sliding_window_pattern", json!(p as usize));
                }
                for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
                    if let Some(v) = num(k) {
                        set(k, json!(v));
                    }
                }
            }
        }
        Ok(Json::Object(c))
    }

    /// The HF name of a GGUF tensor, or `None` for tensors offsite does not use.
    pub fn hf_name(self, gguf: &str) -> Option<String> {
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
        let (module, kind) = part.rsplit_once('.')?;
        if kind != "weight" && !(kind == "bias" && self == Self::Qwen2) {
            return None;
        }
        let hf = match (self, module) {
            (_, "attn_q") => "self_attn.q_proj",
            (_, "attn_k") => "self_attn.k_proj",
            (_, "attn_v") => "self_attn.v_proj",
            (_, "attn_output") => "self_attn.o_proj",
            (_, "ffn_gate") => "mlp.gate_proj",
            (_, "ffn_up") => "mlp.up_proj",
            (_, "ffn_down") => "mlp.down_proj",
            (_, "attn_norm") => "input_layernorm",
            (Self::Llama | Self::Qwen2, "ffn_norm") => "post_attention_layernorm",
            (Self::Gemma3, "attn_q_norm") => "self_attn.q_norm",
            (Self::Gemma3, "attn_k_norm") => "self_attn.k_norm",
            (Self::Gemma3, "post_attention_norm") => "post_attention_layernorm",
            (Self::Gemma3, "ffn_norm") => "pre_feedforward_layernorm",
            (Self::Gemma3, "post_ffw_norm") => "post_feedforward_layernorm",
            _ => return None,
        };
        Some(format!("model.layers.{layer}.{hf}.{kind}"))
    }

    /// Undoes what llama.cpp's converter did to the dequantized tensor `gguf`: LLaMA's q/k row
    /// permutation, Gemma's `1 + w` norms (the family applies the `1 +` itself, as transformers
    /// does).
    pub fn restore(
        self,
        gguf: &str,
        t: Tensor,
        heads: usize,
        kv_heads: usize,
    ) -> candle_core::Result<Tensor> {
        match self {
            Self::Llama if gguf.ends_with("attn_q.weight") => unpermute_qk(&t, heads),
            Self::Llama if gguf.ends_with("attn_k.weight") => unpermute_qk(&t, kv_heads),
            Self::Gemma3 if gguf.ends_with("norm.weight") => t.affine(1.0, -1.0),
            _ => Ok(t),
        }
    }
}

/// A numeric metadata value of any integer or float type.
pub fn number(content: &Content, key: &str) -> Option<f64> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn maps_names_per_architecture() {
        let l = Layout::Llama;
        assert_eq!(
            l.hf_name("blk.12.attn_k.weight").as_deref(),
            Some("model.layers.12.self_attn.k_proj.weight")
        );
        assert_eq!(
            l.hf_name("blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.post_attention_layernorm.weight")
        );
        assert_eq!(
            l.hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(l.hf_name("rope_freqs.weight"), None);
        assert_eq!(l.hf_name("blk.0.attn_q.bias"), None);
        assert_eq!(
            Layout::Qwen2.hf_name("blk.0.attn_q.bias").as_deref(),
            Some("model.layers.0.self_attn.q_proj.bias")
        );
        let g = Layout::Gemma3;
        assert_eq!(
            g.hf_name("blk.5.ffn_norm.weight").as_deref(),
            Some("model.layers.5.pre_feedforward_layernorm.weight")
        );
        assert_eq!(
            g.hf_name("blk.5.post_ffw_norm.weight").as_deref(),
            Some("model.layers.5.post_feedforward_layernorm.weight")
        );
        assert_eq!(
            g.hf_name("blk.0.attn_k_norm.weight").as_deref(),
            Some("model.layers.0.self_attn.k_norm.weight")
        );
        assert_eq!(l.hf_name("blk.0.attn_k_norm.weight"), None);
    }

    #[test]
    fn unpermute_moves_pairs_to_halves() -> candle_core::Result<()> {
        // One head of dim 4 with rows stored as interleaved pairs (a0 b0 a1 b1) → (a0 a1 b0 b1).
        let w = Tensor::new(&[[0f32], [10.], [1.], [11.]], &Device::Cpu)?;
        let u = unpermute_qk(&w, 1)?;
        assert_eq!(u.flatten_all()?.to_vec1::<f32>()?, vec![0., 1., 10., 11.]);
        Ok(())
    }

    #[test]
    fn restores_gemma_norms_and_leaves_maps_alone() -> candle_core::Result<()> {
        let t = Tensor::new(&[1.5f32, 0.25], &Device::Cpu)?;
        let g = Layout::Gemma3;
        let norm = g.restore("blk.0.attn_q_norm.weight", t.clone(), 4, 1)?;
        assert_eq!(norm.to_vec1::<f32>()?, vec![0.5, -0.75]);
        let out = g.restore("output_norm.weight", t.clone(), 4, 1)?;
        assert_eq!(out.to_vec1::<f32>()?, vec![0.5, -0.75]);
        let w = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
        let q = g.restore("blk.0.attn_q.weight", w.clone(), 1, 1)?;
        assert_eq!(q.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        // LLaMA's norms are stored as they are.
        let n = Layout::Llama.restore("blk.0.attn_norm.weight", t.clone(), 1, 1)?;
        assert_eq!(n.to_vec1::<f32>()?, vec![1.5, 0.25]);
        Ok(())
    }
}
