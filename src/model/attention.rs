//! The attention core every family shares: KV cache, grouped-query attention, masked softmax.
//! Families project q/k/v their own way (fused or not, biased or not, RoPE or not) and call
//! [`attend`].

use super::layer::{LayerCache, LayerContext};
use super::weight::Norm;
use crate::ops;
use candle_core::{Result, Tensor};

/// How scores are scaled and masked besides the causal mask.
#[derive(Clone, Copy, Debug)]
pub struct AttentionSpec<'a> {
    /// Multiplies `q·k` (usually `1/√head_dim`).
    pub scale: f64,
    /// Sliding window and ALiBi slopes, if any.
    pub mask: ops::SoftmaxMask<'a>,
}

/// Attention of `q` (`[b, t, heads, hd]`) over `k`, `v` (`[b, t, kv_heads, hd]`, after any
/// RoPE), continuing and extending `cache`; returns `[b, t, heads·hd]`. With `bf16`, the
/// products run on the bf16 kernel ([`ops::attention_with`]).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: Option<&mut LayerCache>,
    spec: AttentionSpec,
    bf16: bool,
) -> Result<Tensor> {
    let (mut k, mut v) = (k.clone(), v.clone());
    if let Some(cache) = cache {
        if let (Some(pk), Some(pv)) = (&cache.k, &cache.v) {
            k = Tensor::cat(&[pk, &k], 1)?;
            v = Tensor::cat(&[pv, &v], 1)?;
        }
        cache.k = Some(k.clone());
        cache.v = Some(v.clone());
    }
    ops::attention_with(q, &k, &v, spec.scale, spec.mask, bf16)
}

/// Attention with RoPE (θ `theta`, HF's rotate-half layout) over projected `q`, `k`, `v`
/// (`[b, t, heads·hd]`, `[b, t, kv_heads·hd]` twice); `qk_norms` (Gemma) normalise q and k per
/// head before RoPE. Returns `[b, t, heads·hd]`.
#[allow(clippy::too_many_arguments)]
pub fn rotary_attention(
    [q, k, v]: [Tensor; 3],
    (heads, kv_heads, hd): (usize, usize, usize),
    qk_norms: Option<[&Norm; 2]>,
    theta: f64,
    ctx: &LayerContext,
    cache: Option<&mut LayerCache>,
    spec: AttentionSpec,
) -> Result<Tensor> {
    let (b, t, _) = q.dims3()?;
    let mut q = q.reshape((b, t, heads, hd))?;
    let mut k = k.reshape((b, t, kv_heads, hd))?;
    let v = v.reshape((b, t, kv_heads, hd))?;
    if let Some([qn, kn]) = qk_norms {
        q = qn.forward(&q)?;
        k = kn.forward(&k)?;
    }
    let (cos, sin) = ctx.rope(theta)?;
    let q = ops::rope(&q, cos, sin)?;
    let k = ops::rope(&k, cos, sin)?;
    attend(&q, &k, &v, cache, spec, ctx.bf16_products)
}
