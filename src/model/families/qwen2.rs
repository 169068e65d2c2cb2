//! Qwen2 / Qwen2.5: the LLaMA layer with biases on q, k and v; RMSNorm eps 1e-6 and tied
//! embeddings for the small checkpoints (the class default is untied).

use super::llama::{common_config, LlamaLayer};
use super::Architecture;
use crate::model::config::{Family, HfJson, ModelConfig};
use crate::model::layer::DecoderLayer;
use crate::model::tensor_map::TensorMap;

/// The Qwen2 family.
pub struct Qwen2;

impl Architecture for Qwen2 {
    fn config(&self, json: &HfJson) -> crate::Result<ModelConfig> {
        json.expect_activation(&["hidden_act"], &["silu"])?;
        // Hub configs carry a `sliding_window` value even when it is off; only the flag counts.
        if json.bool(&["use_sliding_window"])? == Some(true) {
            return Err(json.error("Qwen2 sliding-window attention is not supported"));
        }
        let mut config = common_config(json, Family::Qwen2, false, 1e-6)?;
        // Saving writes this back: the generated config is LLaMA's.
        config.hf_config = Some(json.raw.clone());
        Ok(config)
    }

    fn layer(
        &self,
        config: &ModelConfig,
        tensors: &TensorMap,
        index: usize,
    ) -> crate::Result<Box<dyn DecoderLayer>> {
        Ok(Box::new(LlamaLayer::load(config, tensors, index, true)?))
    }
}
