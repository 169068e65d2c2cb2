//! BLOOM: ALiBi instead of positions, a LayerNorm on the embeddings, fused `query_key_value`
//! laid out per head, GELU (tanh), MLP width 4×hidden, tied head.

use super::classic::{
    classic_config, ClassicDims, ClassicLayer, ClassicNames, ClassicSpec, QkvLayout,
};
use super::{layer_loader, root_loader, untied_head, Activation, Architecture};
use crate::model::config::{Family, HfJson, ModelConfig};
use crate::model::layer::DecoderLayer;
use crate::model::stem::Stem;
use crate::model::tensor_map::TensorMap;

/// The BLOOM family.
pub struct Bloom;

const NAMES: ClassicNames = ClassicNames {
    ln1: "input_layernorm",
    qkv: &["self_attention.query_key_value"],
    out: "self_attention.dense",
    ln2: "post_attention_layernorm",
    up: "mlp.dense_h_to_4h",
    down: "mlp.dense_4h_to_h",
};

impl Architecture for Bloom {
    fn config(&self, json: &HfJson) -> crate::Result<ModelConfig> {
        if json.bool(&["apply_residual_connection_post_layernorm"])? == Some(true) {
            return Err(
                json.error("`apply_residual_connection_post_layernorm: true` is not supported")
            );
        }
        let hidden_size = json.required(&["hidden_size", "n_embed"])?;
        let dims = ClassicDims {
            layers: json.required(&["n_layer", "num_hidden_layers"])?,
            hidden: hidden_size,
            heads: json.required(&["n_head", "num_attention_heads"])?,
            // BLOOM has no option for it.
            intermediate: 4 * hidden_size,
            eps: json.f64(&["layer_norm_epsilon"])?.unwrap_or(1e-5),
            // ALiBi has no table; BLOOM was trained on 2048 tokens.
            max_positions: json.usize(&["seq_length"])?.unwrap_or(2048),
        };
        classic_config(json, Family::Bloom, dims)
    }

    fn layer_prefix(&self) -> &'static str {
        "transformer.h."
    }

    fn base_prefix(&self) -> &'static str {
        "transformer."
    }

    fn stem(&self, config: &ModelConfig, tensors: &TensorMap) -> crate::Result<Stem> {
        let root = root_loader(tensors);
        let (v, h, eps) = (config.vocab_size, config.hidden_size, config.rms_norm_eps);
        Ok(Stem {
            tokens: (
                "transformer.word_embeddings.weight".into(),
                root.weight("transformer.word_embeddings.weight", &[v, h])?,
            ),
            positions: None,
            scale: None,
            project_in: None,
            embed_norm: Some((
                "transformer.word_embeddings_layernorm".into(),
                root.layer_norm("transformer.word_embeddings_layernorm", h, eps)?,
            )),
            final_norm: Some((
                "transformer.ln_f".into(),
                root.layer_norm("transformer.ln_f", h, eps)?,
            )),
            project_out: None,
            lm_head: untied_head(config, tensors)?,
        })
    }

    fn layer(
        &self,
        config: &ModelConfig,
        tensors: &TensorMap,
        index: usize,
    ) -> crate::Result<Box<dyn DecoderLayer>> {
        let spec = ClassicSpec {
            names: &NAMES,
            layout: QkvLayout::FusedPerHead,
            conv1d: false,
            bias: true,
            act: Activation::GeluTanh,
            pre_norm: true,
            alibi: true,
            scale: 1.0 / (config.head_dim as f64).sqrt(),
        };
        let l = layer_loader(tensors, self.layer_prefix(), index);
        Ok(Box::new(ClassicLayer::load(spec, config, &l, index)?))
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    }

    fn adapter_targets(&self) -> &'static [&'static str] {
        &["dense", "dense_4h_to_h"]
    }
}
