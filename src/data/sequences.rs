//! Token sequences with a loss region: packed language-modelling blocks, and prompt/answer
//! records whose loss covers the answer only.

use super::records::{data_kind, read_records, read_texts, DataKind, Record};
use crate::io::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::path::Path;

/// One sequence: its ids, and from which position on the tokens are loss targets
/// (`ids[loss_from..]` are predicted, each from the tokens before it; `loss_from ≥ 1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// Token ids.
    pub ids: Vec<u32>,
    /// First target position.
    pub loss_from: usize,
}

impl Sequence {
    /// Number of predicted tokens.
    pub fn num_targets(&self) -> usize {
        self.ids.len().saturating_sub(self.loss_from)
    }
}

/// Concatenates the documents' tokens with `eos` after each one and cuts the stream into blocks
/// of `block_size` tokens (every token after a block's first is a target). A final partial block
/// is kept when it has at least two tokens, so small evaluation sets are scored in full.
pub fn pack_blocks(docs: &[Vec<u32>], eos: u32, block_size: usize) -> Vec<Sequence> {
    let mut stream = Vec::with_capacity(docs.iter().map(|d| d.len() + 1).sum());
    for d in docs {
        stream.extend_from_slice(d);
        stream.push(eos);
    }
    stream
        .chunks(block_size.max(2))
        .filter(|c| c.len() >= 2)
        .map(|c| Sequence {
            ids: c.to_vec(),
            loss_from: 1,
        })
        .collect()
}

/// The sequence for one prompt/answer pair: context and answer are tokenized separately (the
/// answer's own tokens are its targets, as lm-eval scores them). When longer than
/// `block_size`, the context is cut from the left; returns whether it was cut.
pub fn record_sequence(
    context: &[u32],
    answer: &[u32],
    start: u32,
    block_size: usize,
) -> Option<(Sequence, bool)> {
    if answer.is_empty() {
        return None;
    }
    // An empty context still needs one token to predict the first answer token from.
    let context: Vec<u32> = if context.is_empty() {
        vec![start]
    } else {
        context.to_vec()
    };
    let answer = &answer[..answer.len().min(block_size.saturating_sub(1).max(1))];
    let room = block_size.saturating_sub(answer.len()).max(1);
    let truncated = context.len() > room;
    let context = &context[context.len().saturating_sub(room)..];
    let mut ids = context.to_vec();
    ids.extend_from_slice(answer);
    Some((
        Sequence {
            ids,
            loss_from: context.len(),
        },
        truncated,
    ))
}

/// Training or evaluation data, tokenized.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The sequences, in file order.
    pub sequences: Vec<Sequence>,
    /// Whether they came from a corpus (packed blocks) or from records.
    pub kind: DataKind,
    /// Records whose context was cut to fit the block size.
    pub truncated: usize,
}

impl Dataset {
    /// Total number of loss targets.
    pub fn num_targets(&self) -> usize {
        self.sequences.iter().map(Sequence::num_targets).sum()
    }
}

/// Reads a data file (corpus or records, told apart by content) and tokenizes it. `limit` keeps
/// the first N documents/records.
pub fn load_training_data(
    path: &Path,
    tokenizer: &Tokenizer,
    block_size: usize,
    limit: Option<usize>,
) -> Result<Dataset> {
    if block_size < 2 {
        return Err(Error::Invalid("the block size must be at least 2".into()));
    }
    let eos = tokenizer
        .eos_id()
        .ok_or_else(|| Error::Invalid("the tokenizer has no end-of-sequence token".into()))?;
    let limit = limit.unwrap_or(usize::MAX);
    let kind = data_kind(path)?;
    let (sequences, truncated) = match kind {
        DataKind::Text => {
            let docs = read_texts(path)?
                .iter()
                .take(limit)
                .map(|t| tokenizer.encode_start(t))
                .collect::<Result<Vec<_>>>()?;
            (pack_blocks(&docs, eos, block_size), 0)
        }
        DataKind::Records => {
            let mut seqs = Vec::new();
            let mut truncated = 0;
            for record in read_records(path)?.iter().take(limit) {
                let (context, answer) = record.prompt_and_answer();
                let c = tokenizer.encode_start(context)?;
                let a = tokenizer.encode(answer)?;
                if let Some((seq, cut)) = record_sequence(&c, &a, eos, block_size) {
                    truncated += cut as usize;
                    seqs.push(seq);
                }
            }
            (seqs, truncated)
        }
    };
    if sequences.is_empty() {
        return Err(Error::format(path, "no usable sequences"));
    }
    Ok(Dataset {
        sequences,
        kind,
        truncated,
    })
}

/// The records of a file, for tasks that need them whole (multiple-choice scoring).
pub fn records(path: &Path) -> Result<Vec<Record>> {
    read_records(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_with_eos_between_documents() {
        let blocks = pack_blocks(&[vec![1, 2, 3], vec![4, 5]], 0, 3);
        let ids: Vec<_> = blocks.iter().map(|b| b.ids.clone()).collect();
        assert_eq!(
            ids,
            vec![vec![1, 2, 3], vec![0, 4, 5], vec![0]]
                .into_iter()
                .filter(|b| b.len() >= 2)
                .collect::<Vec<_>>()
        );
        assert!(blocks.iter().all(|b| b.loss_from == 1));
    }

    #[test]
    fn record_loss_covers_the_answer_and_context_is_cut_from_the_left() {
        let (s, cut) = record_sequence(&[1, 2, 3], &[7, 8], 0, 16).unwrap();
        assert_eq!(
            (s.ids.clone(), s.loss_from, cut),
            (vec![1, 2, 3, 7, 8], 3, false)
        );
        assert_eq!(s.num_targets(), 2);
        let (s, cut) = record_sequence(&[1, 2, 3, 4, 5], &[7, 8], 0, 4).unwrap();
        assert_eq!((s.ids, s.loss_from, cut), (vec![4, 5, 7, 8], 2, true));
        let (s, _) = record_sequence(&[], &[7], 9, 4).unwrap();
        assert_eq!((s.ids, s.loss_from), (vec![9, 7], 1));
        assert!(record_sequence(&[1], &[], 0, 4).is_none());
    }
}
