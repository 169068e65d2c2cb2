//! Model configuration: the numbers that fix a decoder's shapes, plus conversion from and to a
//! Hugging Face `config.json`.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Model families offsite implements. Everything a family needs beyond the common
/// [`ModelConfig`] fields lives in its own module under `model/families`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// LLaMA and its relatives (SmolLM2, TinyLlama, Mistral-style without sliding window).
    Llama,
    /// Qwen2 / Qwen2.5: LLaMA with q/k/v biases.
    Qwen2,
    /// GPT-2.
    Gpt2,
    /// Meta's OPT.
    Opt,
    /// BigScience's BLOOM.
    Bloom,
    /// Gemma 3, text only.
    Gemma3,
}

impl Family {
    /// Every family, in the order of [`Family::SUPPORTED`].
    pub const ALL: [Family; 6] = [
        Family::Llama,
        Family::Qwen2,
        Family::Gpt2,
        Family::Opt,
        Family::Bloom,
        Family::Gemma3,
    ];

    /// The names accepted for each family (HF `model_type`, GGUF `general.architecture`).
    pub const SUPPORTED: &'static str = "llama, qwen2, gpt2, opt, bloom, gemma3_text";

    /// Parses an HF `model_type` / GGUF architecture; `path` names the file that declared it.
    pub fn parse(arch: &str, path: &Path) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == arch)
            .ok_or_else(|| Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: arch.to_string(),
                supported: Self::SUPPORTED.to_string(),
            })
    }

    /// The HF `model_type` string.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Gpt2 => "gpt2",
            Family::Opt => "opt",
            Family::Bloom => "bloom",
            Family::Gemma3 => "gemma3_text",
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
    /// RoPE base θ (of the global layers, where a family has local ones too).
    pub rope_theta: f64,
    /// Epsilon of the normalisations (RMSNorm or LayerNorm, whichever the family uses).
    pub rms_norm_eps: f64,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_token_id: Option<u32>,
    /// RoPE base θ of sliding-window (local) layers, for families that have them (Gemma 3).
    #[serde(default)]
    pub local_rope_theta: Option<f64>,
    /// The checkpoint's own `config.json`, kept by every family but LLaMA (whose file the
    /// fields above describe completely): the family reads its own settings (activation, norm
    /// placement, layer types, …) from here, and saving writes it back unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_config: Option<serde_json::Value>,
}

/// Typed access to the fields of a `config.json`, with errors that name the file. Keys may be
/// dotted paths into nested objects (`rope_parameters.rope_theta`); of several keys the first
/// present (and not null) wins, which covers families' and versions' different spellings.
pub struct HfJson<'a> {
    /// The parsed file.
    pub raw: &'a serde_json::Value,
    /// Where it came from.
    pub path: &'a Path,
}

impl<'a> HfJson<'a> {
    /// The first of `keys` present and not null.
    pub fn value(&self, keys: &[&str]) -> Option<&'a serde_json::Value> {
        keys.iter().find_map(|k| {
            k.split('.')
                .try_fold(self.raw, |v, part| v.get(part))
                .filter(|v| !v.is_null())
        })
    }

    fn typed<T: serde::de::DeserializeOwned>(&self, keys: &[&str]) -> Result<Option<T>> {
        self.value(keys)
            .map(|v| {
                serde_json::from_value(v.clone())
                    .map_err(|e| Error::format(self.path, format!("`{}`: {e}", keys[0])))
            })
            .transpose()
    }

    /// An optional number.
    pub fn usize(&self, keys: &[&str]) -> Result<Option<usize>> {
        self.typed(keys)
    }

    /// A number that must be present.
    pub fn required(&self, keys: &[&str]) -> Result<usize> {
        self.usize(keys)?
            .ok_or_else(|| Error::format(self.path, format!("no `{}` field", keys[0])))
    }

    /// An optional float.
    pub fn f64(&self, keys: &[&str]) -> Result<Option<f64>> {
        self.typed(keys)
    }

    /// An optional flag.
    pub fn bool(&self, keys: &[&str]) -> Result<Option<bool>> {
        self.typed(keys)
    }

    /// An optional string.
    pub fn str(&self, keys: &[&str]) -> Result<Option<String>> {
        self.typed(keys)
    }

    /// A token id that may be a number or a list of numbers (first one wins).
    pub fn token_id(&self, key: &str) -> Option<u32> {
        match self.value(&[key])? {
            serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
            serde_json::Value::Array(a) => a.first()?.as_u64().map(|n| n as u32),
            _ => None,
        }
    }

    /// An error about this file.
    pub fn error(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(self.path, msg.to_string())
    }

    /// Fails unless the activation named by `keys` is absent or one of `allowed`.
    pub fn expect_activation(&self, keys: &[&str], allowed: &[&str]) -> Result<()> {
        match self.str(keys)? {
            Some(act) if !allowed.contains(&act.as_str()) => Err(self.error(format!(
                "activation `{act}` is not supported ({})",
                allowed.join(", ")
            ))),
            _ => Ok(()),
        }
    }

    /// Fails when RoPE scaling of a kind other than `default` is configured.
    pub fn expect_plain_rope(&self) -> Result<()> {
        let scaled = |v: &serde_json::Value| {
            v.get("rope_type")
                .or_else(|| v.get("type"))
                .and_then(|t| t.as_str())
                .is_some_and(|t| t != "default")
        };
        let nested = self
            .value(&["rope_parameters"])
            .and_then(|v| v.as_object())
            .is_some_and(|o| o.values().any(scaled));
        if self.value(&["rope_scaling"]).is_some_and(scaled)
            || self.value(&["rope_parameters"]).is_some_and(scaled)
            || nested
        {
            return Err(self.error("RoPE scaling is not supported"));
        }
        Ok(())
    }
}

impl ModelConfig {
    /// Reads an HF `config.json`; the family named by its `model_type` interprets the rest.
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
        let json = HfJson { raw: &raw, path };
        let config = super::families::architecture(family).config(&json)?;
        config.validate().map_err(|msg| Error::format(path, msg))?;
        Ok(config)
    }

    /// The HF name prefix of layer `N`'s weights, up to the index (`model.layers.`).
    pub fn layer_prefix(&self) -> &'static str {
        super::families::architecture(self.family).layer_prefix()
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
        Ok(())
    }

    /// The HF `config.json` for this configuration: the checkpoint's own when it came with
    /// one, otherwise a LLaMA config built from the fields.
    pub fn to_hf_json(&self) -> serde_json::Value {
        if let Some(raw) = &self.hf_config {
            return raw.clone();
        }
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
            local_rope_theta: None,
            hf_config: None,
        }
    }
}
