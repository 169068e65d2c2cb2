//! The LayerNorm decoder layer GPT-2, OPT and BLOOM share: LayerNorm, multi-head attention
//! without RoPE (BLOOM adds ALiBi), a two-map MLP, biases everywhere. They differ in names, in
//! how q/k/v are laid out, in the activation and (OPT) in pre- or post-LN, which
//! [`ClassicSpec`] describes.

use super::{Activation, Loader};
use crate::model::attention::{attend, AttentionSpec};
use crate::model::config::{Family, HfJson, ModelConfig};
use crate::model::layer::{DecoderLayer, LayerCache, LayerContext, ModuleMut, ModuleRef};
use crate::model::weight::{Linear, Norm};
use crate::ops::SoftmaxMask;
use candle_core::{Result, Tensor};

/// How the q, k, v projections are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvLayout {
    /// One map whose output is `[q | k | v]` (GPT-2's `c_attn`).
    FusedBlocks,
    /// One map whose output is, per head, `[q, k, v]` (BLOOM's `query_key_value`).
    FusedPerHead,
    /// Three maps q, k, v (OPT).
    Separate,
}

/// Module paths of a classic layer, relative to the layer.
#[derive(Debug)]
pub struct ClassicNames {
    /// Norm before attention (after it, post-LN).
    pub ln1: &'static str,
    /// The fused q/k/v map, or the q, k and v maps.
    pub qkv: &'static [&'static str],
    /// Attention output map.
    pub out: &'static str,
    /// Norm before the MLP.
    pub ln2: &'static str,
    /// MLP up map.
    pub up: &'static str,
    /// MLP down map.
    pub down: &'static str,
}

/// What distinguishes one classic family's layers.
#[derive(Clone, Copy, Debug)]
pub struct ClassicSpec {
    /// Module paths.
    pub names: &'static ClassicNames,
    /// q/k/v layout.
    pub layout: QkvLayout,
    /// Stored `[in, out]` (GPT-2's `Conv1D`).
    pub conv1d: bool,
    /// Biases on the maps (OPT's `enable_bias`).
    pub bias: bool,
    /// MLP activation.
    pub act: Activation,
    /// Pre-LN (norm, sublayer, residual) or post-LN (sublayer, residual, norm).
    pub pre_norm: bool,
    /// ALiBi slopes per head (BLOOM).
    pub alibi: bool,
    /// Scale of `q·k` (usually `1/√head_dim`).
    pub scale: f64,
}

/// The shapes of a classic family's config, read under the family's own key names.
#[derive(Clone, Copy, Debug)]
pub struct ClassicDims {
    /// Decoder layers.
    pub layers: usize,
    /// Residual width.
    pub hidden: usize,
    /// Attention heads (all of them key/value heads too).
    pub heads: usize,
    /// MLP width.
    pub intermediate: usize,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// Longest context.
    pub max_positions: usize,
}

/// The [`ModelConfig`] of a classic family: no grouped-query attention, no RoPE, a tied head
/// unless the file says otherwise, and the file itself kept for the family's other settings.
pub fn classic_config(json: &HfJson, family: Family, d: ClassicDims) -> crate::Result<ModelConfig> {
    if d.heads == 0 || !d.hidden.is_multiple_of(d.heads) {
        return Err(json.error(format!(
            "hidden size {} does not split into {} heads",
            d.hidden, d.heads
        )));
    }
    Ok(ModelConfig {
        family,
        num_layers: d.layers,
        hidden_size: d.hidden,
        intermediate_size: d.intermediate,
        num_heads: d.heads,
        num_kv_heads: d.heads,
        head_dim: d.hidden / d.heads.max(1),
        vocab_size: json.required(&["vocab_size"])?,
        rope_theta: 10_000.0,
        rms_norm_eps: d.eps,
        max_position_embeddings: d.max_positions,
        tie_word_embeddings: json.bool(&["tie_word_embeddings"])?.unwrap_or(true),
        bos_token_id: json.token_id("bos_token_id"),
        eos_token_id: json.token_id("eos_token_id"),
        local_rope_theta: None,
        hf_config: Some(json.raw.clone()),
    })
}

/// One GPT-2 / OPT / BLOOM decoder layer.
#[derive(Clone, Debug)]
pub struct ClassicLayer {
    spec: ClassicSpec,
    ln1: Norm,
    ln2: Norm,
    /// One fused map or three.
    qkv: Vec<Linear>,
    out: Linear,
    up: Linear,
    down: Linear,
    alibi: Option<Vec<f64>>,
    index: usize,
    num_heads: usize,
    head_dim: usize,
}

/// Linear-map slots for dropout streams: up to three q/k/v maps, out, up, down.
const SLOTS: usize = 6;

impl ClassicLayer {
    /// Builds layer `index` with `l` (which reads under the layer's prefix).
    pub fn load(
        spec: ClassicSpec,
        config: &ModelConfig,
        l: &Loader,
        index: usize,
    ) -> crate::Result<Self> {
        let (h, i, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.rms_norm_eps,
        );
        let linear = |path: &str, out_f: usize, in_f: usize| {
            if spec.conv1d {
                l.conv1d(path, in_f, out_f)
            } else {
                l.linear(path, out_f, in_f, spec.bias)
            }
        };
        let n = spec.names;
        let qkv = match spec.layout {
            QkvLayout::Separate => n
                .qkv
                .iter()
                .map(|p| linear(p, h, h))
                .collect::<crate::Result<_>>()?,
            _ => vec![linear(n.qkv[0], 3 * h, h)?],
        };
        Ok(ClassicLayer {
            spec,
            ln1: l.layer_norm(n.ln1, h, eps)?,
            qkv,
            out: linear(n.out, h, h)?,
            ln2: l.layer_norm(n.ln2, h, eps)?,
            up: linear(n.up, i, h)?,
            down: linear(n.down, h, i)?,
            alibi: spec.alibi.then(|| alibi_slopes(config.num_heads)),
            index,
            num_heads: config.num_heads,
            head_dim: config.head_dim,
        })
    }

