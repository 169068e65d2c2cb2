//! Plug-in alignment, the model owner's last step: after plugging the returned adapter A' into
//! the full model M, a short distillation on *public* text (never the data owner's records)
//! trains a small, named part of the plugged adapter so that the plugged model's next-token
//! distribution matches a target the model owner can compute alone:
//!
//! - `proxy`: the logit arithmetic `log p_M + α·(log p_{A',E*} − log p_{A,E*})`
//!   ([`super::proxy`]): the full model moved by what tuning changed on the emulator;
//! - `emulator`: `[A', E*]` itself, the distribution the data owner tuned.
//!
//! at every position of the public text, or only at the last position of each sequence (the
//! answer position of text wrapped in the task's prompt template, which the data owner may
//! share). The aligned adapter keeps A's fingerprint chain and records how it was aligned.

use super::adapter::Adapter;
use super::package::{layer_index, Package};
use super::plug;
use super::proxy::Proxy;
use crate::data::{pack_blocks, Batch, Sequence};
use crate::io::checkpoint::Checkpoint;
use crate::io::tokenizer::Tokenizer;
use crate::model::{log_softmax, Model};
use crate::peft::{add_lora, is_lora_weight, merge_lora, LoraConfig};
use crate::train::loss::Pull;
use crate::train::{self, trainable_params, TrainJob, TrainOptions, TrainSummary};
use crate::{Error, Result};
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The distribution the plugged model is trained to match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AlignTarget {
    /// The proxy's logit arithmetic (needs the full model, the package and both adapters).
    Proxy,
    /// The emulator with the returned adapter, `[A', E*]`.
    Emulator,
}

/// Where the loss is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AlignPositions {
    /// Every position of every sequence.
    All,
    /// The last position of each sequence: the answer position of templated text.
    Last,
}

/// Which part of the plugged adapter trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AlignParams {
    /// The adapter layers' 1-D weights (norm gains, biases).
    Norms,
    /// Every weight of the top adapter layers.
    Top,
    /// Every adapter weight.
    All,
    /// A fresh LoRA (rank `--align-lora-r`) on the top adapter layers' linear maps, merged into
    /// their weights when the alignment ends (the aligned adapter stays a full adapter).
    LoraTop,
    /// `lora-top` and the adapter layers' norm gains together.
    LoraTopNorms,
    /// A fresh LoRA on every adapter layer's linear maps, bottom and top, merged likewise: one
    /// part for tasks whose plug-in error sits in the bottom layers (hypernym) and those whose
    /// decision sits at the top (spam).
    LoraAll,
}

impl AlignParams {
    /// Whether the adapter weight `name` (of rank `rank`, in original layer `layer`) trains
    /// directly (a LoRA alignment trains its own low-rank weights instead: none).
    fn picks(self, top: &[usize], layer: usize, rank: usize) -> bool {
        match self {
            AlignParams::Norms => rank == 1,
            AlignParams::Top => top.contains(&layer),
            AlignParams::All => true,
            AlignParams::LoraTop => false,
            AlignParams::LoraTopNorms => rank == 1,
            AlignParams::LoraAll => false,
        }
    }

    /// Whether a fresh LoRA is part of what trains.
    fn has_lora(self) -> bool {
        matches!(
            self,
            AlignParams::LoraTop | AlignParams::LoraTopNorms | AlignParams::LoraAll
        )
    }

    /// The adapter layers the fresh LoRA adapts (none without one).
    fn lora_layers(self, split: &super::make::plan::Split) -> Vec<usize> {
        match self {
            AlignParams::LoraTop | AlignParams::LoraTopNorms => split.top.clone(),
            AlignParams::LoraAll => [split.bottom.as_slice(), &split.top].concat(),
            _ => Vec::new(),
        }
    }
}

/// The command-line value of `v` (`norms`, `emulator`, `last`): how reports and messages name
/// an option.
pub fn flag_value<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

