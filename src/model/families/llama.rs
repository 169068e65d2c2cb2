//! LLaMA: pre-RMSNorm, rotary GQA attention, SiLU-gated MLP, no biases. Qwen2 reuses the layer
//! with q/k/v biases switched on.

use super::{layer_loader, root_loader, untied_head, Architecture, Loader};
use crate::model::attention::{rotary_attention, AttentionSpec};
use crate::model::config::{Family, HfJson, ModelConfig};
use crate::model::layer::{DecoderLayer, LayerCache, LayerContext, ModuleMut, ModuleRef};
use crate::model::stem::Stem;
use crate::model::tensor_map::TensorMap;
use crate::model::weight::{Linear, Norm, NormKind, Weight};
use crate::ops::SoftmaxMask;
use candle_core::{DType, Result, Tensor};

/// HF names of a LLaMA layer's weights, relative to `model.layers.N.`, in a fixed order.
pub const WEIGHT_NAMES: [&str; 9] = [
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

/// The layer's linear maps (HF module paths), in the order of `LlamaLayer::linears`.
pub const MODULES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];
// The fused frozen layer takes the projections in this same order.
use crate::ops::frozen_layer::slot::{DOWN, GATE, K, O, Q, UP, V};

/// LoRA's default targets for LLaMA-style layers (also Qwen2's and Gemma 3's).
pub const LORA_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The LLaMA family.
pub struct Llama;

/// Reads the fields LLaMA-style configs share (LLaMA, Qwen2, Gemma 3); `tied` is the class
/// default of `tie_word_embeddings`, `eps` of `rms_norm_eps`.
pub fn common_config(
    json: &HfJson,
    family: Family,
    tied: bool,
    eps: f64,
) -> crate::Result<ModelConfig> {
    json.expect_plain_rope()?;
    let hidden_size = json.required(&["hidden_size"])?;
    let num_heads = json.required(&["num_attention_heads"])?;
    let head_dim = match json.usize(&["head_dim"])? {
        Some(d) => d,
        None if num_heads > 0 && hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
        None => {
            return Err(json.error(format!(
                "hidden size {hidden_size} does not split into {num_heads} heads"
            )))
        }
    };
    Ok(ModelConfig {
        family,
        num_layers: json.required(&["num_hidden_layers"])?,
        hidden_size,
        intermediate_size: json.required(&["intermediate_size"])?,
        num_heads,
        num_kv_heads: json.usize(&["num_key_value_heads"])?.unwrap_or(num_heads),
        head_dim,
        vocab_size: json.required(&["vocab_size"])?,
        // transformers 5 nests RoPE in `rope_parameters`; 4.x configs have it at the top level.
        rope_theta: json
            .f64(&["rope_parameters.rope_theta", "rope_theta"])?
            .unwrap_or(10_000.0),
        rms_norm_eps: json.f64(&["rms_norm_eps"])?.unwrap_or(eps),
        max_position_embeddings: json.usize(&["max_position_embeddings"])?.unwrap_or(2048),
        tie_word_embeddings: json.bool(&["tie_word_embeddings"])?.unwrap_or(tied),
        bos_token_id: json.token_id("bos_token_id"),
        eos_token_id: json.token_id("eos_token_id"),
        local_rope_theta: None,
        hf_config: None,
    })
}

/// The stem of LLaMA-style models: token embedding, RMSNorm `model.norm`, tied or untied head.
pub fn rms_stem(config: &ModelConfig, tensors: &TensorMap, kind: NormKind) -> crate::Result<Stem> {
    let root = root_loader(tensors);
    let (v, h) = (config.vocab_size, config.hidden_size);
    Ok(Stem {
        tokens: (
            "model.embed_tokens.weight".into(),
            root.weight("model.embed_tokens.weight", &[v, h])?,
        ),
        positions: None,
        scale: None,
        project_in: None,
        embed_norm: None,
        final_norm: Some((
            "model.norm".into(),
            root.rms_norm("model.norm", h, config.rms_norm_eps, kind)?,
        )),
        project_out: None,
        lm_head: untied_head(config, tensors)?,
    })
}

