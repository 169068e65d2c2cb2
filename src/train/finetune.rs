//! The baseline the paper compares against: fine-tuning every weight of the full model with the
//! same trainer, written as a Hugging Face directory.

use super::loss::lm_loss;
use super::{prepare, train, TrainJob, TrainOptions, TrainSummary};
use crate::data::Sequence;
use crate::io::{atomic, checkpoint::Checkpoint, hf_dir};
use crate::model::{Model, Precision, Weight};
use crate::peft::{merge_lora, Method};
use crate::Result;
use std::path::Path;

/// Fine-tunes all of `ckpt`'s weights — or what a PEFT `method` trains, in every layer — on
/// `train_data` (keeping the best on `val`), writes the model to `output` (an HF directory, LoRA
/// merged; offsite's variant of it with bottleneck adapters; `training.json` describes the run)
/// and returns it.
pub fn finetune(
    ckpt: &Checkpoint,
    train_data: &[Sequence],
    val: Option<&[Sequence]>,
    options: &TrainOptions,
    method: &Method,
    pad: u32,
    output: &Path,
) -> Result<(Model, TrainSummary)> {
    options.dense_only("full-model fine-tuning")?;
    let options = &options.resolved("finetune");
    let method = &method.for_model(&ckpt.config);
    let mut model = ckpt.model()?;
    let (params, _) = prepare(&mut model, method, None, options.seed, options.precision)?;
    let total = model.num_parameters();
    let mut job = TrainJob::beside(
        output, "finetune", params, train_data, val, pad, options, total,
    );
    job.device = model.device().clone();
    let checkpoint_dir = job.checkpoint_dir.clone();
    let outcome = train(job, &|batch, seed| lm_loss(&model, batch, seed))?;
    // Frozen weights stored in bf16 for training were rounded: the saved model gets the
    // checkpoint's own values back.
    let originals = match options.precision {
        Precision::F32 => None,
        _ => {
            model.set_precision(Precision::F32)?;
            Some(ckpt.model()?)
        }
    };
    let originals: std::collections::HashMap<String, &Weight> =
        originals.iter().flat_map(|m| m.named_weights()).collect();
    for (name, w) in model.named_weights_mut() {
        if let Some(t) = outcome.params.get(&name) {
            *w = Weight::Frozen(t.clone());
        } else if let Some(original) = originals.get(&name) {
            *w = Weight::Frozen(original.tensor()?.into_owned());
        }
    }
    merge_lora(&mut model)?;
    // In a data-parallel run every rank holds the same model; rank 0 writes it.
    if super::collective::world().is_root() {
        hf_dir::save(output, &model, ckpt.tokenizer.as_ref())?;
        atomic::write_json(
            &output.join("training.json"),
            &serde_json::json!({"options": options, "method": method, "metrics": outcome.summary}),
        )?;
        let _ = std::fs::remove_dir_all(&checkpoint_dir);
    }
    Ok((model, outcome.summary))
}
