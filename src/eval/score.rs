//! Per-token log-probabilities and mean next-token cross-entropy of a token sequence.

use crate::model::{log_softmax, Model};
use candle_core::{DType, Result, Tensor};
use serde::Serialize;

/// The score of one sequence.
#[derive(Clone, Debug, Serialize)]
pub struct TokenScores {
    /// The scored ids.
    pub ids: Vec<u32>,
    /// `logprobs[i]` = log p(ids[i+1] | ids[..=i]): one fewer than `ids`.
    pub logprobs: Vec<f64>,
    /// Mean of `-logprobs` (nats per token).
    pub mean_ce: f64,
}

/// Scores `ids` (at least two tokens) with `model`.
pub fn score_ids(model: &Model, ids: &[u32]) -> Result<TokenScores> {
    if ids.len() < 2 {
        candle_core::bail!("need at least two tokens to score, got {}", ids.len());
    }
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    let logits = model.forward(&input)?.squeeze(0)?;
    let n = ids.len() - 1;
    let logp = log_softmax(&logits.narrow(0, 0, n)?.to_dtype(DType::F64)?)?;
    let targets = Tensor::new(&ids[1..], model.device())?.unsqueeze(1)?;
    let logprobs = logp.gather(&targets, 1)?.squeeze(1)?.to_vec1::<f64>()?;
    let mean_ce = -logprobs.iter().sum::<f64>() / n as f64;
    Ok(TokenScores {
        ids: ids.to_vec(),
        logprobs,
        mean_ce,
    })
}
