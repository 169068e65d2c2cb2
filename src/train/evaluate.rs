//! The validation loss of a training run: a loss over data in batches, nothing updated.

use super::collective::{self, Collective};
use crate::data::{Batch, Sequence};
use crate::Result;
use candle_core::{Device, Tensor};

/// The mean of `loss` over `data` in batches of `batch_size`, each batch weighted by its
/// counted targets (how the loop reports validation loss).
pub fn evaluate(
    data: &[Sequence],
    batch_size: usize,
    pad: u32,
    device: &Device,
    loss: &dyn Fn(&Batch, Option<u64>) -> candle_core::Result<Tensor>,
) -> Result<f64> {
    evaluate_on(&collective::Single, data, batch_size, pad, device, loss)
}

/// [`evaluate`] spread over `group`: each rank scores every `size`-th batch, and the sums meet.
pub fn evaluate_on(
    group: &dyn Collective,
    data: &[Sequence],
    batch_size: usize,
    pad: u32,
    device: &Device,
    loss: &dyn Fn(&Batch, Option<u64>) -> candle_core::Result<Tensor>,
) -> Result<f64> {
    let (mut sum, mut count) = (0.0, 0usize);
    let mine = data
        .chunks(batch_size)
        .enumerate()
        .filter(|(i, _)| i % group.size() == group.rank());
    for (_, chunk) in mine {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let batch = Batch::new(&refs, pad, device)?;
        let l = loss(&batch, None)?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        sum += l * batch.num_targets as f64;
        count += batch.num_targets;
    }
    let mut both = [sum, count as f64];
    group.all_reduce_sum_f64(&mut both)?;
    Ok(both[0] / both[1].max(1.0))
}
