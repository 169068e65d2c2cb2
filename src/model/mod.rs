//! The network: configuration, weights (trainable or frozen), the decoder-layer abstraction, one
//! file per family, and the model that strings embeddings, layers and head together.

pub mod attention;
pub mod config;
pub mod families;
pub mod generate;
pub mod layer;
pub mod map_update;
#[allow(clippy::module_inception)]
pub mod model;
pub mod quantize;
pub mod stem;
pub mod tensor_map;
pub mod weight;

pub use config::{Family, ModelConfig};
pub use families::{architecture, llama};
pub use layer::{DecoderLayer, LayerCache, LayerContext, ModuleMut, ModuleRef};
pub use map_update::{Bottleneck, Lora, BOTTLENECK_WEIGHT_SUFFIXES};
pub use model::{cross_entropy, log_softmax, Model, ModelCache};
pub use quantize::QuantType;
pub use stem::Stem;
pub use tensor_map::{QuantizeReport, TensorMap};
pub use weight::{Linear, Norm, NormKind, Precision, Weight};
#[cfg(test)]
mod tests;
