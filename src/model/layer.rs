//! The decoder-layer abstraction: what the emulator, trainer and plug-in code may know about a
//! layer, whatever its family.

use super::weight::Weight;
use candle_core::{Result, Tensor};

/// Per-forward context shared by all layers of a model: where the chunk sits in the sequence and
/// the position tables for it.
#[derive(Clone, Debug)]
pub struct LayerContext {
    /// Absolute position of the first token of this chunk (the KV cache's length).
    pub offset: usize,
    /// RoPE cos table for the chunk's positions, `[seq, head_dim/2]`.
    pub cos: Tensor,
    /// RoPE sin table for the chunk's positions, `[seq, head_dim/2]`.
    pub sin: Tensor,
    /// Training forward passes carry the seed of their dropout masks; `None` means no dropout.
    pub dropout_seed: Option<u64>,
}

/// Keys and values of earlier positions, for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    /// `[batch, kv_heads, seq, head_dim]` keys (after RoPE).
    pub k: Option<Tensor>,
    /// `[batch, kv_heads, seq, head_dim]` values.
    pub v: Option<Tensor>,
}

/// A transformer decoder layer: maps the residual stream `[batch, seq, hidden]` to itself.
pub trait DecoderLayer: Send + Sync + std::fmt::Debug {
    /// Runs the layer. With a cache, attends to the cached positions too and appends to it.
    fn forward(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor>;

    /// The layer's weights with their names relative to the layer, in HF naming
    /// (`self_attn.q_proj.weight`), in a fixed order; PEFT modules' weights come last, named
    /// after the map they belong to (`self_attn.q_proj.lora_A.weight`).
    fn weights(&self) -> Vec<(String, &Weight)>;

    /// Mutable access to the same weights, same names and order.
    fn weights_mut(&mut self) -> Vec<(String, &mut Weight)>;

    /// The layer's linear maps by HF module path (`self_attn.q_proj`, …), for adapters that
    /// wrap them (LoRA). Families name their own maps; callers match on the last component.
    fn linears_mut(&mut self) -> Vec<(&'static str, &mut super::weight::Linear)>;

    /// An independent copy (weights share storage until one is changed).
    fn boxed_clone(&self) -> Box<dyn DecoderLayer>;
}
