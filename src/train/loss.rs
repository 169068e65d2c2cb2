//! The language-modelling loss over a batch: cross-entropy of each counted target.

use crate::data::Batch;
use crate::model::{log_softmax, Model};
use crate::ops::lm_head_loss;
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

/// Mean cross-entropy of `model` on the counted targets of `batch`; `dropout_seed` (training)
/// draws the dropout masks. See [`head_loss`].
pub fn lm_loss(model: &Model, batch: &Batch, dropout_seed: Option<u64>) -> Result<Tensor> {
    let h = model.hidden_seeded(&batch.inputs, dropout_seed)?;
    head_loss(model, &h, batch)
}

/// Mean cross-entropy of the counted targets of `batch` from `hidden`, the final norm's output
/// `[batch, seq, hidden]`. On the CPU the LM head and the cross-entropy run fused (no
/// `[tokens × vocab]` logits); elsewhere as plain candle ops.
pub fn head_loss(model: &Model, hidden: &Tensor, batch: &Batch) -> Result<Tensor> {
    let n = batch.num_targets.max(1) as f64;
    if !model.device().is_cpu() {
        // The fused op is CPU code; elsewhere the logits are materialised.
        let logits = model.logits(hidden)?;
        return masked_nll_sum(&logits, &batch.targets, &batch.weights)? / n;
    }
    let d = hidden.dim(D::Minus1)?;
    let targets = batch.targets.flatten_all()?.to_vec1::<u32>()?;
    let weights: Vec<f64> = batch
        .weights
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|w| w as f64 / n)
        .collect();
    let head = model.head_weight();
    let h = hidden.reshape(((), d))?.to_dtype(head.tensor().dtype())?;
    lm_head_loss(&h, head.tensor(), head.is_trainable(), &targets, &weights)
}
