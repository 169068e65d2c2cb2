//! The loss of each record's completion given its prompt (`{"prompt", "completion"}` records):
//! what an adapter for a generation task is trained to lower, measured on held-out records, with
//! the same context truncation as training.

use super::scorer::Scorer;
use crate::data::{record_sequence, Record};
use crate::io::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Completion loss of a model on a set of records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnswerReport {
    /// Mean next-token NLL over every completion token (nats).
    pub answer_loss: f64,
    /// `exp(answer_loss)`.
    pub answer_perplexity: f64,
    /// Completion tokens scored.
    pub tokens: usize,
    /// Records scored.
    pub n: usize,
    /// Records whose prompt was cut from the left to fit the block.
    pub truncated: usize,
}

/// Scores every record's completion after its prompt, one record per forward pass.
pub fn answer_loss(
    scorer: &dyn Scorer,
    tok: &Tokenizer,
    records: &[Record],
    block_size: usize,
) -> Result<AnswerReport> {
    let eos = tok
        .eos_id()
        .ok_or_else(|| Error::Invalid("the tokenizer has no end-of-sequence token".into()))?;
    let (mut sum, mut tokens, mut truncated, mut n) = (0.0, 0usize, 0usize, 0usize);
    for record in records {
        let (prompt, answer) = record.prompt_and_answer();
        let (c, a) = (tok.encode_start(prompt)?, tok.encode(answer)?);
        let Some((seq, cut)) = record_sequence(&c, &a, eos, block_size) else {
            continue;
        };
        let len = seq.ids.len();
        let inputs = Tensor::from_slice(&seq.ids[..len - 1], (1, len - 1), scorer.device())?;
        let nll = scorer.position_nll(&inputs, &seq.ids[1..])?;
        // Position i predicts token i + 1: the completion starts at `loss_from`.
        sum += nll[seq.loss_from - 1..].iter().sum::<f64>();
        tokens += len - seq.loss_from;
        truncated += cut as usize;
        n += 1;
    }
    if tokens == 0 {
        return Err(Error::Invalid("no completion tokens to score".into()));
    }
    let loss = sum / tokens as f64;
    Ok(AnswerReport {
        answer_loss: loss,
        answer_perplexity: loss.exp(),
        tokens,
        n,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, ModelConfig};

    #[test]
    fn equals_a_hand_sum_over_the_completion_positions() {
        // The byte-level tokenizer's ids reach 262.
        let config = ModelConfig {
            vocab_size: 263,
            ..ModelConfig::tiny()
        };
        let model = Model::random(&config, 4, candle_core::DType::F32).unwrap();
        let tok = Tokenizer::tiny_byte_level();
        let records = vec![Record::Completion {
            prompt: "ab".into(),
            completion: "cd".into(),
        }];
        let r = answer_loss(&model, &tok, &records, 64).unwrap();
        let ids = [tok.encode("ab").unwrap(), tok.encode("cd").unwrap()].concat();
        let logits = model
            .forward(
                &Tensor::new(&ids[..ids.len() - 1], &candle_core::Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            )
            .unwrap()
            .squeeze(0)
            .unwrap();
        let lsm = candle_nn::ops::log_softmax(&logits, 1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let p = tok.encode("ab").unwrap().len();
        let want: f64 = (p..ids.len())
            .map(|t| -(lsm[t - 1][ids[t] as usize] as f64))
            .sum::<f64>()
            / (ids.len() - p) as f64;
        assert_eq!(r.tokens, ids.len() - p);
        assert!(
            (r.answer_loss - want).abs() < 1e-4,
            "{} vs {want}",
            r.answer_loss
        );
    }
}