/// How to align (the `--align-*` flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct AlignOptions {
    /// The distribution to match (default `emulator`: on hypernym it transferred best, see
    /// docs/results/alignment.md).
    #[arg(id = "align_target", long = "align-target", value_enum, default_value_t = AlignTarget::Emulator)]
    pub target: AlignTarget,
    /// Where the loss is taken.
    #[arg(id = "align_positions", long = "align-positions", value_enum, default_value_t = AlignPositions::All)]
    pub positions: AlignPositions,
    /// What of the plugged adapter trains (default `norms`: the fewest weights transferred
    /// best on hypernym).
    #[arg(id = "align_params", long = "align-params", value_enum, default_value_t = AlignParams::Norms)]
    pub params: AlignParams,
    /// The proxy target's α.
    #[arg(id = "align_alpha", long = "align-alpha", default_value_t = super::proxy::DEFAULT_ALPHA)]
    pub alpha: f64,
    /// Weight of the pull towards the returned adapter: `Σ‖θ − θ_A'‖² / Σ‖θ_A'‖²` over the
    /// trained weights (keeps a whole-adapter alignment from forgetting what A' learned).
    #[arg(id = "align_pull", long = "align-pull", default_value_t = 0.0)]
    pub pull: f64,
    /// The task's prompt template, with `{text}` where each public document goes (e.g.
    /// "Subject: {text}\n\nQuestion: Is this email spam?\nAnswer:"); each document is then its
    /// own sequence, cut from the left to the block size so that it ends at the answer position.
    #[arg(id = "align_template", long = "align-template")]
    pub template: Option<String>,
    /// Rank of the LoRA that `--align-params lora-top`/`lora-top-norms`/`lora-all` trains
    /// [default: 8]; its scale is 4, as
    /// `tune`'s default LoRA (alpha = 4·r). Absent from records of other alignments, so that
    /// their setups (and the digests naming them) are what they were.
    #[arg(id = "align_lora_r", long = "align-lora-r")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_r: Option<usize>,
}

/// `--align-lora-r`'s default: the issue's "rank ≤ 8".
pub const DEFAULT_LORA_R: usize = 8;

impl AlignOptions {
    /// What of the plugged adapter trains, in words for reports (`` `norms` weights ``, `a
    /// rank-8 LoRA on the top layers (`lora-top`)`).
    pub fn trained_part(&self) -> String {
        match self.params {
            AlignParams::LoraTop => format!(
                "a rank-{} LoRA on the top layers (`lora-top`, merged)",
                self.lora_r.unwrap_or(DEFAULT_LORA_R)
            ),
            AlignParams::LoraTopNorms => format!(
                "a rank-{} LoRA on the top layers and the norm gains (`lora-top-norms`, merged)",
                self.lora_r.unwrap_or(DEFAULT_LORA_R)
            ),
            AlignParams::LoraAll => format!(
                "a rank-{} LoRA on every adapter layer (`lora-all`, merged)",
                self.lora_r.unwrap_or(DEFAULT_LORA_R)
            ),
            p => format!("`{}` weights", flag_value(&p)),
        }
    }
}

/// The LoRA that `--align-params lora-top` trains: no dropout (the alignment's target is a
/// distribution, not scarce labelled records), the family's default maps.
fn alignment_lora(r: usize) -> LoraConfig {
    LoraConfig {
        r,
        alpha: 4.0 * r as f64,
        dropout: 0.0,
        targets: Vec::new(),
        fan_in_fan_out: false,
    }
}

/// What an aligned adapter records about its alignment (shown by `inspect`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlignRecord {
    /// The public corpus, as given.
    pub corpus: String,
    /// Its sha256.
    pub corpus_sha256: String,
    /// The alignment's options.
    pub options: AlignOptions,
    /// Trainer options.
    pub training: TrainOptions,
    /// How training went (steps, tokens, seconds, losses: mean KL).
    pub metrics: TrainSummary,
    /// The held-out KL before the alignment (the same measure as `metrics.best_val_loss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss_before: Option<f64>,
    /// The weights the alignment trained.
    pub trained: Vec<String>,
    /// The run that aligned it: command line, version, commit, CPU, precision (absent in
    /// adapters aligned before runs were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<crate::io::provenance::RunInfo>,
}

