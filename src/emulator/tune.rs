//! The data owner's step: train the adapter layers through the frozen emulator.

use super::adapter::Adapter;
use super::package::{layer_index, Package};
use crate::data::Sequence;
use crate::train::{self, loss::lm_loss, trainable_params, TrainJob, TrainOptions};
use crate::Result;
use std::path::Path;

/// Tunes the adapter of `package` on `train` (validating on `val`) and writes it to `output`.
/// Embeddings, head and emulator layers stay frozen.
pub fn tune(
    package: &Package,
    train_data: &[Sequence],
    val: Option<&[Sequence]>,
    options: &TrainOptions,
    pad: u32,
    output: &Path,
) -> Result<Adapter> {
    let mut model = package.model()?;
    let adapter_layers = package.meta.split.adapter();
    let params = trainable_params(&mut model, |name| {
        layer_index(name).is_some_and(|i| adapter_layers.contains(&i))
    })?;
    let total = package.num_parameters();
    let mut job = TrainJob::beside(output, "tune", params, train_data, val, pad, options, total);
    job.device = model.device().clone();
    let checkpoint_dir = job.checkpoint_dir.clone();
    let outcome = train::train(job, &|batch, seed| lm_loss(&model, batch, seed))?;
    let adapter = Adapter::from_weights(
        package,
        &outcome.params,
        Some(options.clone()),
        Some(outcome.summary),
    )?;
    adapter.save(output)?;
    // The adapter is written; the run's checkpoints are no longer needed.
    let _ = std::fs::remove_dir_all(&checkpoint_dir);
    Ok(adapter)
}
