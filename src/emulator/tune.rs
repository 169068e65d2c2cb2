//! The data owner's step: train the adapter layers through the frozen emulator — all their
//! weights, or a parameter-efficient part of them (LoRA, bottleneck adapters, BitFit).

use super::adapter::Adapter;
use super::package::{layer_index, Package};
use crate::data::Sequence;
use crate::peft::Method;
use crate::train::{self, loss::lm_loss, trainable_params, TrainJob, TrainOptions};
use crate::Result;
use std::path::Path;

/// Tunes the adapter of `package` on `train` (validating on `val`) and writes it to `output`
/// (a file; a PEFT directory for LoRA). Embeddings, head and emulator layers stay frozen; with a
/// PEFT method, only what [`Method::trains`] names in the adapter layers trains.
pub fn tune(
    package: &Package,
    train_data: &[Sequence],
    val: Option<&[Sequence]>,
    options: &TrainOptions,
    method: &Method,
    pad: u32,
    output: &Path,
) -> Result<Adapter> {
    let method = &method.for_model(&package.meta.config);
    let mut model = package.model()?;
    let adapter_layers = package.meta.split.adapter();
    let in_adapter = |name: &str| layer_index(name).is_some_and(|i| adapter_layers.contains(&i));
    method.inject(&mut model, &adapter_layers, options.seed)?;
    let trained: std::collections::BTreeSet<String> = model
        .named_weights()
        .into_iter()
        .filter(|(n, w)| in_adapter(n) && method.trains(n, w.tensor().rank()))
        .map(|(n, _)| n)
        .collect();
    let params = trainable_params(&mut model, |n| trained.contains(n))?;
    // The emulator is never written back (only the adapter is), so storing it in bf16 is safe.
    model.set_precision(options.precision)?;
    let total = model.num_parameters();
    let mut job = TrainJob::beside(output, "tune", params, train_data, val, pad, options, total);
    job.device = model.device().clone();
    let checkpoint_dir = job.checkpoint_dir.clone();
    let outcome = train::train(job, &|batch, seed| lm_loss(&model, batch, seed))?;
    let (training, metrics) = (Some(options.clone()), Some(outcome.summary));
    let adapter = match method {
        Method::Full => Adapter::from_weights(package, &outcome.params, training, metrics)?,
        Method::Lora(config) => {
            Adapter::from_lora(package, config, &outcome.params, training, metrics)?
        }
        Method::Adapter(config) => {
            Adapter::from_bottleneck(package, config, &outcome.params, training, metrics)?
        }
        Method::BitFit => Adapter::bitfit(package, &outcome.params, training, metrics)?,
    };
    adapter.save(output)?;
    // The adapter is written; the run's checkpoints are no longer needed.
    let _ = std::fs::remove_dir_all(&checkpoint_dir);
    Ok(adapter)
}
