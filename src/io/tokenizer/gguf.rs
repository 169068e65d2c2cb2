//! The tokenizer rebuilt from GGUF metadata (`tokenizer.ggml.*`): byte-level BPE with the
//! pre-tokenization llama.cpp names in `tokenizer.ggml.pre`, the special tokens and the chat
//! template.

use super::{guard, Special, Tokenizer};
use crate::{Error, Result};
use candle_core::quantized::gguf_file;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// The GPT-2 style pre-tokenizations offsite can rebuild from a GGUF's `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizerKind {
    /// GPT-2's regex inside the ByteLevel pre-tokenizer (GPT-2, SmolLM).
    Gpt2,
    /// Llama 3's split regex (digits in groups of up to three) before a regex-less ByteLevel.
    Llama3,
    /// Qwen2's split regex (single digits) before a regex-less ByteLevel, after NFC.
    Qwen2,
}

/// The `tokenizer.ggml.pre` values offsite accepts, for error messages.
const SUPPORTED_PRE: &str = "gpt2, smollm, llama-bpe, llama3, smaug-bpe, qwen2";

impl PreTokenizerKind {
    fn from_gguf(pre: &str) -> Option<Self> {
        match pre {
            // llama.cpp uses GPT-2's regex for `smollm`, and transformers (which produced the
            // reference ids) always builds the plain GPT-2 ByteLevel pre-tokenizer.
            "gpt2" | "default" | "smollm" => Some(Self::Gpt2),
            "llama-bpe" | "llama3" | "smaug-bpe" => Some(Self::Llama3),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }
}

// The split regexes of the Llama 3 and Qwen2 `tokenizer.json` files.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Tokenizer {
    /// From GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`). `path` is only used
    /// in error messages. Only byte-level BPE (`tokenizer.ggml.model` = `gpt2`) is supported.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let md = &content.metadata;
        let model = gguf_str(md, "tokenizer.ggml.model", path)?.ok_or_else(|| {
            Error::format(
                path,
                "no tokenizer in this GGUF (no `tokenizer.ggml.model`)",
            )
        })?;
        let arch = gguf_str(md, "general.architecture", path)?.unwrap_or("");
        let kind = match model {
            "gpt2" => {
                let pre_name = gguf_str(md, "tokenizer.ggml.pre", path)?.unwrap_or("gpt2");
                Kind::ByteLevel(PreTokenizerKind::from_gguf(pre_name).ok_or_else(|| {
                    Error::format(
                        path,
                        format!(
                            "unsupported pre-tokenizer `{pre_name}` (tokenizer.ggml.pre; supported: {SUPPORTED_PRE})"
                        ),
                    )
                })?)
            }
            "llama" if arch.starts_with("gemma") => Kind::Gemma,
            _ => {
                return Err(Error::format(
                    path,
                    format!(
                        "unsupported tokenizer model `{model}` (tokenizer.ggml.model) of a `{arch}` model; offsite supports byte-level BPE (`gpt2`) and Gemma's SentencePiece (`llama` in a Gemma file)"
                    ),
                ))
            }
        };
        let tokens = gguf_str_array(md, "tokenizer.ggml.tokens", path)?
            .ok_or_else(|| Error::format(path, "missing `tokenizer.ggml.tokens`"))?;
        let token_types = match md.get("tokenizer.ggml.token_type") {
            None => None,
            Some(v) => {
                let arr = v.to_vec().map_err(|_| {
                    Error::format(path, "`tokenizer.ggml.token_type` is not an array")
                })?;
                if arr.len() != tokens.len() {
                    return Err(Error::format(
                        path,
                        format!(
                            "`tokenizer.ggml.token_type` has {} entries but there are {} tokens",
                            arr.len(),
                            tokens.len()
                        ),
                    ));
                }
                let types = arr
                    .iter()
                    .map(|v| gguf_int(v, "tokenizer.ggml.token_type", path))
                    .collect::<Result<Vec<_>>>()?;
                Some(types)
            }
        };
        let add_prefix_space =
            gguf_bool(md, "tokenizer.ggml.add_space_prefix", path)?.unwrap_or(false);
        let add_bos = gguf_bool(md, "tokenizer.ggml.add_bos_token", path)?.unwrap_or(false);
        let special_id = |keys: &[&str]| -> Result<Option<Special>> {
            for key in keys {
                let Some(v) = md.get(*key) else { continue };
                let id = gguf_int(v, key, path)?;
                // llama.cpp writes -1 for "no such token".
                if id < 0 {
                    return Ok(None);
                }
                let content = usize::try_from(id)
                    .ok()
                    .and_then(|i| tokens.get(i))
                    .ok_or_else(|| {
                        Error::format(
                            path,
                            format!("`{key}` = {id} but there are only {} tokens", tokens.len()),
                        )
                    })?;
                return Ok(Some(Special {
                    content: content.clone(),
                    id: id as u32,
                }));
            }
            Ok(None)
        };
        // The spec's key names first; some writers use the shorter HF-style ones.
        let bos = special_id(&["tokenizer.ggml.bos_token_id"])?;
        let eos = special_id(&["tokenizer.ggml.eos_token_id"])?;
        let pad = special_id(&[
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.pad_token_id",
        ])?;
        let unk = special_id(&[
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.unk_token_id",
        ])?;
        let sep = special_id(&[
            "tokenizer.ggml.seperator_token_id",
            "tokenizer.ggml.separator_token_id",
        ])?;
        let chat_template = gguf_str(md, "tokenizer.chat_template", path)?.map(str::to_string);

