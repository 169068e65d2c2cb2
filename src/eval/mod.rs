//! Measuring models: per-token scores and perplexity (token-level and lm-eval's
//! document-level measures).

pub mod fidelity;
pub mod multiple_choice;
pub mod perplexity;
pub mod score;
pub mod target;

pub use perplexity::{perplexity, PerplexityReport};
