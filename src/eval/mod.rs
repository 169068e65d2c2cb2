//! Measuring models (or the proxy, see [`Scorer`]): per-token scores, multiple choice and
//! perplexity (token-level and lm-eval's document-level measures).

pub mod answer;
pub mod fidelity;
pub mod multiple_choice;
pub mod perplexity;
pub mod score;
pub mod scorer;
pub mod target;

pub use perplexity::{perplexity, PerplexityReport};
pub use scorer::Scorer;