        // The model's own pipeline, and the vocabulary as the model spells it.
        let (mut inner, lookup) = match kind {
            Kind::ByteLevel(pre) => (
                byte_level_bpe(md, &tokens, pre, add_prefix_space, path)?,
                None,
            ),
            Kind::Gemma => {
                let respelled = super::sentencepiece::respell(&tokens);
                let unk_text = unk.as_ref().map(|u| u.content.as_str());
                let inner = super::sentencepiece::gemma(&respelled, unk_text, path)?;
                let lookup: HashSet<String> = respelled.into_iter().collect();
                (inner, Some(lookup))
            }
        };
        // What transformers' GGUF converter writes: a BOS template when the model wants one, so a
        // saved directory behaves the same under AutoTokenizer; offsite's own encode skips it.
        let post: PostProcessorWrapper = match (&bos, add_bos) {
            (Some(b), true) => TemplateProcessing::builder()
                .try_single(format!("{}:0 $A:0", b.content))
                .and_then(|t| t.try_pair(format!("{}:0 $A:0 $B:1", b.content)))
                .map_err(|e| Error::format(path, format!("cannot build the BOS template: {e}")))?
                .special_tokens(vec![(b.content.clone(), b.id)])
                .build()
                .map_err(|e| Error::format(path, format!("cannot build the BOS template: {e}")))?
                .into(),
            _ => ByteLevel::new(true, false, true).into(),
        };
        // A SentencePiece tokenizer without a BOS has no post-processor at all.
        if add_bos || matches!(kind, Kind::ByteLevel(_)) {
            inner.with_post_processor(Some(post));
        }

        // Control tokens (type 3) are special tokens matched in raw text; user-defined ones
        // (type 4) are matched too but are ordinary text. Tokens with a role are special even
        // when the GGUF forgot to type them.
        let mut specials = Vec::new();
        let mut user_defined = Vec::new();
        if let Some(types) = &token_types {
            for (token, ty) in tokens.iter().zip(types) {
                match ty {
                    3 => specials.push(AddedToken::from(token.clone(), true)),
                    // transformers adds a user-defined token only when the vocabulary has it as
                    // spelled (Gemma's space runs are respelled, so they are not added).
                    4 if lookup.as_ref().is_none_or(|l| l.contains(token)) => {
                        user_defined.push(AddedToken::from(token.clone(), false).normalized(false))
                    }
                    _ => {}
                }
            }
        }
        for s in [&bos, &eos, &pad, &unk, &sep].into_iter().flatten() {
            specials.push(AddedToken::from(s.content.clone(), true));
        }
        inner
            .add_special_tokens(specials)
            .map_err(|e| Error::format(path, format!("cannot add the special tokens: {e}")))?;
        inner
            .add_tokens(user_defined)
            .map_err(|e| Error::format(path, format!("cannot add the user-defined tokens: {e}")))?;

