//! Batches: sequences padded to a common length, with next-token targets and loss weights.

use super::sequences::Sequence;
use candle_core::{Device, Result, Tensor};

/// Inputs, targets and weights of a batch of sequences.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[batch, len]` input ids (padded).
    pub inputs: Tensor,
    /// `[batch, len]` the id each position should predict.
    pub targets: Tensor,
    /// `[batch, len]` f32: 1 where the position's target counts towards the loss.
    pub weights: Tensor,
    /// Number of counted targets.
    pub num_targets: usize,
    /// Number of input tokens that are not padding.
    pub num_tokens: usize,
}

impl Batch {
    /// Pads `seqs` to the longest one (minus one: the last token is only a target).
    pub fn new(seqs: &[&Sequence], pad: u32, device: &Device) -> Result<Self> {
        let len = seqs.iter().map(|s| s.ids.len() - 1).max().unwrap_or(0);
        let n = seqs.len();
        let mut inputs = vec![pad; n * len];
        let mut targets = vec![pad; n * len];
        let mut weights = vec![0f32; n * len];
        let (mut num_targets, mut num_tokens) = (0, 0);
        for (row, s) in seqs.iter().enumerate() {
            let t = s.ids.len() - 1;
            num_tokens += t;
            for i in 0..t {
                inputs[row * len + i] = s.ids[i];
                targets[row * len + i] = s.ids[i + 1];
                if i + 1 >= s.loss_from {
                    weights[row * len + i] = 1.0;
                    num_targets += 1;
                }
            }
        }
        Ok(Batch {
            inputs: Tensor::from_vec(inputs, (n, len), device)?,
            targets: Tensor::from_vec(targets, (n, len), device)?,
            weights: Tensor::from_vec(weights, (n, len), device)?,
            num_targets,
            num_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_and_weights_targets() -> Result<()> {
        let a = Sequence {
            ids: vec![1, 2, 3, 4],
            loss_from: 2,
        };
        let b = Sequence {
            ids: vec![5, 6],
            loss_from: 1,
        };
        let batch = Batch::new(&[&a, &b], 0, &Device::Cpu)?;
        assert_eq!(batch.inputs.to_vec2::<u32>()?, [[1, 2, 3], [5, 0, 0]]);
        assert_eq!(batch.targets.to_vec2::<u32>()?, [[2, 3, 4], [6, 0, 0]]);
        assert_eq!(
            batch.weights.to_vec2::<f32>()?,
            [[0., 1., 1.], [1., 0., 0.]]
        );
        assert_eq!((batch.num_targets, batch.num_tokens), (3, 4));
        Ok(())
    }
}
