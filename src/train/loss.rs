//! The language-modelling loss over a batch: cross-entropy of each counted target.

use super::optimizer::Param;
use crate::data::Batch;
use crate::model::{log_softmax, Model};
use crate::ops::lm_head_loss;
use candle_core::{Result, Tensor, Var, D};

/// An L2 pull of trained weights towards where they started, relative to their size:
/// `weight · Σ‖θ − θ₀‖² / Σ‖θ₀‖²`. Keeps a short run on other data (a model owner's alignment,
/// a later tuning round) from forgetting what the starting weights learned.
pub struct Pull {
    start: Vec<(Var, Tensor)>,
    scale: f64,
}

impl Pull {
    /// The pull of `params` towards their current values, with `weight`.
    pub fn new(params: &[Param], weight: f64) -> Result<Self> {
        let mut start = Vec::with_capacity(params.len());
        let mut energy = 0.0;
        for p in params {
            let t = p.var.as_tensor().copy()?.detach();
            energy += t
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            start.push((p.var.clone(), t));
        }
        Ok(Pull {
            start,
            scale: weight / energy.max(f64::MIN_POSITIVE),
        })
    }

    /// Whether it adds anything (a zero weight adds nothing and costs nothing).
    pub fn is_active(&self) -> bool {
        self.scale != 0.0
    }

    /// The pull's loss term, `()`-shaped, in the weights' dtype.
    pub fn loss(&self) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (var, start) in &self.start {
            let term = (var.as_tensor() - start)?.sqr()?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + term)?,
                None => term,
            });
        }
        match total {
            Some(t) => t * self.scale,
            None => candle_core::bail!("a pull needs at least one parameter"),
        }
    }
}

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
    let weights = batch.weights.flatten_all()?.to_vec1::<f32>()?;
    let head = model.head_weight();
    let mut h = hidden.reshape(((), d))?.to_dtype(head.dtype())?;
    // Only counted positions need the head: with a prompt masked out (a multiple-choice record
    // of 500 tokens scores one or two), the head's matmuls shrink by the same factor.
    let counted: Vec<u32> = (0..weights.len() as u32)
        .filter(|&i| weights[i as usize] != 0.0)
        .collect();
    if counted.len() < weights.len() {
        let idx = Tensor::new(counted.as_slice(), h.device())?;
        h = h.index_select(&idx, 0)?;
    }
    let targets: Vec<u32> = counted.iter().map(|&i| targets[i as usize]).collect();
    let weights: Vec<f64> = counted
        .iter()
        .map(|&i| weights[i as usize] as f64 / n)
        .collect();
    lm_head_loss(
        &h,
        head.dense()?,
        head.is_trainable(),
        &targets,
        &weights,
        model.head_products(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Sequence;
    use crate::model::ModelConfig;
    use crate::ops::testing::assert_close;
    use candle_core::{DType, Device, Var};

    #[test]
    fn fused_loss_on_counted_rows_matches_the_logits_path() -> Result<()> {
        let model = Model::random(&ModelConfig::tiny(), 3, DType::F32).expect("model");
        // Prompts masked out (loss from position 5 and 3), and a padded shorter row.
        let seqs = [
            Sequence {
                ids: (1..10).collect(),
                loss_from: 5,
            },
            Sequence {
                ids: (20..26).collect(),
                loss_from: 3,
            },
        ];
        let batch = Batch::new(&seqs.iter().collect::<Vec<_>>(), 0, &Device::Cpu)?;
        let hidden = Var::from_tensor(&model.hidden_seeded(&batch.inputs, None)?)?;
        let fused = head_loss(&model, hidden.as_tensor(), &batch)?;
        let logits = model.logits(hidden.as_tensor())?;
        let n = batch.num_targets as f64;
        let plain = (masked_nll_sum(&logits, &batch.targets, &batch.weights)? / n)?;
        assert_close(&fused, &plain, 1e-5)?;
        let gf = fused.backward()?;
        let gp = plain.backward()?;
        assert_close(
            gf.get(&hidden).expect("grad"),
            gp.get(&hidden).expect("grad"),
            1e-6,
        )
    }
}
