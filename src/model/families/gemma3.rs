//! Gemma 3 (text): embeddings scaled by √hidden, `(1 + w)` RMSNorms, four norms per layer plus
//! q/k norms, attention scaled by `query_pre_attn_scalar^-½`, sliding-window local layers and
//! global layers with their own RoPE θ, GELU-gated MLP, tied head.

use super::llama::{common_config, rms_stem};
use super::{hf_json, layer_loader, Activation, Architecture};
use crate::model::attention::{rotary_attention, AttentionSpec};
use crate::model::config::{Family, HfJson, ModelConfig};
use crate::model::layer::{DecoderLayer, LayerCache, LayerContext, ModuleMut, ModuleRef};
use crate::model::stem::Stem;
use crate::model::tensor_map::TensorMap;
use crate::model::weight::{Linear, Norm, NormKind};
use crate::ops::SoftmaxMask;
use candle_core::{Result, Tensor};

/// The Gemma 3 family.
pub struct Gemma3;

/// Linear maps in module order.
const MODULES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];
/// Norms in module order.
const NORMS: [&str; 6] = [
    "input_layernorm",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
];

/// Settings Gemma 3 reads beyond the common fields.
struct GemmaOptions {
    /// Per layer: whether it is a sliding-window (local) layer.
    sliding: Vec<bool>,
    window: usize,
    local_theta: f64,
    global_theta: f64,
    scale: f64,
    act: Activation,
}

fn options(json: &HfJson, layers: usize, head_dim: usize) -> crate::Result<GemmaOptions> {
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if json.value(&[key]).is_some() {
            return Err(json.error(format!("`{key}` is not supported")));
        }
    }
    if json.bool(&["attention_bias"])? == Some(true) {
        return Err(json.error("Gemma 3 with attention biases is not supported"));
    }
    // `layer_types` when present; older configs give only the pattern (layer i is global iff
    // (i + 1) % pattern == 0).
    let sliding = match json.value(&["layer_types"]) {
        Some(types) => {
            let types: Vec<String> = serde_json::from_value(types.clone())
                .map_err(|e| json.error(format!("`layer_types`: {e}")))?;
            if types.len() != layers {
                return Err(json.error(format!(
                    "`layer_types` lists {} layers, the model has {layers}",
                    types.len()
                )));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(json.error(format!("unknown layer type `{other}`"))),
                })
                .collect::<crate::Result<_>>()?
        }
        None => {
            let pattern = json
                .usize(&["sliding_window_pattern", "_sliding_window_pattern"])?
                .unwrap_or(6)
                .max(1);
            (0..layers).map(|i| (i + 1) % pattern != 0).collect()
        }
    };
    Ok(GemmaOptions {
        sliding,
        window: json.usize(&["sliding_window"])?.unwrap_or(4096).max(1),
        local_theta: json
            .f64(&[
                "rope_parameters.sliding_attention.rope_theta",
                "rope_local_base_freq",
            ])?
            .unwrap_or(10_000.0),
        global_theta: json
            .f64(&["rope_parameters.full_attention.rope_theta", "rope_theta"])?
            .unwrap_or(1_000_000.0),
        scale: json
            .f64(&["query_pre_attn_scalar"])?
            .unwrap_or(head_dim as f64)
            .powf(-0.5),
        act: Activation::parse(
            json,
            &["hidden_activation", "hidden_act"],
            Activation::GeluTanh,
        )?,
    })
}

impl Architecture for Gemma3 {
    fn config(&self, json: &HfJson) -> crate::Result<ModelConfig> {
        let mut config = common_config(json, Family::Gemma3, true, 1e-6)?;
        let o = options(json, config.num_layers, config.head_dim)?;
        config.rope_theta = o.global_theta;
        config.local_rope_theta = Some(o.local_theta);
        config.hf_config = Some(json.raw.clone());
        Ok(config)
    }

    fn stem(&self, config: &ModelConfig, tensors: &TensorMap) -> crate::Result<Stem> {
        let mut stem = rms_stem(config, tensors, NormKind::RmsPlusOne)?;
        stem.scale = Some((config.hidden_size as f64).sqrt());
        Ok(stem)
    }