    fn seed(&self, ctx: &LayerContext, slot: usize) -> Option<u64> {
        ctx.module_seed(self.index, slot, SLOTS)
    }

    fn attention(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let (nh, hd) = (self.num_heads, self.head_dim);
        let heads = |y: Tensor| y.contiguous()?.reshape((b, t, nh, hd));
        let (q, k, v) = match self.spec.layout {
            QkvLayout::Separate => {
                let mut it = self
                    .qkv
                    .iter()
                    .enumerate()
                    .map(|(j, m)| m.forward_seeded(x, self.seed(ctx, j)).and_then(heads));
                let mut next = || it.next().expect("three maps");
                (next()?, next()?, next()?)
            }
            QkvLayout::FusedBlocks => {
                let y = self.qkv[0].forward_seeded(x, self.seed(ctx, 0))?;
                (
                    heads(y.narrow(2, 0, h)?)?,
                    heads(y.narrow(2, h, h)?)?,
                    heads(y.narrow(2, 2 * h, h)?)?,
                )
            }
            QkvLayout::FusedPerHead => {
                let y = self.qkv[0]
                    .forward_seeded(x, self.seed(ctx, 0))?
                    .reshape((b, t, nh, 3, hd))?;
                let part = |j: usize| y.narrow(3, j, 1)?.squeeze(3)?.contiguous();
                (part(0)?, part(1)?, part(2)?)
            }
        };
        let spec = AttentionSpec {
            scale: self.spec.scale,
            mask: SoftmaxMask {
                window: None,
                alibi: self.alibi.as_deref(),
            },
        };
        let out = attend(&q, &k, &v, cache, spec, ctx.bf16_products)?;
        self.out.forward_seeded(&out, self.seed(ctx, 3))
    }

    fn mlp(&self, x: &Tensor, ctx: &LayerContext) -> Result<Tensor> {
        let y = self.up.forward_seeded(x, self.seed(ctx, 4))?;
        self.down
            .forward_seeded(&self.spec.act.apply(&y)?, self.seed(ctx, 5))
    }
}

/// BLOOM's ALiBi slopes (`_get_alibi_slopes`): a geometric sequence for the largest power of
/// two of heads, the odd powers of a finer one for the rest.
pub fn alibi_slopes(heads: usize) -> Vec<f64> {
    let closest = 1usize << (usize::BITS - 1 - heads.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((closest as f64).log2() - 3.0))));
    let mut slopes: Vec<f64> = (1..=closest).map(|p| base.powi(p as i32)).collect();
    if closest != heads {
        let extra = 2f64.powf(-(2f64.powf(-((2.0 * closest as f64).log2() - 3.0))));
        let remaining = closest.min(heads - closest);
        slopes.extend((0..remaining).map(|i| extra.powi(1 + 2 * i as i32)));
    }
    // HF builds the slopes in float32.
    slopes.into_iter().map(|s| s as f32 as f64).collect()
}

impl DecoderLayer for ClassicLayer {
    fn forward(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        if self.spec.pre_norm {
            let h = (x + self.attention(&self.ln1.forward(x)?, ctx, cache)?)?;
            &h + self.mlp(&self.ln2.forward(&h)?, ctx)?
        } else {
            let h = self.ln1.forward(&(x + self.attention(x, ctx, cache)?)?)?;
            self.ln2.forward(&(&h + self.mlp(&h, ctx)?)?)
        }
    }

    fn modules(&self) -> Vec<(&'static str, ModuleRef<'_>)> {
        let n = self.spec.names;
        let mut out = vec![(n.ln1, ModuleRef::Norm(&self.ln1))];
        out.extend(
            n.qkv
                .iter()
                .zip(&self.qkv)
                .map(|(p, l)| (*p, ModuleRef::Linear(l))),
        );
        out.extend([
            (n.out, ModuleRef::Linear(&self.out)),
            (n.ln2, ModuleRef::Norm(&self.ln2)),
            (n.up, ModuleRef::Linear(&self.up)),
            (n.down, ModuleRef::Linear(&self.down)),
        ]);
        out
    }

    fn modules_mut(&mut self) -> Vec<(&'static str, ModuleMut<'_>)> {
        let n = self.spec.names;
        let mut out = vec![(n.ln1, ModuleMut::Norm(&mut self.ln1))];
        out.extend(
            n.qkv
                .iter()
                .zip(self.qkv.iter_mut())
                .map(|(p, l)| (*p, ModuleMut::Linear(l))),
        );
        out.extend([
            (n.out, ModuleMut::Linear(&mut self.out)),
            (n.ln2, ModuleMut::Norm(&mut self.ln2)),
            (n.up, ModuleMut::Linear(&mut self.up)),
            (n.down, ModuleMut::Linear(&mut self.down)),
        ]);
        out
    }

    fn boxed_clone(&self) -> Box<dyn DecoderLayer> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::alibi_slopes;

    #[test]
    fn alibi_slopes_follow_bloom() {
        assert_eq!(alibi_slopes(4), [0.25, 0.0625, 0.015625, 0.00390625]);
        // 6 heads: 4 from base 2^-2, then 2 odd powers of 2^-1 (HF's formula).
        let s = alibi_slopes(6);
        assert_eq!(s.len(), 6);
        assert_eq!(s[4..], [0.5, 0.125]);
    }
}