        Self::assemble(
            inner,
            path.to_path_buf(),
            [bos, eos, pad, unk],
            chat_template,
            Some(add_bos),
        )
    }
}

/// How the vocabulary is tokenized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Byte-level BPE (`gpt2`) with the named pre-tokenization.
    ByteLevel(PreTokenizerKind),
    /// Gemma's SentencePiece BPE (`llama` in a Gemma file).
    Gemma,
}

/// The byte-level BPE pipeline from the file's tokens and merges, without added tokens or a
/// post-processor.
fn byte_level_bpe(
    md: &HashMap<String, gguf_file::Value>,
    tokens: &[String],
    pre: PreTokenizerKind,
    add_prefix_space: bool,
    path: &Path,
) -> Result<tokenizers::Tokenizer> {
    let merges = gguf_str_array(md, "tokenizer.ggml.merges", path)?
        .ok_or_else(|| Error::format(path, "missing `tokenizer.ggml.merges`"))?
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(Error::format(
                path,
                format!(
                    "tokenizer.ggml.merges[{i}] = `{m}` is not two tokens separated by a space"
                ),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    // A HashMap keeps the last id of a duplicated token string, as transformers' dict does.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = guard(path, || {
        BPE::builder()
            .vocab_and_merges(vocab, merges)
            // llama.cpp looks a whole pre-token up before merging for Llama 3 (as its
            // tokenizer.json's `ignore_merges` does); GPT-2 and Qwen2 always merge.
            .ignore_merges(pre == PreTokenizerKind::Llama3)
            .build()
    })?
    .map_err(|e| Error::format(path, format!("invalid BPE vocabulary or merges: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let byte_level = |prefix: bool, trim: bool, regex: bool| ByteLevel::new(prefix, trim, regex);
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(Into::into)
        .map_err(|e| Error::format(path, format!("cannot build the pre-tokenizer: {e}")))
    };
    match pre {
        PreTokenizerKind::Gpt2 => {
            inner.with_pre_tokenizer(Some(byte_level(add_prefix_space, true, true)));
        }
        PreTokenizerKind::Llama3 => {
            let seq = Sequence::new(vec![
                split(LLAMA3_SPLIT)?,
                byte_level(false, true, false).into(),
            ]);
            inner.with_pre_tokenizer(Some(seq));
        }
        PreTokenizerKind::Qwen2 => {
            inner
                .with_normalizer(Some(NFC))
                .map_err(|e| Error::format(path, format!("cannot build the normalizer: {e}")))?;
            let seq = Sequence::new(vec![
                split(QWEN2_SPLIT)?,
                byte_level(false, false, false).into(),
            ]);
            inner.with_pre_tokenizer(Some(seq));
        }
    }
    inner.with_decoder(Some(byte_level(true, true, true)));
    Ok(inner)
}

fn gguf_str<'a>(
    md: &'a HashMap<String, gguf_file::Value>,
    key: &str,
    path: &Path,
) -> Result<Option<&'a str>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .to_string()
            .map(|s| Some(s.as_str()))
            .map_err(|_| Error::format(path, format!("`{key}` is not a string"))),
    }
}

fn gguf_bool(
    md: &HashMap<String, gguf_file::Value>,
    key: &str,
    path: &Path,
) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .to_bool()
            .map(Some)
            .map_err(|_| Error::format(path, format!("`{key}` is not a boolean"))),
    }
}