impl Architecture for Llama {
    fn config(&self, json: &HfJson) -> crate::Result<ModelConfig> {
        if json.bool(&["attention_bias"])? == Some(true) || json.bool(&["mlp_bias"])? == Some(true)
        {
            return Err(json.error("LLaMA with biases is not supported"));
        }
        json.expect_activation(&["hidden_act"], &["silu"])?;
        common_config(json, Family::Llama, false, 1e-6)
    }

    fn layer(
        &self,
        config: &ModelConfig,
        tensors: &TensorMap,
        index: usize,
    ) -> crate::Result<Box<dyn DecoderLayer>> {
        Ok(Box::new(LlamaLayer::load(config, tensors, index, false)?))
    }
}

/// One LLaMA decoder layer.
#[derive(Clone, Debug)]
pub struct LlamaLayer {
    input_norm: Norm,
    post_norm: Norm,
    /// q, k, v, o, gate, up, down (see [`MODULES`]).
    linears: [Linear; 7],
    /// Original index, so that dropout masks differ between layers.
    index: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    rope_theta: f64,
}

impl LlamaLayer {
    /// The shape each weight must have under `config`, in [`WEIGHT_NAMES`] order.
    pub fn weight_shapes(config: &ModelConfig) -> [Vec<usize>; 9] {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let q = config.num_heads * config.head_dim;
        let kv = config.num_kv_heads * config.head_dim;
        [
            vec![h],
            vec![q, h],
            vec![kv, h],
            vec![kv, h],
            vec![h, q],
            vec![h],
            vec![i, h],
            vec![i, h],
            vec![h, i],
        ]
    }

    /// Builds layer `index` from `model.layers.{index}.*` in `tensors`, with biases on q, k and
    /// v when `qkv_bias` (Qwen2); all weights frozen.
    pub fn load(
        config: &ModelConfig,
        tensors: &TensorMap,
        index: usize,
        qkv_bias: bool,
    ) -> crate::Result<Self> {
        let l: Loader = layer_loader(tensors, "model.layers.", index);
        let (h, i, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.rms_norm_eps,
        );
        let q = config.num_heads * config.head_dim;
        let kv = config.num_kv_heads * config.head_dim;
        let norm = |p: &str| l.rms_norm(p, h, eps, NormKind::Rms);
        Ok(LlamaLayer {
            input_norm: norm("input_layernorm")?,
            linears: [
                l.linear(MODULES[Q], q, h, qkv_bias)?,
                l.linear(MODULES[K], kv, h, qkv_bias)?,
                l.linear(MODULES[V], kv, h, qkv_bias)?,
                l.linear(MODULES[O], h, q, false)?,
                l.linear(MODULES[GATE], i, h, false)?,
                l.linear(MODULES[UP], i, h, false)?,
                l.linear(MODULES[DOWN], h, i, false)?,
            ],
            post_norm: norm("post_attention_layernorm")?,
            index,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            rope_theta: config.rope_theta,
        })
    }

    /// The layer as one fused op ([`crate::ops::frozen_llama_layer`]), when nothing in it is
    /// trained or adapted, every projection is packed for the bf16 kernel and `x` is f32 on the
    /// CPU: the emulator's frozen middle under `--precision frozen-bf16|bf16`.
    fn frozen_bf16(&self, x: &Tensor, ctx: &LayerContext) -> Option<crate::ops::FrozenLlamaLayer> {
        let same_eps = self.input_norm.eps == self.post_norm.eps;
        if x.dtype() != DType::F32 || !x.device().is_cpu() || x.rank() != 3 || !same_eps {
            return None;
        }
        let norm = |n: &Norm| match (&n.kind, &n.weight, &n.bias) {
            (NormKind::Rms, Weight::Frozen(w), None) => Some(w.clone()),
            _ => None,
        };
        let packed = |l: &Linear| match (&l.weight, &l.bf16) {
            (Weight::Frozen(w), Some(p))
                if p.packs(w) && l.bias.is_none() && l.lora.is_none() && l.adapter.is_none() =>
            {
                Some(p.clone())
            }
            _ => None,
        };
        let linears: Vec<_> = self.linears.iter().map(packed).collect::<Option<_>>()?;
        Some(crate::ops::FrozenLlamaLayer {
            norms: [norm(&self.input_norm)?, norm(&self.post_norm)?],
            eps: self.input_norm.eps,
            linears: linears.try_into().ok()?,
            heads: (self.num_heads, self.num_kv_heads, self.head_dim),
            bf16_attention: ctx.bf16_products,
        })
    }

