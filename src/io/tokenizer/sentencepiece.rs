//! Gemma's SentencePiece vocabulary (`tokenizer.ggml.model` = `llama`) rebuilt as the BPE
//! tokenizer transformers makes of it: spaces become `▁`, the text is split after each space,
//! pieces merge in the order the tokens appear in the file, and unknown characters fall back to
//! byte tokens. A GGUF stores no merges for it, so they are recovered from the vocabulary.

use super::guard;
use crate::{Error, Result};
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{DecoderWrapper, SplitDelimiterBehavior};

/// SentencePiece's word-boundary mark, which stands for a space inside tokens.
const SPACE: char = '\u{2581}';

/// The vocabulary as the tokenizer looks tokens up: Gemma files store tokens of two or more
/// spaces as real spaces, but the text reaches the model with every space already turned into
/// `▁`, so they are respelled (what transformers' GGUF converter does too).
pub fn respell(tokens: &[String]) -> Vec<String> {
    tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                SPACE.to_string().repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect()
}

/// The merges a SentencePiece BPE vocabulary implies: every way of cutting a token into two
/// tokens of the vocabulary, tokens earlier in the file first (Gemma's scores do not follow its
/// merge order; the file order does), and for one token the longer left piece first. A token
/// spelled twice counts once, at its last position (the id `vocab` gives it).
pub fn merges(tokens: &[String], vocab: &Vocab) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if vocab.get(token) != Some(&(id as u32)) {
            continue;
        }
        let cuts: Vec<usize> = token.char_indices().map(|(i, _)| i).skip(1).collect();
        for &cut in cuts.iter().rev() {
            let (l, r) = token.split_at(cut);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                out.push((l.to_string(), r.to_string()));
            }
        }
    }
    out
}

/// The tokenizer pipeline for Gemma's vocabulary (`tokens` already respelled), without added
/// tokens or a post-processor. `path` names the file in errors.
pub fn gemma(tokens: &[String], unk: Option<&str>, path: &Path) -> Result<tokenizers::Tokenizer> {
    // A HashMap keeps the last id of a duplicated token string, as transformers' dict does.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges(tokens, &vocab);
    let bpe = guard(path, || {
        let mut b = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(unk) = unk {
            b = b.unk_token(unk.to_string());
        }
        b.build()
    })?
    .map_err(|e| Error::format(path, format!("invalid SentencePiece vocabulary: {e}")))?;
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::format(path, format!("cannot build the {what}: {e}"))
    };
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let replace = |from: &str, to: &str| Replace::new(from, to);
    inner
        .with_normalizer(Some(
            replace(" ", &SPACE.to_string()).map_err(|e| fail("normalizer", &e))?,
        ))
        .map_err(|e| fail("normalizer", &e))?;
    // transformers' Gemma tokenizer splits on " " after the normalizer has turned every space
    // into `▁`: a no-op kept so that the pipeline (and a saved tokenizer.json) is the same.
    let split = Split::new(
        SplitPattern::String(" ".to_string()),
        SplitDelimiterBehavior::MergedWithPrevious,
        false,
    )
    .map_err(|e| fail("pre-tokenizer", &e))?;
    inner.with_pre_tokenizer(Some(split));
    let decoder = DecoderSequence::new(vec![
        DecoderWrapper::Replace(replace(&SPACE.to_string(), " ").map_err(|e| fail("decoder", &e))?),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ]);
    inner.with_decoder(Some(decoder));
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn respells_space_runs_only() {
        let t = respell(&strings(&["  ", "a b", " \n", "\n", "x"]));
        assert_eq!(t, strings(&["▁▁", "a b", "▁▁", "\n", "x"]));
    }

    #[test]
    fn merges_follow_file_order_then_longer_left_piece() {
        let tokens = strings(&["a", "b", "c", "ab", "abc", "bc"]);
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let m = merges(&tokens, &vocab);
        let pairs: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(
            pairs,
            vec![("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c")]
        );
    }

    #[test]
    fn encodes_with_spaces_as_marks_and_bytes_for_unknowns() -> Result<()> {
        let mut tokens = strings(&["<unk>", "▁", "h", "i", "hi", "▁hi"]);
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let t = gemma(&tokens, Some("<unk>"), Path::new("t.gguf"))?;
        let enc = t.encode_fast("hi hi é", false).unwrap();
        let toks: Vec<String> = enc
            .get_ids()
            .iter()
            .map(|&i| t.id_to_token(i).unwrap())
            .collect();
        assert_eq!(toks, strings(&["hi", "▁hi", "▁", "<0xC3>", "<0xA9>"]));
        let back = t.decode(enc.get_ids(), false).unwrap();
        assert_eq!(back, "hi hi é");
        Ok(())
    }
}