    fn layer(
        &self,
        config: &ModelConfig,
        tensors: &TensorMap,
        index: usize,
    ) -> crate::Result<Box<dyn DecoderLayer>> {
        let o = options(&hf_json(config)?, config.num_layers, config.head_dim)?;
        let l = layer_loader(tensors, self.layer_prefix(), index);
        let (h, i, hd, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.head_dim,
            config.rms_norm_eps,
        );
        let q = config.num_heads * hd;
        let kv = config.num_kv_heads * hd;
        let dims = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)];
        let linears = MODULES
            .iter()
            .zip(dims)
            .map(|(p, (o, i))| l.linear(p, o, i, false))
            .collect::<crate::Result<Vec<_>>>()?;
        let norms = NORMS
            .iter()
            .map(|p| {
                let dim = if p.ends_with("q_norm") || p.ends_with("k_norm") {
                    hd
                } else {
                    h
                };
                l.rms_norm(p, dim, eps, NormKind::RmsPlusOne)
            })
            .collect::<crate::Result<Vec<_>>>()?;
        let sliding = o.sliding[index];
        Ok(Box::new(Gemma3Layer {
            linears: linears.try_into().expect("seven maps"),
            norms: norms.try_into().expect("six norms"),
            index,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim: hd,
            window: sliding.then_some(o.window),
            rope_theta: if sliding {
                o.local_theta
            } else {
                o.global_theta
            },
            scale: o.scale,
            act: o.act,
        }))
    }
}

/// One Gemma 3 decoder layer.
#[derive(Clone, Debug)]
pub struct Gemma3Layer {
    /// q, k, v, o, gate, up, down.
    linears: [Linear; 7],
    /// See [`NORMS`].
    norms: [Norm; 6],
    index: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    /// Sliding window of a local layer.
    window: Option<usize>,
    rope_theta: f64,
    scale: f64,
    act: Activation,
}

impl Gemma3Layer {
    fn linear(&self, i: usize, x: &Tensor, ctx: &LayerContext) -> Result<Tensor> {
        self.linears[i].forward_seeded(x, ctx.module_seed(self.index, i, MODULES.len()))
    }

    fn attention(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let [q, k, v] = [0, 1, 2].map(|i| self.linear(i, x, ctx));
        let spec = AttentionSpec {
            scale: self.scale,
            mask: SoftmaxMask {
                window: self.window,
                alibi: None,
            },
        };
        let heads = (self.num_heads, self.num_kv_heads, self.head_dim);
        // q/k norms run per head, before RoPE.
        let norms = Some([&self.norms[1], &self.norms[2]]);
        let out = rotary_attention(
            [q?, k?, v?],
            heads,
            norms,
            self.rope_theta,
            ctx,
            cache,
            spec,
        )?;
        self.linear(3, &out, ctx)
    }

    fn mlp(&self, x: &Tensor, ctx: &LayerContext) -> Result<Tensor> {
        let gate = self.act.apply(&self.linear(4, x, ctx)?)?;
        let up = self.linear(5, x, ctx)?;
        self.linear(6, &(gate * up)?, ctx)
    }
}

impl DecoderLayer for Gemma3Layer {
    fn forward(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let [input, _, _, post_attn, pre_ff, post_ff] = &self.norms;
        let a = self.attention(&input.forward(x)?, ctx, cache)?;
        let h = (x + post_attn.forward(&a)?)?;
        let m = self.mlp(&pre_ff.forward(&h)?, ctx)?;
        &h + post_ff.forward(&m)?
    }

    fn modules(&self) -> Vec<(&'static str, ModuleRef<'_>)> {
        let mut out: Vec<_> = NORMS
            .iter()
            .zip(&self.norms)
            .map(|(p, n)| (*p, ModuleRef::Norm(n)))
            .collect();
        out.extend(
            MODULES
                .iter()
                .zip(&self.linears)
                .map(|(p, l)| (*p, ModuleRef::Linear(l))),
        );
        out
    }

    fn modules_mut(&mut self) -> Vec<(&'static str, ModuleMut<'_>)> {
        let mut out: Vec<_> = NORMS
            .iter()
            .zip(self.norms.iter_mut())
            .map(|(p, n)| (*p, ModuleMut::Norm(n)))
            .collect();
        out.extend(
            MODULES
                .iter()
                .zip(self.linears.iter_mut())
                .map(|(p, l)| (*p, ModuleMut::Linear(l))),
        );
        out
    }

    fn boxed_clone(&self) -> Box<dyn DecoderLayer> {
        Box::new(self.clone())
    }
}