/// The alignment's sequences from public documents: packed into blocks, or each wrapped in the
/// template and kept to its last `block_size` inputs (an end-of-sequence token is appended as
/// the last position's target, so that the template's last token is an input).
pub fn align_sequences(
    tok: &Tokenizer,
    docs: &[String],
    block_size: usize,
    template: Option<&str>,
) -> Result<Vec<Sequence>> {
    let eos = tok
        .eos_id()
        .ok_or_else(|| Error::Invalid("the tokenizer has no end-of-sequence token".into()))?;
    let Some(template) = template else {
        let tokens: Vec<Vec<u32>> = docs
            .iter()
            .map(|d| tok.encode_start(d))
            .collect::<Result<_>>()?;
        return Ok(pack_blocks(&tokens, eos, block_size));
    };
    if template.matches("{text}").count() != 1 {
        return Err(Error::Invalid(format!(
            "--align-template must contain `{{text}}` exactly once: {template:?}"
        )));
    }
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        let mut ids = tok.encode_start(&template.replace("{text}", d))?;
        ids.push(eos);
        let start = ids.len().saturating_sub(block_size + 1);
        out.push(Sequence {
            ids: ids[start..].to_vec(),
            loss_from: 1,
        });
    }
    Ok(out)
}

/// 1 at the positions of `batch` where the alignment's loss is taken (`[batch, seq]`).
fn loss_mask(batch: &Batch, positions: AlignPositions) -> candle_core::Result<Tensor> {
    let mask = super::make::distill::position_mask(batch)?;
    if positions == AlignPositions::All {
        return Ok(mask);
    }
    let (b, t) = mask.dims2()?;
    let rows = mask.to_vec2::<f32>()?;
    let mut m = vec![0f32; b * t];
    for (r, row) in rows.iter().enumerate() {
        if let Some(last) = row.iter().rposition(|&x| x > 0.0) {
            m[r * t + last] = 1.0;
        }
    }
    Tensor::from_vec(m, (b, t), batch.inputs.device())
}

/// `mean_p KL(softmax(t_p) ‖ softmax(s_p))` over the positions where `mask` is set, for target
/// and student logits `[batch, seq, vocab]`, with the gradient written out: `(softmax(s) −
/// softmax(t)) / count` per masked position. Autograd through `log_softmax` would give
/// `softmax(s)·Σp_t − p_t`, which rounding leaves non-zero where the student already equals the
/// target — and AdamW's normalised step turns such noise into real updates. Here a student that
/// matches its target bit for bit gets exactly zero gradient.
fn kl_with_exact_gradient(
    target: &Tensor,
    student: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<Tensor> {
    let log_t = log_softmax(&target.detach())?;
    let fixed = student.detach();
    let log_s = log_softmax(&fixed)?;
    let mask = mask.to_dtype(student.dtype())?;
    let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    let p_t = log_t.exp()?;
    let kl = (&p_t * (&log_t - &log_s)?)?.sum(D::Minus1)?;
    let kl = (kl.mul(&mask)?.sum_all()? / count)?;
    let grad = ((log_s.exp()? - p_t)?.broadcast_mul(&mask.unsqueeze(D::Minus1)?)? / count)?;
    // Value 0 (student − fixed is exactly zero), gradient `grad` with respect to the student.
    let surrogate = (grad * (student - fixed)?)?.sum_all()?;
    kl + surrogate
}

/// The student (the plugged model, part of its adapter trainable), the target's models, and the
/// pull's starting point.
struct Alignment<'a> {
    student: &'a Model,
    proxy: &'a Proxy,
    options: &'a AlignOptions,
    /// The pull towards the trained weights' values in A'.
    pull: Pull,
}

