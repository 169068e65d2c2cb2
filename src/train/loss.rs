//! The language-modelling loss over a batch: cross-entropy of each counted target.

use crate::data::Batch;
use crate::model::{log_softmax, Model};
use candle_core::{Result, Tensor, D};

/// Sum over counted positions of `-log p(target)`, from logits `[batch, len, vocab]`.
pub fn masked_nll_sum(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let logp = log_softmax(&logits.reshape(((), v))?)?;
    let picked = logp
        .gather(&targets.flatten_all()?.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    (picked * weights.flatten_all()?)?.sum_all()?.neg()
}

/// Mean cross-entropy of `model` on the counted targets of `batch`.
pub fn lm_loss(model: &Model, batch: &Batch) -> Result<Tensor> {
    let logits = model.forward(&batch.inputs)?;
    masked_nll_sum(&logits, &batch.targets, &batch.weights)? / batch.num_targets.max(1) as f64
}
