//! The decoder-layer abstraction: what the emulator, trainer and plug-in code may know about a
//! layer, whatever its family.

use super::weight::{Linear, Norm, Weight};
use candle_core::{Result, Tensor};

/// RoPE tables for one base θ over a chunk's positions.
#[derive(Clone, Debug)]
pub struct RopeTable {
    /// The base θ.
    pub theta: f64,
    /// `cos(pos · θ_i)`, `[seq, head_dim/2]`.
    pub cos: Tensor,
    /// `sin(pos · θ_i)`, `[seq, head_dim/2]`.
    pub sin: Tensor,
}

/// Per-forward context shared by all layers of a model: where the chunk sits in the sequence and
/// the position tables for it.
#[derive(Clone, Debug)]
pub struct LayerContext {
    /// Absolute position of the first token of this chunk (the KV cache's length).
    pub offset: usize,
    /// RoPE tables for every θ the model's layers use (none for families without RoPE; two for
    /// Gemma 3's local and global layers).
    pub rope: Vec<RopeTable>,
    /// Training forward passes carry the seed of their dropout masks; `None` means no dropout.
    pub dropout_seed: Option<u64>,
    /// Attention's products run in bf16 (`--precision bf16`).
    pub bf16_products: bool,
}

impl LayerContext {
    /// The `(cos, sin)` tables for base `theta`.
    pub fn rope(&self, theta: f64) -> Result<(&Tensor, &Tensor)> {
        self.rope
            .iter()
            .find(|r| r.theta == theta)
            .map(|r| (&r.cos, &r.sin))
            .ok_or_else(|| candle_core::Error::Msg(format!("no RoPE table for theta {theta}")))
    }

    /// The dropout stream of linear map `slot` of layer `layer` (`per_layer` maps per layer).
    pub fn module_seed(&self, layer: usize, slot: usize, per_layer: usize) -> Option<u64> {
        self.dropout_seed
            .map(|s| crate::ops::dropout::mix_seed(s, (layer * per_layer + slot) as u64))
    }
}

/// Keys and values of earlier positions, for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    /// `[batch, seq, kv_heads, head_dim]` keys (after RoPE).
    pub k: Option<Tensor>,
    /// `[batch, seq, kv_heads, head_dim]` values.
    pub v: Option<Tensor>,
}

/// A module of a layer that owns weights, by reference.
pub enum ModuleRef<'a> {
    /// A linear map (its weight, bias and PEFT modules).
    Linear(&'a Linear),
    /// A normalisation.
    Norm(&'a Norm),
}

/// A module of a layer that owns weights, mutably.
pub enum ModuleMut<'a> {
    /// A linear map.
    Linear(&'a mut Linear),
    /// A normalisation.
    Norm(&'a mut Norm),
}

/// A transformer decoder layer: maps the residual stream `[batch, seq, hidden]` to itself.
///
/// A family implements `forward` and lists its modules under their HF paths; weight naming,
/// PEFT injection and freezing are derived from that list.
pub trait DecoderLayer: Send + Sync + std::fmt::Debug {
    /// Runs the layer. With a cache, attends to the cached positions too and appends to it.
    fn forward(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor>;

    /// The layer's modules by HF module path relative to the layer (`self_attn.q_proj`,
    /// `input_layernorm`), in a fixed order.
    fn modules(&self) -> Vec<(&'static str, ModuleRef<'_>)>;

    /// [`DecoderLayer::modules`], mutably, same names and order.
    fn modules_mut(&mut self) -> Vec<(&'static str, ModuleMut<'_>)>;

    /// An independent copy (weights share storage until one is changed).
    fn boxed_clone(&self) -> Box<dyn DecoderLayer>;

    /// The layer's weights with their names relative to the layer, in HF naming
    /// (`self_attn.q_proj.weight`), in a fixed order; PEFT modules' weights come last, named
    /// after the map they belong to (`self_attn.q_proj.lora_A.weight`).
    fn weights(&self) -> Vec<(String, &Weight)> {
        let mut base = Vec::new();
        let mut peft = Vec::new();
        for (path, m) in self.modules() {
            let (own, extra) = match m {
                ModuleRef::Linear(l) => (l.base_weights(), l.peft_weights()),
                ModuleRef::Norm(n) => (n.weights(), Vec::new()),
            };
            base.extend(own.into_iter().map(|(s, w)| (format!("{path}.{s}"), w)));
            peft.extend(extra.into_iter().map(|(s, w)| (format!("{path}.{s}"), w)));
        }
        base.extend(peft);
        base
    }

    /// Mutable access to the same weights, same names and order.
    fn weights_mut(&mut self) -> Vec<(String, &mut Weight)> {
        let mut base = Vec::new();
        let mut peft = Vec::new();
        for (path, m) in self.modules_mut() {
            let (own, extra) = match m {
                ModuleMut::Linear(l) => l.weights_mut(),
                ModuleMut::Norm(n) => (n.weights_mut(), Vec::new()),
            };
            base.extend(own.into_iter().map(|(s, w)| (format!("{path}.{s}"), w)));
            peft.extend(extra.into_iter().map(|(s, w)| (format!("{path}.{s}"), w)));
        }
        base.extend(peft);
        base
    }

    /// The layer's linear maps by HF module path (`self_attn.q_proj`, …), for adapters that
    /// wrap them (LoRA). Callers match on the last component.
    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        self.modules_mut()
            .into_iter()
            .filter_map(|(p, m)| match m {
                ModuleMut::Linear(l) => Some((p, l)),
                ModuleMut::Norm(_) => None,
            })
            .collect()
    }
}