    /// Applies linear map `i` (see [`MODULES`]) with this forward's dropout stream.
    fn linear(&self, i: usize, x: &Tensor, ctx: &LayerContext) -> Result<Tensor> {
        let seed = ctx.module_seed(self.index, i, MODULES.len());
        self.linears[i].forward_seeded(x, seed)
    }

    fn attention(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let [q, k, v] = [Q, K, V].map(|i| self.linear(i, x, ctx));
        let spec = AttentionSpec {
            scale: 1.0 / (self.head_dim as f64).sqrt(),
            mask: SoftmaxMask::default(),
        };
        let heads = (self.num_heads, self.num_kv_heads, self.head_dim);
        let out = rotary_attention([q?, k?, v?], heads, None, self.rope_theta, ctx, cache, spec)?;
        self.linear(O, &out, ctx)
    }

    fn mlp(&self, x: &Tensor, ctx: &LayerContext) -> Result<Tensor> {
        let gate = self.linear(GATE, x, ctx)?;
        let up = self.linear(UP, x, ctx)?;
        self.linear(DOWN, &crate::ops::silu_mul(&gate, &up)?, ctx)
    }
}

impl DecoderLayer for LlamaLayer {
    fn forward(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        if let (None, Some(fused)) = (&cache, self.frozen_bf16(x, ctx)) {
            let (cos, sin) = ctx.rope(self.rope_theta)?;
            return crate::ops::frozen_llama_layer(x, &fused, cos, sin);
        }
        let h = (x + self.attention(&self.input_norm.forward(x)?, ctx, cache)?)?;
        &h + self.mlp(&self.post_norm.forward(&h)?, ctx)?
    }

    fn modules(&self) -> Vec<(&'static str, ModuleRef<'_>)> {
        let mut out = vec![("input_layernorm", ModuleRef::Norm(&self.input_norm))];
        let (attn, mlp) = self.linears.split_at(4);
        out.extend(
            MODULES
                .iter()
                .zip(attn)
                .map(|(p, l)| (*p, ModuleRef::Linear(l))),
        );
        out.push(("post_attention_layernorm", ModuleRef::Norm(&self.post_norm)));
        out.extend(
            MODULES[4..]
                .iter()
                .zip(mlp)
                .map(|(p, l)| (*p, ModuleRef::Linear(l))),
        );
        out
    }

    fn modules_mut(&mut self) -> Vec<(&'static str, ModuleMut<'_>)> {
        let mut out = vec![("input_layernorm", ModuleMut::Norm(&mut self.input_norm))];
        let (attn, mlp) = self.linears.split_at_mut(4);
        out.extend(
            MODULES
                .iter()
                .zip(attn)
                .map(|(p, l)| (*p, ModuleMut::Linear(l))),
        );
        out.push((
            "post_attention_layernorm",
            ModuleMut::Norm(&mut self.post_norm),
        ));
        out.extend(
            MODULES[4..]
                .iter()
                .zip(mlp)
                .map(|(p, l)| (*p, ModuleMut::Linear(l))),
        );
        out
    }

    fn boxed_clone(&self) -> Box<dyn DecoderLayer> {
        Box::new(self.clone())
    }
}