impl Alignment<'_> {
    fn loss(&self, batch: &Batch, seed: Option<u64>) -> candle_core::Result<Tensor> {
        let target = match self.options.target {
            AlignTarget::Proxy => self.proxy.logits(&batch.inputs, false)?,
            AlignTarget::Emulator => self.proxy.tuned.forward(&batch.inputs)?,
        }
        .detach();
        let hidden = self.student.hidden_seeded(&batch.inputs, seed)?;
        let logits = self.student.logits(&hidden)?;
        let mask = loss_mask(batch, self.options.positions)?;
        let mut loss = kl_with_exact_gradient(&target, &logits, &mask)?;
        if self.pull.is_active() {
            loss = (loss + self.pull.loss()?)?;
        }
        Ok(loss)
    }
}

/// One alignment: the parties' files, the public text and how to train.
pub struct AlignRun<'a> {
    /// The full model.
    pub ckpt: &'a Checkpoint,
    /// The emulator package the adapter was tuned through (made from `ckpt`'s model).
    pub package: &'a Package,
    /// The adapter the data owner returned.
    pub adapter: &'a Adapter,
    /// Public training sequences ([`align_sequences`]).
    pub data: &'a [Sequence],
    /// Held-out public sequences (the aligned weights with the lowest KL on them are kept).
    pub val: Option<&'a [Sequence]>,
    /// The public corpus as the user named it, and its sha256 (recorded).
    pub corpus: (&'a str, &'a str),
    /// Target, positions, trained part.
    pub options: &'a AlignOptions,
    /// Trainer options.
    pub training: &'a TrainOptions,
    /// Padding id of batches.
    pub pad: u32,
    /// Where the aligned adapter will be written (checkpoints and metrics go beside it).
    pub output: &'a Path,
}

/// Aligns the run's adapter; returns the aligned adapter (not yet saved).
pub fn align(run: &AlignRun) -> Result<Adapter> {
    align_until(run, None)
}

/// [`align`], stopped as if killed after optimizer step `stop_at` (for crash tests).
pub(crate) fn align_until(run: &AlignRun, stop_at: Option<usize>) -> Result<Adapter> {
    let AlignRun {
        ckpt,
        package,
        adapter,
        data,
        val,
        corpus,
        options,
        training,
        pad,
        output,
    } = *run;
    if adapter.meta.alignment.is_some() {
        return Err(Error::format(
            adapter.tensors.origin(),
            "this adapter is already aligned: align the adapter the data owner returned",
        ));
    }
    let kind = adapter.kind();
    if kind != "full" {
        return Err(Error::format(
            adapter.tensors.origin(),
            format!(
                "aligning a {kind} adapter is not supported yet: align an adapter tuned with all \
                 its layers' weights (tune without --peft)"
            ),
        ));
    }
    if options.lora_r.is_some() && !options.params.has_lora() {
        return Err(Error::Invalid(
            "--align-lora-r applies to --align-params lora-top, lora-top-norms and lora-all only"
                .into(),
        ));
    }
    // The aligned weights are written back into the adapter: bf16 storage would round them.
    let training = &training.f32_only("alignment")?;
    let proxy = Proxy::new(ckpt, package, adapter, options.alpha)?;
    let mut student = plug(ckpt, adapter)?;
    let top = &package.meta.split.top;
    let lora = options.params.has_lora();
    if lora {
        add_lora(
            &mut student,
            &options.params.lora_layers(&package.meta.split),
            &alignment_lora(options.lora_r.unwrap_or(DEFAULT_LORA_R)),
            training.seed,
        )?;
    }
    // The adapter weights the part trains directly, then the fresh LoRA's own weights.
    let mut names: Vec<String> = adapter
        .tensors
        .iter()
        .filter(|(name, t)| {
            layer_index(name).is_some_and(|l| options.params.picks(top, l, t.rank()))
        })
        .map(|(name, _)| name.to_string())
        .collect();
    if lora {
        names.extend(
            student
                .named_weights()
                .into_iter()
                .map(|(name, _)| name)
                .filter(|name| is_lora_weight(name)),
        );
    }
    if names.is_empty() {
        return Err(Error::Invalid(format!(
            "--align-params {} names no weight of this adapter",
            flag_value(&options.params)
        )));
    }
    let params = trainable_params(&mut student, |n| names.iter().any(|x| x == n))?;
    let pull = Pull::new(&params, options.pull)?;
    let alignment = Alignment {
        student: &student,
        proxy: &proxy,
        options,
        pull,
    };
    let loss = |batch: &Batch, seed| alignment.loss(batch, seed);
    let val_loss_before = val
        .map(|v| train::evaluate(v, training.batch_size, pad, student.device(), &loss))
        .transpose()?;
    let total = student.num_parameters();
    let mut job = TrainJob::beside(output, "align", params, data, val, pad, training, total);
    job.device = student.device().clone();
    job.stop_at = stop_at;
    job.loss_is_nll = false;
    let checkpoint_dir = job.checkpoint_dir.clone();
    let outcome = train::train(job, &loss)?;
    let _ = std::fs::remove_dir_all(&checkpoint_dir);
    let (weights, trained) = if lora {
        merged_lora(student, &outcome.params, adapter)?
    } else {
        (outcome.params, names)
    };
    let record = AlignRecord {
        corpus: corpus.0.into(),
        corpus_sha256: corpus.1.into(),
        options: options.clone(),
        training: training.clone(),
        metrics: outcome.summary,
        val_loss_before,
        trained,
        run: Some(crate::io::provenance::RunInfo::current(training.precision)),
    };
    aligned_adapter(adapter, &weights, record)
}

