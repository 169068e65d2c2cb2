//! Perplexity, two ways, both labelled:
//! - the paper's token-level perplexity: `exp(mean CE)` over the corpus packed into blocks;
//! - lm-evaluation-harness's document-level `word_perplexity`, `byte_perplexity` and
//!   `bits_per_byte`: each document scored whole (rolling windows, first token predicted from
//!   the BOS/EOS prefix token), log-likelihood summed per word / byte.

use super::scorer::Scorer;
use crate::data::{pack_blocks, Batch, Sequence};
use crate::io::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Perplexity of a model on a corpus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerplexityReport {
    /// `exp(mean next-token CE)` over packed blocks (the paper's number).
    pub token_perplexity: f64,
    /// The mean CE behind it, nats per token.
    pub token_ce: f64,
    /// Tokens predicted in the packed blocks.
    pub tokens: usize,
    /// lm-eval `word_perplexity`: `exp(-Σ loglik / Σ words)`.
    pub word_perplexity: f64,
    /// lm-eval `byte_perplexity`: `exp(-Σ loglik / Σ bytes)`.
    pub byte_perplexity: f64,
    /// lm-eval `bits_per_byte`: `-Σ loglik / Σ bytes / ln 2`.
    pub bits_per_byte: f64,
    /// Documents evaluated.
    pub n: usize,
    /// Block size of the token-level measure and window size of the document-level one.
    pub block_size: usize,
}

/// Words as lm-eval counts them: `len(re.split(r"\s+", doc))`.
pub fn count_words(doc: &str) -> usize {
    let mut runs = 0;
    let mut in_space = false;
    for c in doc.chars() {
        let space = c.is_whitespace();
        if space && !in_space {
            runs += 1;
        }
        in_space = space;
    }
    runs + 1
}

/// Total negative log-likelihood of each sequence's targets, in input order.
pub fn sequence_nll(
    model: &dyn Scorer,
    seqs: &[Sequence],
    batch_size: usize,
    pad: u32,
) -> Result<Vec<f64>> {
    // Similar lengths together waste less padding.
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].ids.len()));
    let mut out = vec![0.0; seqs.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let refs: Vec<&Sequence> = chunk.iter().map(|&i| &seqs[i]).collect();
        let batch = Batch::new(&refs, pad, model.device())?;
        let (_, t) = batch.inputs.dims2()?;
        let targets = batch.targets.flatten_all()?.to_vec1::<u32>()?;
        let weights = batch.weights.flatten_all()?.to_vec1::<f32>()?;
        let nll = model.position_nll(&batch.inputs, &targets)?;
        for (row, &i) in chunk.iter().enumerate() {
            out[i] = (0..t)
                .map(|j| nll[row * t + j] * weights[row * t + j] as f64)
                .sum();
        }
    }
    Ok(out)
}

/// lm-eval's rolling windows over one document: the prefix token then the document, cut into
/// windows that each predict up to `window` new tokens from the tokens just before them.
fn rolling_windows(prefix: u32, doc: &[u32], window: usize) -> Vec<Sequence> {
    let mut all = Vec::with_capacity(doc.len() + 1);
    all.push(prefix);
    all.extend_from_slice(doc);
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < all.len() {
        let end = (start + window + 1).min(all.len());
        out.push(Sequence {
            ids: all[start..end].to_vec(),
            loss_from: 1,
        });
        start = end - 1;
    }
    out
}

/// Both perplexities of `model` on `docs`.
pub fn perplexity(
    model: &dyn Scorer,
    tokenizer: &Tokenizer,
    docs: &[String],
    block_size: usize,
    batch_size: usize,
) -> Result<PerplexityReport> {
    if docs.is_empty() {
        return Err(Error::Invalid("no documents to evaluate".into()));
    }
    let eos = tokenizer
        .eos_id()
        .ok_or_else(|| Error::Invalid("the tokenizer has no end-of-sequence token".into()))?;
    let prefix = tokenizer.bos_id().unwrap_or(eos);
    let pad = tokenizer.pad_id().unwrap_or(eos);
    // Token perplexity packs the documents as training does (each with its BOS when the model
    // wants one); the rolling windows start each document from the prefix token instead, as
    // lm-eval does, so the documents go in without it.
    let tokens: Vec<Vec<u32>> = docs
        .iter()
        .map(|d| tokenizer.encode(d))
        .collect::<Result<_>>()?;
    let started: Vec<Vec<u32>> = docs
        .iter()
        .map(|d| tokenizer.encode_start(d))
        .collect::<Result<_>>()?;

    let blocks = pack_blocks(&started, eos, block_size);
    let block_nll: f64 = sequence_nll(model, &blocks, batch_size, pad)?.iter().sum();
    let predicted: usize = blocks.iter().map(Sequence::num_targets).sum();
    let token_ce = block_nll / predicted.max(1) as f64;

    let mut windows = Vec::new();
    for t in &tokens {
        windows.extend(rolling_windows(prefix, t, block_size));
    }
    let doc_nll: f64 = sequence_nll(model, &windows, batch_size, pad)?.iter().sum();
    let words: usize = docs.iter().map(|d| count_words(d)).sum();
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    Ok(PerplexityReport {
        token_perplexity: token_ce.exp(),
        token_ce,
        tokens: predicted,
        word_perplexity: (doc_nll / words as f64).exp(),
        byte_perplexity: (doc_nll / bytes as f64).exp(),
        bits_per_byte: doc_nll / bytes as f64 / std::f64::consts::LN_2,
        n: docs.len(),
        block_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{log_softmax, Model, ModelConfig};
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn words_as_python_re_split() {
        assert_eq!(count_words("a b  c"), 3);
        assert_eq!(count_words(" a b "), 4);
        assert_eq!(count_words(""), 1);
        assert_eq!(count_words("one\n\ttwo"), 2);
    }

    #[test]
    fn rolling_windows_predict_every_token_once() {
        let w = rolling_windows(9, &[1, 2, 3, 4, 5], 2);
        let ids: Vec<Vec<u32>> = w.iter().map(|s| s.ids.clone()).collect();
        assert_eq!(ids, vec![vec![9, 1, 2], vec![2, 3, 4], vec![4, 5]]);
        assert_eq!(w.iter().map(Sequence::num_targets).sum::<usize>(), 5);
    }

    #[test]
    fn sequence_nll_matches_per_sequence_scoring() -> Result<()> {
        let model = Model::random(&ModelConfig::tiny(), 3, DType::F32)?;
        let seqs = vec![
            Sequence {
                ids: vec![1, 5, 7, 9, 3],
                loss_from: 2,
            },
            Sequence {
                ids: vec![4, 2],
                loss_from: 1,
            },
        ];
        let batched = sequence_nll(&model, &seqs, 2, 0)?;
        for (s, got) in seqs.iter().zip(batched) {
            let ids = Tensor::new(s.ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
            let logits = model.forward(&ids)?.squeeze(0)?;
            let logp = log_softmax(&logits.to_dtype(DType::F64)?)?.to_vec2::<f64>()?;
            let want: f64 = (s.loss_from..s.ids.len())
                .map(|i| -logp[i - 1][s.ids[i] as usize])
                .sum();
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        Ok(())
    }
}
