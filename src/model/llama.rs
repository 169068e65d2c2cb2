//! The LLaMA decoder layer: pre-RMSNorm, rotary GQA attention, SiLU-gated MLP, no biases.

use super::config::ModelConfig;
use super::layer::{DecoderLayer, LayerCache, LayerContext};
use super::tensor_map::TensorMap;
use super::weight::{Linear, RmsNorm, Weight};
use crate::ops;
use candle_core::{Result, Tensor};

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
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

/// One LLaMA decoder layer.
#[derive(Clone, Debug)]
pub struct LlamaLayer {
    input_norm: RmsNorm,
    post_norm: RmsNorm,
    /// q, k, v, o, gate, up, down (see [`MODULES`]).
    linears: [Linear; 7],
    /// Original index, so that dropout masks differ between layers.
    index: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
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

    /// Builds layer `index` from `model.layers.{index}.*` in `tensors`; all weights frozen.
    pub fn load(config: &ModelConfig, tensors: &TensorMap, index: usize) -> crate::Result<Self> {
        let shapes = Self::weight_shapes(config);
        let mut w = WEIGHT_NAMES
            .iter()
            .zip(shapes.iter())
            .map(|(name, shape)| {
                tensors
                    .get(&format!("model.layers.{index}.{name}"), shape)
                    .map(Weight::Frozen)
            })
            .collect::<crate::Result<Vec<_>>>()?
            .into_iter();
        let mut next = || w.next().expect("nine weights");
        let eps = config.rms_norm_eps;
        let input_norm = RmsNorm {
            weight: next(),
            eps,
        };
        let (q, k, v, o) = (next(), next(), next(), next());
        let post_norm = RmsNorm {
            weight: next(),
            eps,
        };
        let (gate, up, down) = (next(), next(), next());
        Ok(LlamaLayer {
            input_norm,
            post_norm,
            linears: [q, k, v, o, gate, up, down].map(Linear::new),
            index,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
        })
    }

    /// Applies linear map `i` (see [`MODULES`]) with this forward's dropout stream.
    fn linear(&self, i: usize, x: &Tensor, ctx: &LayerContext) -> Result<Tensor> {
        let seed = ctx
            .dropout_seed
            .map(|s| crate::peft::lora::mix_seed(s, (self.index * MODULES.len() + i) as u64));
        self.linears[i].forward_seeded(x, seed)
    }

    fn attention(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self.linear(Q, x, ctx)?.reshape((b, t, nh, hd))?;
        let k = self.linear(K, x, ctx)?.reshape((b, t, nkv, hd))?;
        let v = self.linear(V, x, ctx)?.reshape((b, t, nkv, hd))?;
        let q = ops::rope(&q, &ctx.cos, &ctx.sin)?;
        let k = ops::rope(&k, &ctx.cos, &ctx.sin)?;
        // [b, heads, t, hd]
        let q = q.transpose(1, 2)?.contiguous()?;
        let mut k = k.transpose(1, 2)?.contiguous()?;
        let mut v = v.transpose(1, 2)?.contiguous()?;
        if let Some(cache) = cache {
            if let (Some(pk), Some(pv)) = (&cache.k, &cache.v) {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            cache.k = Some(k.clone());
            cache.v = Some(v.clone());
        }
        let s = k.dim(2)?;
        // Grouped-query attention without repeating K/V: the `group` query heads that share a
        // key/value head (HF's repeat_interleave order) are stacked along the sequence axis.
        let group = nh / nkv;
        let q = q.reshape((b, nkv, group * t, hd))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, nh, t, s))?;
        let probs = ops::causal_softmax(&scores, 1.0 / (hd as f64).sqrt())?;
        let out = probs
            .reshape((b, nkv, group * t, s))?
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        self.linear(O, &out, ctx)
    }

    fn mlp(&self, x: &Tensor, ctx: &LayerContext) -> Result<Tensor> {
        let gate = self.linear(GATE, x, ctx)?.silu()?;
        let up = self.linear(UP, x, ctx)?;
        self.linear(DOWN, &(gate * up)?, ctx)
    }
}

impl DecoderLayer for LlamaLayer {
    fn forward(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let h = (x + self.attention(&self.input_norm.forward(x)?, ctx, cache)?)?;
        &h + self.mlp(&self.post_norm.forward(&h)?, ctx)?
    }

    fn weights(&self) -> Vec<(String, &Weight)> {
        let [q, k, v, o, gate, up, down] = &self.linears;
        let base = [
            &self.input_norm.weight,
            &q.weight,
            &k.weight,
            &v.weight,
            &o.weight,
            &self.post_norm.weight,
            &gate.weight,
            &up.weight,
            &down.weight,
        ];
        let mut out: Vec<_> = WEIGHT_NAMES
            .into_iter()
            .map(String::from)
            .zip(base)
            .collect();
        for (module, l) in MODULES.iter().zip(&self.linears) {
            out.extend(
                l.peft_weights()
                    .into_iter()
                    .map(|(suffix, w)| (format!("{module}.{suffix}"), w)),
            );
        }
        out
    }

    fn weights_mut(&mut self) -> Vec<(String, &mut Weight)> {
        let mut base = Vec::with_capacity(7);
        let mut peft = Vec::new();
        for (module, l) in MODULES.iter().zip(self.linears.iter_mut()) {
            let (weight, extra) = l.weights_mut();
            base.push(weight);
            peft.extend(
                extra
                    .into_iter()
                    .map(|(suffix, w)| (format!("{module}.{suffix}"), w)),
            );
        }
        // WEIGHT_NAMES order: input norm, q, k, v, o, post norm, gate, up, down.
        let mut base = base.into_iter();
        let mut out = vec![(WEIGHT_NAMES[0].to_string(), &mut self.input_norm.weight)];
        out.extend(
            WEIGHT_NAMES[1..5]
                .iter()
                .map(|n| (n.to_string(), base.next().expect("q k v o"))),
        );
        out.push((WEIGHT_NAMES[5].to_string(), &mut self.post_norm.weight));
        out.extend(
            WEIGHT_NAMES[6..]
                .iter()
                .map(|n| (n.to_string(), base.next().expect("gate up down"))),
        );
        out.extend(peft);
        out
    }

    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        MODULES.into_iter().zip(self.linears.iter_mut()).collect()
    }

    fn boxed_clone(&self) -> Box<dyn DecoderLayer> {
        Box::new(self.clone())
    }
}