/// The adapter weights the alignment changed, and their names: `student`'s adapted maps with its
/// trained LoRA folded in, plus any weights trained directly (norm gains), as kept in `trained`
/// (the kept values of every trained weight, the LoRA's own included).
fn merged_lora(
    mut student: Model,
    trained: &BTreeMap<String, Tensor>,
    adapter: &Adapter,
) -> Result<(BTreeMap<String, Tensor>, Vec<String>)> {
    let mut adapted = Vec::new();
    for (name, w) in student.named_weights_mut() {
        if let Some(t) = trained.get(&name) {
            let var = w.var().ok_or_else(|| {
                Error::Invalid(format!("the aligned LoRA weight {name} is not trainable"))
            })?;
            var.set(t)?;
            // `…q_proj.lora_A.weight` adapts `…q_proj.weight`.
            if let Some((module, _)) = name.split_once(".lora_A.") {
                adapted.push(format!("{module}.weight"));
            }
        }
    }
    merge_lora(&mut student)?;
    let mut weights: BTreeMap<String, Tensor> = student
        .dense_weights()?
        .into_iter()
        .filter(|(name, _)| adapted.contains(name) && adapter.tensors.contains(name))
        .collect();
    if weights.len() != adapted.len() {
        return Err(Error::Invalid(format!(
            "the aligned LoRA adapts {} maps but {} of them are adapter weights",
            adapted.len(),
            weights.len()
        )));
    }
    for (name, t) in trained.iter().filter(|(n, _)| !is_lora_weight(n)) {
        weights.insert(name.clone(), t.clone());
        adapted.push(name.clone());
    }
    Ok((weights, adapted))
}

/// `adapter` with the aligned weights in place of its own, recording the alignment.
fn aligned_adapter(
    adapter: &Adapter,
    aligned: &BTreeMap<String, Tensor>,
    record: AlignRecord,
) -> Result<Adapter> {
    let origin = adapter.tensors.origin().to_path_buf();
    let mut tensors = crate::model::TensorMap::new(&origin);
    for (name, t) in adapter.tensors.iter() {
        let t = aligned.get(name).unwrap_or(t);
        tensors.insert(name, t.clone(), &origin);
    }
    let mut meta = adapter.meta.clone();
    meta.alignment = Some(Box::new(record));
    Ok(Adapter { meta, tensors })
}

#[cfg(test)]
mod tests;
