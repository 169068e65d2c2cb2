//! Measuring models: per-token scores now; perplexity, multiple choice and reports later.

pub mod score;
