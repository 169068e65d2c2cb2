//! GPT-2: learned positions, pre-LN, `Conv1D` maps stored `[in, out]`, fused `c_attn` as
//! `[q | k | v]`, `gelu_new`, tied head.

use super::classic::{
    classic_config, ClassicDims, ClassicLayer, ClassicNames, ClassicSpec, QkvLayout,
};
use super::{hf_json, layer_loader, root_loader, untied_head, Activation, Architecture};
use crate::model::config::{Family, HfJson, ModelConfig};
use crate::model::layer::DecoderLayer;
use crate::model::stem::{Positions, Stem};
use crate::model::tensor_map::TensorMap;

/// The GPT-2 family.
pub struct Gpt2;

const NAMES: ClassicNames = ClassicNames {
    ln1: "ln_1",
    qkv: &["attn.c_attn"],
    out: "attn.c_proj",
    ln2: "ln_2",
    up: "mlp.c_fc",
    down: "mlp.c_proj",
};

fn spec(config: &ModelConfig) -> crate::Result<ClassicSpec> {
    let json = hf_json(config)?;
    let scaled = json.bool(&["scale_attn_weights"])?.unwrap_or(true);
    Ok(ClassicSpec {
        names: &NAMES,
        layout: QkvLayout::FusedBlocks,
        conv1d: true,
        bias: true,
        act: Activation::parse(&json, &["activation_function"], Activation::GeluTanh)?,
        pre_norm: true,
        alibi: false,
        scale: if scaled {
            1.0 / (config.head_dim as f64).sqrt()
        } else {
            1.0
        },
    })
}

impl Architecture for Gpt2 {
    fn config(&self, json: &HfJson) -> crate::Result<ModelConfig> {
        if json.bool(&["scale_attn_by_inverse_layer_idx"])? == Some(true) {
            return Err(json.error("`scale_attn_by_inverse_layer_idx` is not supported"));
        }
        if json.bool(&["add_cross_attention"])? == Some(true) {
            return Err(json.error("cross-attention is not supported"));
        }
        Activation::parse(json, &["activation_function"], Activation::GeluTanh)?;
        let hidden_size = json.required(&["n_embd", "hidden_size"])?;
        let dims = ClassicDims {
            layers: json.required(&["n_layer", "num_hidden_layers"])?,
            hidden: hidden_size,
            heads: json.required(&["n_head", "num_attention_heads"])?,
            intermediate: json.usize(&["n_inner"])?.unwrap_or(4 * hidden_size),
            eps: json.f64(&["layer_norm_epsilon"])?.unwrap_or(1e-5),
            max_positions: json
                .usize(&["n_positions", "max_position_embeddings"])?
                .unwrap_or(1024),
        };
        classic_config(json, Family::Gpt2, dims)
    }

    fn layer_prefix(&self) -> &'static str {
        "transformer.h."
    }

    fn base_prefix(&self) -> &'static str {
        "transformer."
    }

    fn stem(&self, config: &ModelConfig, tensors: &TensorMap) -> crate::Result<Stem> {
        let root = root_loader(tensors);
        let (v, h) = (config.vocab_size, config.hidden_size);
        Ok(Stem {
            tokens: (
                "transformer.wte.weight".into(),
                root.weight("transformer.wte.weight", &[v, h])?,
            ),
            positions: Some((
                "transformer.wpe.weight".into(),
                Positions {
                    weight: root.weight(
                        "transformer.wpe.weight",
                        &[config.max_position_embeddings, h],
                    )?,
                    offset: 0,
                },
            )),
            scale: None,
            project_in: None,
            embed_norm: None,
            final_norm: Some((
                "transformer.ln_f".into(),
                root.layer_norm("transformer.ln_f", h, config.rms_norm_eps)?,
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
        let l = layer_loader(tensors, self.layer_prefix(), index);
        Ok(Box::new(ClassicLayer::load(
            spec(config)?,
            config,
            &l,
            index,
        )?))
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["c_attn", "c_proj", "c_fc"]
    }

    fn adapter_targets(&self) -> &'static [&'static str] {
        // `c_proj` names both the attention output and the MLP output.
        &["c_proj"]
    }

    fn fan_in_fan_out(&self) -> bool {
        true
    }
}
