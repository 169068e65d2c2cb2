//! Emulator distillation (the paper's §3.3): starting from the layer-dropped emulator, train only
//! the emulator layers so that the residual stream at the emulator's output matches what the full
//! model's middle layers produce from the same input, plus the emulator model's own language
//! modelling loss. The adapter layers, embeddings and head stay frozen — they are the parts the
//! data owner will tune and the model owner will plug back.

use crate::data::{Batch, Sequence};
use crate::emulator::package::{in_layers, Package};
use crate::model::Model;
use crate::train::{self, trainable_params, TrainJob, TrainOptions, TrainSummary};
use crate::{Error, Result};
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The distillation loss weights (also the `--kd-weight`/`--lm-weight` flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct DistillWeights {
    /// Weight of the hidden-state distillation loss.
    #[arg(long, default_value_t = 30.0)]
    pub kd_weight: f64,
    /// Weight of the emulator model's language-modelling loss.
    #[arg(long, default_value_t = 1.0)]
    pub lm_weight: f64,
    /// How the hidden-state loss is normalised: `token` (each position's squared error over
    /// its own energy, then averaged: a massive activation counts as one token) or `block`
    /// (squared error over the whole block's energy, which such an activation dominates).
    #[arg(long, value_enum, default_value_t = KdNorm::Token)]
    #[serde(default)]
    pub kd_norm: KdNorm,
    /// Weight of the output-distribution loss: KL(full model ‖ emulator) of the next-token
    /// distributions, both through the same (frozen) top adapter layers and head. What the
    /// hidden-state loss leaves in the emulator's outputs is what the data owner's adapter
    /// learns to compensate for — and carries, wrongly, into the full model.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default, skip_serializing_if = "is_zero")]
    pub logit_weight: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The normalisation of the hidden-state distillation loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum KdNorm {
    /// `mean_p ‖t_p − s_p‖² / ‖t_p‖²`.
    Token,
    /// `Σ (t − s)² / Σ t²` (how packages distilled before the per-token loss were made).
    #[default]
    Block,
}

/// What a distilled package records about its distillation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillRecord {
    /// The corpus it was distilled on (as given).
    pub corpus: String,
    /// Loss weights.
    pub weights: DistillWeights,
    /// Trainer options.
    pub training: TrainOptions,
    /// How training went.
    pub metrics: TrainSummary,
    /// The distillation this one continued (`--distill-from`), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<DistillRecord>>,
    /// Fingerprint of the returned adapter that sat in the adapter layers of both sides
    /// (FedBiOT-style rounds: the emulator learns to stand in for the middle *under that
    /// adapter*), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
}

/// `mean((teacher − student)²) / mean(teacher²)` over the positions where `mask` (`[batch,
/// seq]`, 1/0) is set: the squared error relative to the teacher's energy, so the loss does not
/// depend on the scale of the residual stream.
pub fn kd_loss(teacher: &Tensor, student: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.unsqueeze(D::Minus1)?.to_dtype(teacher.dtype())?;
    let err = (teacher - student)?
        .sqr()?
        .broadcast_mul(&mask)?
        .sum_all()?;
    // The teacher is outside the graph: its energy is a constant of the step.
    let energy = teacher.sqr()?.broadcast_mul(&mask)?.sum_all()?.detach();
    err.broadcast_div(&energy)
}

/// `mean_p ‖t_p − s_p‖² / ‖t_p‖²` over the positions `p` where `mask` is set: every token
/// weighs the same, whatever its norm.
pub fn kd_loss_per_token(
    teacher: &Tensor,
    student: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<Tensor> {
    let err = (teacher - student)?.sqr()?.sum(D::Minus1)?;
    // The teacher's energies are constants of the step; the floor keeps a zero vector finite.
    let energy = (teacher.sqr()?.sum(D::Minus1)?.detach() + 1e-12)?;
    let mask = mask.to_dtype(teacher.dtype())?;
    let count = mask.sum_all()?.detach();
    (err / energy)?.mul(&mask)?.sum_all()?.broadcast_div(&count)
}

/// `mean_p KL(softmax(t_p) ‖ softmax(s_p))` over the positions where `mask` (`[batch, seq]`)
/// is set, for teacher and student logits `[batch, seq, vocab]`; the teacher is a constant.
pub fn logit_kl(teacher: &Tensor, student: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let log_t = crate::model::log_softmax(&teacher.detach())?;
    let log_s = crate::model::log_softmax(student)?;
    let kl = (log_t.exp()? * (log_t - log_s)?)?.sum(D::Minus1)?;
    let mask = mask.to_dtype(kl.dtype())?;
    let count = mask.sum_all()?.detach();
    kl.mul(&mask)?.sum_all()?.broadcast_div(&count)
}

/// The student and teacher sides of a distillation step.
struct Pair<'a> {
    student: &'a Model,
    teacher: &'a Model,
    /// Positions in the student's layer list: adapter bottom, emulator, adapter top.
    bottom: usize,
    emulator: usize,
    /// Positions of the full model's middle layers in its layer list.
    middle: std::ops::Range<usize>,
    weights: &'a DistillWeights,
}

impl Pair<'_> {
    /// `kd_weight · KD + lm_weight · LM` on `batch`.
    fn loss(&self, batch: &Batch, seed: Option<u64>) -> candle_core::Result<Tensor> {
        let (_, t) = batch.inputs.dims2()?;
        let mut ctx = self.student.layer_context(0, t)?;
        ctx.dropout_seed = seed;
        // Embeddings and the bottom adapter layers are frozen and shared by both sides: run
        // them once, outside the graph.
        let h = self.student.embed(&batch.inputs)?;
        let h = self
            .student
            .forward_layers(h, &ctx, 0..self.bottom)?
            .detach();
        let teacher_ctx = self.teacher.layer_context(0, t)?;
        let teacher = self
            .teacher
            .forward_layers(h.clone(), &teacher_ctx, self.middle.clone())?
            .detach();
        let emulator = self.bottom..self.bottom + self.emulator;
        let student = self.student.forward_layers(h, &ctx, emulator.clone())?;
        let mask = position_mask(batch)?;
        let kd = match self.weights.kd_norm {
            KdNorm::Token => kd_loss_per_token(&teacher, &student, &mask)?,
            KdNorm::Block => kd_loss(&teacher, &student, &mask)?,
        };
        let mut loss = (kd * self.weights.kd_weight)?;
        let (lm_w, logit_w) = (self.weights.lm_weight, self.weights.logit_weight);
        if lm_w == 0.0 && logit_w == 0.0 {
            // Without the LM and output terms the top layers and the head (the widest product
            // of the step) have nothing to contribute.
            return Ok(loss);
        }
        let rest = emulator.end..self.student.layers().len();
        let top = self.student.forward_layers(student, &ctx, rest)?;
        let hidden = self.student.final_norm(&top)?;
        if lm_w != 0.0 {
            let lm = crate::train::loss::head_loss(self.student, &hidden, batch)?;
            loss = (loss + (lm * lm_w)?)?;
        }
        if logit_w != 0.0 {
            let rest = self.middle.end..self.teacher.layers().len();
            let t_top = self.teacher.forward_layers(teacher, &teacher_ctx, rest)?;
            let t_logits = self.teacher.head(&t_top)?.detach();
            let s_logits = self.student.logits(&hidden)?;
            loss = (loss + (logit_kl(&t_logits, &s_logits, &mask)? * logit_w)?)?;
        }
        Ok(loss)
    }
}

