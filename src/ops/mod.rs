//! Custom ops with their own backward pass, for the places where candle's stock ops either have
//! no backward (fused softmax, RMSNorm, RoPE) or compute gradients nobody needs (matmul with a
//! frozen weight, constants entering the graph). Each op has a finite-difference gradient test
//! and an equality test against the plain candle composition.

pub mod attention;
pub(crate) mod cpu;
pub mod dropout;
pub mod exp;
pub mod frozen_affine;
pub mod frozen_layer;
pub mod frozen_linear;
pub mod frozen_linear_bf16;
pub mod frozen_linear_quantized;
pub mod gemm_bf16;
pub mod linear_bf16;
pub mod lm_head_loss;
pub mod lora_linear;
mod low_rank;
pub mod rms_norm;
pub mod rope;
pub mod silu_mul;
pub mod softmax;
#[cfg(test)]
pub(crate) mod testing;

pub use attention::{attention, attention_with};
pub use frozen_affine::frozen_affine;
pub use frozen_layer::{frozen_llama_layer, frozen_llama_layer_reference, FrozenLlamaLayer};
pub use frozen_linear::frozen_linear;
pub use frozen_linear_bf16::{frozen_linear_bf16, Bf16Weight};
pub use frozen_linear_quantized::frozen_linear_quantized;
pub use linear_bf16::linear_bf16;
pub use lm_head_loss::{lm_head_loss, lm_head_nll, HeadProducts};
pub use lora_linear::lora_linear_bf16;
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use silu_mul::silu_mul;
pub use softmax::{causal_softmax, causal_softmax_with, SoftmaxMask};
