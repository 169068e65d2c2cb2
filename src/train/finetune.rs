//! The baseline the paper compares against: fine-tuning every weight of the full model with the
//! same trainer, written as a Hugging Face directory.

use super::loss::lm_loss;
use super::{run_files, train, Param, TrainJob, TrainOptions, TrainSummary};
use crate::data::Sequence;
use crate::io::{atomic, checkpoint::Checkpoint, hf_dir};
use crate::model::{Model, Weight};
use crate::Result;
use std::path::Path;

/// Fine-tunes all of `ckpt`'s weights on `train_data` (keeping the best on `val`), writes the
/// model to `output` (an HF directory, with `training.json` describing the run) and returns it.
pub fn finetune(
    ckpt: &Checkpoint,
    train_data: &[Sequence],
    val: Option<&[Sequence]>,
    options: &TrainOptions,
    pad: u32,
    output: &Path,
) -> Result<(Model, TrainSummary)> {
    let mut model = ckpt.model()?;
    let mut params = Vec::new();
    for (name, w) in model.named_weights_mut() {
        w.set_trainable(true)?;
        if let Some(var) = w.var() {
            params.push(Param::new(name, var.clone()));
        }
    }
    let (checkpoint_dir, metrics_log) = run_files(output);
    let job = TrainJob {
        params,
        train: train_data,
        val,
        pad,
        device: model.device().clone(),
        options: options.clone(),
        checkpoint_dir: checkpoint_dir.clone(),
        metrics_log,
        total_params: model.num_parameters(),
        label: "finetune".into(),
        stop_at: None,
    };
    let outcome = train(job, &|batch| lm_loss(&model, batch))?;
    for (name, w) in model.named_weights_mut() {
        if let Some(t) = outcome.params.get(&name) {
            *w = Weight::Frozen(t.clone());
        }
    }
    hf_dir::save(output, &model, ckpt.tokenizer.as_ref())?;
    atomic::write_json(
        &output.join("training.json"),
        &serde_json::json!({"options": options, "metrics": outcome.summary}),
    )?;
    let _ = std::fs::remove_dir_all(&checkpoint_dir);
    Ok((model, outcome.summary))
}
