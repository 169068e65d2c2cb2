//! Plug-in: the model owner puts the tuned adapter back into the full model, after checking that
//! the adapter's fingerprint chain leads to that model.

use super::adapter::Adapter;
use super::fingerprint::fingerprint;
use crate::io::checkpoint::Checkpoint;
use crate::model::Model;
use crate::Result;

/// The fingerprint of a checkpoint's weights (as the package records its source's).
pub fn model_fingerprint(model: &Model) -> Result<String> {
    Ok(fingerprint(
        model.dense_weights()?.iter().map(|(n, t)| (n.as_str(), t)),
    )?)
}

/// The full model of `ckpt` with `adapter`'s layers plugged in; refuses an adapter whose
/// fingerprint chain does not lead to `ckpt`.
pub fn plug(ckpt: &Checkpoint, adapter: &Adapter) -> Result<Model> {
    let mut model = ckpt.model()?;
    adapter.check_source(&model_fingerprint(&model)?, &ckpt.path)?;
    adapter.apply(&mut model)?;
    Ok(model)
}
