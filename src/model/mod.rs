//! The network: configuration, weights (trainable or frozen), the decoder-layer abstraction, one
//! file per family, and the model that strings embeddings, layers and head together.

pub mod config;
pub mod generate;
pub mod layer;
pub mod llama;
#[allow(clippy::module_inception)]
pub mod model;
pub mod tensor_map;
pub mod weight;

pub use config::{Family, ModelConfig};
pub use layer::{DecoderLayer, LayerCache, LayerContext};
pub use model::{cross_entropy, log_softmax, Model, ModelCache};
pub use tensor_map::TensorMap;
pub use weight::{Linear, RmsNorm, Weight};
#[cfg(test)]
mod tests;
