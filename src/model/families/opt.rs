//! OPT: learned positions at row `t + 2`, q/k/v/out maps with biases, ReLU MLP, pre-LN (or
//! post-LN with `do_layer_norm_before: false`, as OPT-350m), an optional projection between the
//! embedding width and the hidden size (`project_in`/`project_out`), tied head.

use super::classic::{
    classic_config, ClassicDims, ClassicLayer, ClassicNames, ClassicSpec, QkvLayout,
};
use super::{hf_json, layer_loader, root_loader, Activation, Architecture};
use crate::model::config::{Family, HfJson, ModelConfig};
use crate::model::layer::DecoderLayer;
use crate::model::stem::{Positions, Stem};
use crate::model::tensor_map::TensorMap;

/// The OPT family.
pub struct Opt;

/// OPT reserves the first two rows of its position table (a fairseq legacy).
const POSITION_OFFSET: usize = 2;

const NAMES: ClassicNames = ClassicNames {
    ln1: "self_attn_layer_norm",
    qkv: &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    out: "self_attn.out_proj",
    // Inside a layer `final_layer_norm` is the norm before the MLP.
    ln2: "final_layer_norm",
    up: "fc1",
    down: "fc2",
};

/// Settings OPT reads beyond the common fields.
struct OptOptions {
    pre_norm: bool,
    final_norm: bool,
    bias: bool,
    proj_dim: usize,
    act: Activation,
}

fn options(json: &HfJson, hidden: usize) -> crate::Result<OptOptions> {
    if json.bool(&["layer_norm_elementwise_affine"])? == Some(false) {
        return Err(json.error("LayerNorm without affine parameters is not supported"));
    }
    let pre_norm = json.bool(&["do_layer_norm_before"])?.unwrap_or(true);
    let removed = json.bool(&["_remove_final_layer_norm"])?.unwrap_or(false);
    Ok(OptOptions {
        pre_norm,
        final_norm: pre_norm && !removed,
        bias: json.bool(&["enable_bias"])?.unwrap_or(true),
        proj_dim: json.usize(&["word_embed_proj_dim"])?.unwrap_or(hidden),
        act: Activation::parse(json, &["activation_function"], Activation::Relu)?,
    })
}

impl Architecture for Opt {
    fn config(&self, json: &HfJson) -> crate::Result<ModelConfig> {
        let hidden_size = json.required(&["hidden_size"])?;
        options(json, hidden_size)?;
        let dims = ClassicDims {
            layers: json.required(&["num_hidden_layers"])?,
            hidden: hidden_size,
            heads: json.required(&["num_attention_heads"])?,
            intermediate: json.required(&["ffn_dim"])?,
            // nn.LayerNorm's default; OPT configs have no eps key.
            eps: 1e-5,
            max_positions: json.usize(&["max_position_embeddings"])?.unwrap_or(2048),
        };
        classic_config(json, Family::Opt, dims)
    }

    fn layer_prefix(&self) -> &'static str {
        "model.decoder.layers."
    }

    fn stem(&self, config: &ModelConfig, tensors: &TensorMap) -> crate::Result<Stem> {
        let o = options(&hf_json(config)?, config.hidden_size)?;
        let root = root_loader(tensors);
        let (v, h, p) = (config.vocab_size, config.hidden_size, o.proj_dim);
        let projected = p != h;
        let name = |s: &str| format!("model.decoder.{s}");
        Ok(Stem {
            tokens: (
                name("embed_tokens.weight"),
                root.weight(&name("embed_tokens.weight"), &[v, p])?,
            ),
            positions: Some((
                name("embed_positions.weight"),
                Positions {
                    weight: root.weight(
                        &name("embed_positions.weight"),
                        &[config.max_position_embeddings + POSITION_OFFSET, h],
                    )?,
                    offset: POSITION_OFFSET,
                },
            )),
            scale: None,
            project_in: projected
                .then(|| {
                    Ok::<_, crate::Error>((
                        name("project_in"),
                        root.linear(&name("project_in"), h, p, false)?,
                    ))
                })
                .transpose()?,
            embed_norm: None,
            final_norm: o
                .final_norm
                .then(|| {
                    Ok::<_, crate::Error>((
                        name("final_layer_norm"),
                        root.layer_norm(&name("final_layer_norm"), h, config.rms_norm_eps)?,
                    ))
                })
                .transpose()?,
            project_out: projected
                .then(|| {
                    Ok::<_, crate::Error>((
                        name("project_out"),
                        root.linear(&name("project_out"), p, h, false)?,
                    ))
                })
                .transpose()?,
            lm_head: (!config.tie_word_embeddings)
                .then(|| {
                    Ok::<_, crate::Error>((
                        "lm_head.weight".to_string(),
                        root.weight("lm_head.weight", &[v, p])?,
                    ))
                })
                .transpose()?,
        })
    }

    fn layer(
        &self,
        config: &ModelConfig,
        tensors: &TensorMap,
        index: usize,
    ) -> crate::Result<Box<dyn DecoderLayer>> {
        let o = options(&hf_json(config)?, config.hidden_size)?;
        let spec = ClassicSpec {
            names: &NAMES,
            layout: QkvLayout::Separate,
            conv1d: false,
            bias: o.bias,
            act: o.act,
            pre_norm: o.pre_norm,
            alibi: false,
            scale: 1.0 / (config.head_dim as f64).sqrt(),
        };
        let l = layer_loader(tensors, self.layer_prefix(), index);
        Ok(Box::new(ClassicLayer::load(spec, config, &l, index)?))
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    }

    fn adapter_targets(&self) -> &'static [&'static str] {
        &["out_proj", "fc2"]
    }
}