/// 1 for the non-padding positions of each row of `batch` (`[batch, seq]`).
pub(crate) fn position_mask(batch: &Batch) -> candle_core::Result<Tensor> {
    let (b, t) = batch.inputs.dims2()?;
    // A row's real tokens are those up to its last counted target; packed corpora count every
    // position, so this is the row's length without the padding.
    let w = batch.weights.to_vec2::<f32>()?;
    let mut m = vec![0f32; b * t];
    for (r, row) in w.iter().enumerate() {
        if let Some(last) = row.iter().rposition(|&x| x > 0.0) {
            m[r * t..r * t + last + 1].fill(1.0);
        }
    }
    Tensor::from_vec(m, (b, t), batch.inputs.device())
}

/// Distils the emulator layers of `package` (plain layer drop, built from `full`) on `train`
/// (validating on `val`), with checkpoints and a metrics log beside `output`. With `adapter`,
/// that adapter's layers replace the adapter layers of both sides (`full` is then the plugged
/// model). Returns the trained emulator-layer weights by name and the run's summary.
#[allow(clippy::too_many_arguments)]
pub fn distill(
    full: &Model,
    package: &Package,
    adapter: Option<&crate::emulator::Adapter>,
    train_data: &[Sequence],
    val: Option<&[Sequence]>,
    options: &TrainOptions,
    weights: &DistillWeights,
    pad: u32,
    output: &Path,
) -> Result<(BTreeMap<String, Tensor>, TrainSummary)> {
    distill_until(
        full, package, adapter, train_data, val, options, weights, pad, output, None,
    )
}

/// [`distill`], stopped as if killed after optimizer step `stop_at` (for crash tests).
#[allow(clippy::too_many_arguments)]
pub(crate) fn distill_until(
    full: &Model,
    package: &Package,
    adapter: Option<&crate::emulator::Adapter>,
    train_data: &[Sequence],
    val: Option<&[Sequence]>,
    options: &TrainOptions,
    weights: &DistillWeights,
    pad: u32,
    output: &Path,
    stop_at: Option<usize>,
) -> Result<(BTreeMap<String, Tensor>, TrainSummary)> {
    let split = &package.meta.split;
    if full.layer_ids() != (0..split.num_layers).collect::<Vec<_>>() {
        return Err(Error::Invalid(
            "distillation needs the full model with all its layers as the teacher".into(),
        ));
    }
    if split.emulator.is_empty() {
        return Err(Error::Invalid(
            "the emulator keeps no layers: nothing to distil".into(),
        ));
    }
    if split.shares() {
        // A shared layer runs at several depths; the trainer would see one copy per use.
        return Err(Error::Invalid(
            "distilling an emulator with shared layers (--strategy share) is not supported yet"
                .into(),
        ));
    }
    // The student's frozen layers are written into the distilled package: bf16 storage would
    // round them.
    let options = &options.f32_only("distillation")?;
    let mut student = package.model()?;
    if let Some(a) = adapter {
        a.check_package(package)?;
        a.apply(&mut student)?;
    }
    let emulator = split.emulator.clone();
    let params = trainable_params(&mut student, |name| in_layers(name, &emulator))?;
    let pair = Pair {
        student: &student,
        teacher: full,
        bottom: split.bottom.len(),
        emulator: split.emulator.len(),
        middle: split.bottom.len()..split.num_layers - split.top.len(),
        weights,
    };
    let total = student.num_parameters();
    let mut job = TrainJob::beside(
        output, "distill", params, train_data, val, pad, options, total,
    );
    job.device = student.device().clone();
    job.stop_at = stop_at;
    job.loss_is_nll = false;
    let checkpoint_dir = job.checkpoint_dir.clone();
    let outcome = train::train(job, &|batch, seed| pair.loss(batch, seed))?;
    if train::collective::world().is_root() {
        let _ = std::fs::remove_dir_all(&checkpoint_dir);
    }
    Ok((outcome.params, outcome.summary))
}

#[cfg(test)]
mod tests;