fn gguf_str_array(
    md: &HashMap<String, gguf_file::Value>,
    key: &str,
    path: &Path,
) -> Result<Option<Vec<String>>> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let arr = v
        .to_vec()
        .map_err(|_| Error::format(path, format!("`{key}` is not an array")))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.to_string()
                .cloned()
                .map_err(|_| Error::format(path, format!("`{key}`[{i}] is not a string")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Any GGUF integer as i64 (writers differ in the integer type they use for ids and types).
fn gguf_int(v: &gguf_file::Value, key: &str, path: &Path) -> Result<i64> {
    use gguf_file::Value as V;
    let out = match v {
        V::U8(x) => i64::from(*x),
        V::I8(x) => i64::from(*x),
        V::U16(x) => i64::from(*x),
        V::I16(x) => i64::from(*x),
        V::U32(x) => i64::from(*x),
        V::I32(x) => i64::from(*x),
        V::U64(x) => i64::try_from(*x).unwrap_or(i64::MAX),
        V::I64(x) => *x,
        _ => return Err(Error::format(path, format!("`{key}` is not an integer"))),
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tokenizer::ChatMessage;

    fn gguf_content(entries: Vec<(&str, gguf_file::Value)>) -> gguf_file::Content {
        gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata: entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn strings(items: &[&str]) -> gguf_file::Value {
        gguf_file::Value::Array(
            items
                .iter()
                .map(|s| gguf_file::Value::String(s.to_string()))
                .collect(),
        )
    }

    #[test]
    fn from_gguf_builds_byte_level_bpe() {
        let mut toks: Vec<String> = vec!["<|endoftext|>".into()];
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        toks.extend(alphabet.iter().map(|c| c.to_string()));
        toks.push("Ġw".into());
        let tok_refs: Vec<&str> = toks.iter().map(String::as_str).collect();
        let mut types = vec![gguf_file::Value::I32(1); toks.len()];
        types[0] = gguf_file::Value::I32(3);
        let entries = vec![
            (
                "tokenizer.ggml.model",
                gguf_file::Value::String("gpt2".into()),
            ),
            (
                "tokenizer.ggml.pre",
                gguf_file::Value::String("smollm".into()),
            ),
            ("tokenizer.ggml.tokens", strings(&tok_refs)),
            ("tokenizer.ggml.merges", strings(&["Ġ w"])),
            ("tokenizer.ggml.token_type", gguf_file::Value::Array(types)),
            ("tokenizer.ggml.eos_token_id", gguf_file::Value::U32(0)),
            (
                "tokenizer.chat_template",
                gguf_file::Value::String("{{ messages[0].content }}".into()),
            ),
        ];
        let content = gguf_content(entries.clone());
        let t = Tokenizer::from_gguf(&content, Path::new("m.gguf")).unwrap();
        let ids = t.encode("w w<|endoftext|>").unwrap();
        let gw = t.token_to_id("Ġw").unwrap();
        // No prefix space: the first `w` stays bare.
        assert_eq!(ids, vec![t.token_to_id("w").unwrap(), gw, 0]);
        assert_eq!(t.decode(&ids).unwrap(), "w w<|endoftext|>");
        assert_eq!(t.eos_id(), Some(0));
        assert_eq!(t.bos_id(), None);
        assert_eq!(t.special_tokens(), vec![("<|endoftext|>".into(), 0)]);
        assert_eq!(
            t.apply_chat_template(&[ChatMessage::new("user", "x")], false)
                .unwrap(),
            "x"
        );

        let broken = |key: &str, value: gguf_file::Value| {
            let mut bad = gguf_content(entries.clone());
            bad.metadata.insert(key.into(), value);
            Tokenizer::from_gguf(&bad, Path::new("m.gguf"))
                .unwrap_err()
                .to_string()
        };
        let err = broken(
            "tokenizer.ggml.model",
            gguf_file::Value::String("llama".into()),
        );
        assert!(err.contains("m.gguf") && err.contains("llama"), "{err}");
        let err = broken(
            "tokenizer.ggml.pre",
            gguf_file::Value::String("weird".into()),
        );
        assert!(err.contains("m.gguf") && err.contains("weird"), "{err}");
        let err = broken("tokenizer.ggml.bos_token_id", gguf_file::Value::U32(99999));
        assert!(err.contains("m.gguf") && err.contains("99999"), "{err}");
    }

    #[test]
    fn split_regexes_group_digits_as_their_models_do() {
        use tokenizers::tokenizer::{
            OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
        };
        let pieces = |regex: &str| -> Vec<String> {
            let split = Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .unwrap();
            let mut s = PreTokenizedString::from("I'LL pay 12345!");
            split.pre_tokenize(&mut s).unwrap();
            s.get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(p, _, _)| p.to_string())
                .collect()
        };
        assert_eq!(
            pieces(LLAMA3_SPLIT),
            ["I", "'LL", " pay", " ", "123", "45", "!"]
        );
        assert_eq!(
            pieces(QWEN2_SPLIT),
            ["I", "'LL", " pay", " ", "1", "2", "3", "4", "5", "!"]
        );
    }
}
