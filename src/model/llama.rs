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

/// One LLaMA decoder layer.
#[derive(Clone, Debug)]
pub struct LlamaLayer {
    input_norm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_norm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
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
        Ok(LlamaLayer {
            input_norm: RmsNorm {
                weight: next(),
                eps,
            },
            q_proj: Linear::new(next()),
            k_proj: Linear::new(next()),
            v_proj: Linear::new(next()),
            o_proj: Linear::new(next()),
            post_norm: RmsNorm {
                weight: next(),
                eps,
            },
            gate_proj: Linear::new(next()),
            up_proj: Linear::new(next()),
            down_proj: Linear::new(next()),
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
        })
    }

    fn attention(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self.q_proj.forward(x)?.reshape((b, t, nh, hd))?;
        let k = self.k_proj.forward(x)?.reshape((b, t, nkv, hd))?;
        let v = self.v_proj.forward(x)?.reshape((b, t, nkv, hd))?;
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
        self.o_proj.forward(&out)
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?.silu()?;
        let up = self.up_proj.forward(x)?;
        self.down_proj.forward(&(gate * up)?)
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
        &h + self.mlp(&self.post_norm.forward(&h)?)?
    }

    fn weights(&self) -> Vec<(&'static str, &Weight)> {
        let w = [
            &self.input_norm.weight,
            &self.q_proj.weight,
            &self.k_proj.weight,
            &self.v_proj.weight,
            &self.o_proj.weight,
            &self.post_norm.weight,
            &self.gate_proj.weight,
            &self.up_proj.weight,
            &self.down_proj.weight,
        ];
        WEIGHT_NAMES.into_iter().zip(w).collect()
    }

    fn weights_mut(&mut self) -> Vec<(&'static str, &mut Weight)> {
        let w = [
            &mut self.input_norm.weight,
            &mut self.q_proj.weight,
            &mut self.k_proj.weight,
            &mut self.v_proj.weight,
            &mut self.o_proj.weight,
            &mut self.post_norm.weight,
            &mut self.gate_proj.weight,
            &mut self.up_proj.weight,
            &mut self.down_proj.weight,
        ];
        WEIGHT_NAMES.into_iter().zip(w).collect()
    }

    fn boxed_clone(&self) -> Box<dyn DecoderLayer> {
        Box::new(self.clone())
    }
}
