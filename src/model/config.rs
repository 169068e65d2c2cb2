//! Model configuration: the numbers that fix a decoder's shapes, plus conversion from and to a
//! Hugging Face `config.json`.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Model families offsite implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// LLaMA and its relatives (SmolLM2, TinyLlama, Mistral-style without sliding window).
    Llama,
}

impl Family {
    /// The names accepted for each family (HF `model_type`, GGUF `general.architecture`).
    pub const SUPPORTED: &'static str = "llama";

    /// Parses an HF `model_type` / GGUF architecture; `path` names the file that declared it.
    pub fn parse(arch: &str, path: &Path) -> Result<Self> {
        match arch {
            "llama" => Ok(Family::Llama),
            other => Err(Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: other.to_string(),
                supported: Self::SUPPORTED.to_string(),
            }),
        }
    }

    /// The HF `model_type` string.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
        }
    }
}

/// Shapes and constants of a decoder-only transformer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Which implementation runs it.
    pub family: Family,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's inner layer.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_token_id: Option<u32>,
}

/// The subset of an HF LLaMA `config.json` we read.
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    num_hidden_layers: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    hidden_act: Option<String>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

/// A token id from a config value that may be a number or a list of numbers (first one wins).
fn token_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
        serde_json::Value::Array(a) => a.first()?.as_u64().map(|n| n as u32),
        _ => None,
    }
}

impl ModelConfig {
    /// Reads an HF `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, e))?;
        let arch = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::format(path, "no `model_type` field"))?
            .to_string();
        let family = Family::parse(&arch, path)?;
        let hf: HfConfig = serde_json::from_value(raw).map_err(|e| Error::format(path, e))?;
        debug_assert_eq!(hf.model_type.as_deref(), Some(arch.as_str()));
        if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(Error::format(path, "RoPE scaling is not supported"));
        }
        if hf.attention_bias || hf.mlp_bias {
            return Err(Error::format(path, "LLaMA with biases is not supported"));
        }
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(Error::format(
                path,
                format!("activation `{act}` is not supported (silu)"),
            ));
        }
        let config = ModelConfig {
            family,
            num_layers: hf.num_hidden_layers,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            vocab_size: hf.vocab_size,
            rope_theta: hf.rope_theta,
            rms_norm_eps: hf.rms_norm_eps,
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            bos_token_id: token_id(&hf.bos_token_id),
            eos_token_id: token_id(&hf.eos_token_id),
        };
        config.validate().map_err(|msg| Error::format(path, msg))?;
        Ok(config)
    }

    /// Checks the numbers are consistent with each other.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let c = self;
        if c.num_layers == 0 || c.hidden_size == 0 || c.num_heads == 0 || c.vocab_size == 0 {
            return Err("layers, hidden size, heads and vocabulary must be positive".into());
        }
        if c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
            return Err(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                c.num_heads, c.num_kv_heads
            ));
        }
        if !c.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", c.head_dim));
        }
        Ok(())
    }

    /// The HF `config.json` for this configuration.
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": self.family.name(),
            "num_hidden_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "torch_dtype": "float32",
        })
    }

    /// A small random-weight-sized configuration for tests.
    pub fn tiny() -> Self {
        ModelConfig {
            family: Family::Llama,
            num_layers: 4,
            hidden_size: 16,
            intermediate_size: 24,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 4,
            vocab_size: 32,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }
}
