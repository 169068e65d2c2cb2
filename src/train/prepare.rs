//! A model made trainable, the same way for every trainer (`tune`, `finetune`, `bench`):
//! inject the method's modules into the chosen layers, turn the weights it trains into
//! variables, and set which products run in bf16.

use super::{trainable_params, Param};
use crate::model::{Model, Precision};
use crate::peft::Method;
use crate::Result;

/// Prepares `model` to train `method` in `layers` (original indices), or in the whole model
/// (`None`: every layer, and the embeddings, final norm and head where `method` trains them);
/// `method`'s modules are seeded with `seed`. Every weight in scope that `method` trains
/// becomes a variable, the rest is frozen; then the products are set to `precision` (frozen
/// weights packed for the bf16 kernel where it asks). Returns the trained parameters and the
/// bytes of bf16 copies.
pub fn prepare(
    model: &mut Model,
    method: &Method,
    layers: Option<&[usize]>,
    seed: u64,
    precision: Precision,
) -> Result<(Vec<Param>, usize)> {
    let all = model.layer_ids().to_vec();
    method.inject(model, layers.unwrap_or(&all), seed)?;
    let in_scope = |name: &str| layers.is_none_or(|l| crate::model::families::in_layers(name, l));
    let trained: std::collections::BTreeSet<String> = model
        .named_weights()
        .into_iter()
        .filter(|(n, w)| in_scope(n) && method.trains(n, w.dims().len()))
        .map(|(n, _)| n)
        .collect();
    let params = trainable_params(model, |n| trained.contains(n))?;
    let bf16_bytes = model.set_precision(precision)?;
    Ok((params, bf16_bytes))
}
