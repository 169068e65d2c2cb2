//! The tokenizer: a thin wrapper around [`tokenizers::Tokenizer`] that can be built from a
//! Hugging Face `tokenizer.json` (plus its `tokenizer_config.json`) or from GGUF metadata, knows
//! the model's special tokens and chat template, and saves itself back as a Hugging Face
//! tokenizer directory.
//!
//! Two rules shape the API. [`Tokenizer::encode`] returns exactly the text's tokens (no BOS, no
//! post-processing), because offsite builds model inputs itself and must know every id it feeds
//! in; [`Tokenizer::add_bos`] says whether the model wants a BOS in front. [`Tokenizer::decode`]
//! keeps special tokens, so that `decode(encode(text)) == text` for byte-level tokenizers.

mod chat;
mod gguf;
mod sentencepiece;

pub use chat::{render_chat_template, ChatMessage};

use crate::io::atomic;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// A special token the model gives a role to (BOS, EOS, …): its text and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Special {
    content: String,
    id: u32,
}

/// A model's tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The file the tokenizer came from, named in errors.
    source: PathBuf,
    bos: Option<Special>,
    eos: Option<Special>,
    pad: Option<Special>,
    unk: Option<Special>,
    chat_template: Option<String>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    // The derived form would print the whole vocabulary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("unk", &self.unk)
            .field("add_bos", &self.add_bos)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// Runs the `tokenizers` crate on data read from `path`, turning a panic inside it into an error
/// naming the file. Its deserializers index unchecked in places (a BPE whose
/// `continuing_subword_prefix` is longer than a merged token panics, found by tests/fuzz.rs):
/// a damaged tokenizer.json must be refused, not crash the program.
fn guard<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T> {
    // Quiet while the library runs: the panic becomes our error message, not a second one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Error::format(
            path,
            format!("the tokenizer library failed on this file ({msg})"),
        )
    })
}

impl Tokenizer {
    /// From a Hugging Face `tokenizer.json`; reads `tokenizer_config.json` beside it when present
    /// (chat template, BOS/EOS/PAD/UNK token strings, `add_bos_token`), and `chat_template.jinja`
    /// when the config has no template.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let config_path = dir.join("tokenizer_config.json");
        let config = match std::fs::read(&config_path) {
            Ok(bytes) => {
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?;
                Some(value)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&config_path, e)),
        };
        // Newer transformers versions keep the template in its own file.
        let jinja = dir.join("chat_template.jinja");
        let jinja = match std::fs::read_to_string(&jinja) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&jinja, e)),
        };
        Self::from_parts(&bytes, config, jinja, path, &config_path)
    }

    /// From the contents of `tokenizer.json` and (optionally) `tokenizer_config.json` and
    /// `chat_template.jinja`; `path`/`config_path` name where they came from in errors.
    pub fn from_parts(
        tokenizer_json: &[u8],
        config: Option<serde_json::Value>,
        jinja: Option<String>,
        path: &Path,
        config_path: &Path,
    ) -> Result<Self> {
        let inner = guard(path, || tokenizers::Tokenizer::from_bytes(tokenizer_json))?
            .map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
        if config.as_ref().is_some_and(|c| !c.is_object()) {
            return Err(Error::format(config_path, "is not a JSON object"));
        }
        let config = config.unwrap_or_else(|| serde_json::json!({}));
        let config_path = config_path.to_path_buf();

        let role = |key: &str| -> Result<Option<Special>> {
            let Some(content) = config_token(&config, key, &config_path)? else {
                return Ok(None);
            };
            let id = inner.token_to_id(&content).ok_or_else(|| {
                Error::format(
                    &config_path,
                    format!(
                        "{key} `{content}` is not in the vocabulary of {}",
                        path.display()
                    ),
                )
            })?;
            Ok(Some(Special { content, id }))
        };
        let (bos, eos, pad, unk) = (
            role("bos_token")?,
            role("eos_token")?,
            role("pad_token")?,
            role("unk_token")?,
        );

        let mut chat_template = config_chat_template(&config, &config_path)?;
        if chat_template.is_none() {
            chat_template = jinja;
        }
        let add_bos = match config.get("add_bos_token") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(Error::format(
                    &config_path,
                    format!("`add_bos_token` should be true or false, not {other}"),
                ))
            }
        };
        Self::assemble(
            inner,
            path.to_path_buf(),
            [bos, eos, pad, unk],
            chat_template,
            add_bos,
        )
    }

    /// The common tail of the constructors. `add_bos` = None: whether the tokenizer's own
    /// post-processor puts the BOS in front.
    fn assemble(
        mut inner: tokenizers::Tokenizer,
        source: PathBuf,
        [bos, eos, pad, unk]: [Option<Special>; 4],
        chat_template: Option<String>,
        add_bos: Option<bool>,
    ) -> Result<Self> {
        // `encode` promises exactly the text's tokens: padding or truncation from a
        // tokenizer.json would silently change them.
        inner
            .with_truncation(None)
            .map_err(|e| Error::format(&source, e))?;
        inner.with_padding(None);
        let add_bos = match add_bos {
            Some(b) => b,
            None => {
                let with_specials = inner.encode_fast("", true).map_err(|e| {
                    Error::format(&source, format!("cannot run the post-processor: {e}"))
                })?;
                bos.as_ref()
                    .is_some_and(|b| with_specials.get_ids().first() == Some(&b.id))
            }
        };
        Ok(Tokenizer {
            inner,
            source,
            bos,
            eos,
            pad,
            unk,
            chat_template,
            add_bos,
        })
    }

    /// Exactly the text's tokens: no BOS or other post-processing is added. Special tokens
    /// written in the text (e.g. `<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::format(&self.source, format!("cannot tokenize text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The tokens a model reads for `text` at the start of a sequence: [`Tokenizer::encode`]
    /// with the BOS in front when the model wants one ([`Tokenizer::add_bos`]; Gemma does,
    /// SmolLM2 does not) and the text does not already start with it. Training, scoring and
    /// generation use this for every document, context and prompt, as transformers' tokenizer
    /// and lm-eval do.
    pub fn encode_start(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.encode(text)?;
        match self.bos.as_ref().filter(|_| self.add_bos) {
            Some(b) if ids.first() != Some(&b.id) => Ok([vec![b.id], ids].concat()),
            _ => Ok(ids),
        }
    }

    /// The text of `ids`, special tokens included, so that `decode(encode(text)) == text`.
    /// An id outside the vocabulary is an error rather than being dropped silently.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(Error::format(
                &self.source,
                format!(
                    "token id {bad} is outside the vocabulary ({} tokens)",
                    self.vocab_size()
                ),
            ));
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::format(&self.source, format!("cannot decode tokens: {e}")))
    }

    /// The token string of `id` as stored in the vocabulary (byte-level form, e.g. `Ġworld`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string in its vocabulary form.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Beginning-of-sequence token id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|s| s.id)
    }

    /// End-of-sequence token id (generation stops on it).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|s| s.id)
    }

    /// Padding token id.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad.as_ref().map(|s| s.id)
    }

    /// Unknown-token id.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk.as_ref().map(|s| s.id)
    }

    /// Beginning-of-sequence token string.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|s| s.content.as_str())
    }

    /// End-of-sequence token string.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|s| s.content.as_str())
    }

    /// Whether the model expects its BOS token in front of a prompt. [`Tokenizer::encode`] never
    /// adds it; whoever builds model inputs prepends [`Tokenizer::bos_id`] when this is true.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The special tokens (text and id), sorted by id: the added tokens marked special plus the
    /// BOS/EOS/PAD/UNK tokens.
    pub fn special_tokens(&self) -> Vec<(String, u32)> {
        let mut by_id: BTreeMap<u32, String> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (id, t.content))
            .collect();
        for s in [&self.bos, &self.eos, &self.pad, &self.unk]
            .into_iter()
            .flatten()
        {
            by_id.entry(s.id).or_insert_with(|| s.content.clone());
        }
        by_id.into_iter().map(|(id, t)| (t, id)).collect()
    }

    /// The model's Jinja chat template, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The file the tokenizer was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Renders the model's chat template with `messages`, `add_generation_prompt` and the
    /// special token strings (`bos_token`, `eos_token`, `pad_token`, `unk_token`), the way
    /// transformers' `apply_chat_template` does. The result is text: encode it with
    /// [`Tokenizer::encode`], which matches the special tokens it contains.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            Error::format(
                &self.source,
                "this tokenizer has no chat template (none in its GGUF metadata or tokenizer_config.json); give the prompt as plain text instead",
            )
        })?;
        let specials = [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("pad_token", &self.pad),
            ("unk_token", &self.unk),
        ];
        let specials: Vec<(&str, &str)> = specials
            .iter()
            .filter_map(|(k, s)| s.as_ref().map(|s| (*k, s.content.as_str())))
            .collect();
        render_chat_template(template, messages, add_generation_prompt, &specials)
            .map_err(|e| Error::format(&self.source, format!("chat template: {e:#}")))
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if needed), each
    /// atomically. [`Tokenizer::from_file`] on `dir/tokenizer.json` gives back the same
    /// tokenizer, and transformers' `AutoTokenizer` can load the directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json_path = dir.join("tokenizer.json");
        let (json, config) = self.to_parts(&json_path)?;
        atomic::write_bytes(&json_path, json.as_bytes())?;
        atomic::write_json(&dir.join("tokenizer_config.json"), &config)
    }

    /// The contents of `tokenizer.json` and `tokenizer_config.json` that [`Tokenizer::save`]
    /// writes (`path` names the destination in errors). [`Tokenizer::from_parts`] reads them back.
    pub fn to_parts(&self, path: &Path) -> Result<(String, serde_json::Value)> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| Error::format(path, format!("cannot serialize the tokenizer: {e}")))?;
        let token = |s: &Option<Special>| match s {
            Some(s) => serde_json::Value::String(s.content.clone()),
            None => serde_json::Value::Null,
        };
        let mut config = serde_json::json!({
            // The generic fast tokenizer takes tokenizer.json as it is; a model-specific class
            // could rebuild parts of it (e.g. the pre-tokenizer) from its own defaults.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token(&self.bos),
            "eos_token": token(&self.eos),
            "pad_token": token(&self.pad),
            "unk_token": token(&self.unk),
            "add_bos_token": self.add_bos,
            "add_eos_token": false,
            // Byte-level decoding is already exact; transformers' clean-up would alter text.
            "clean_up_tokenization_spaces": false,
        });
        if let (Some(template), Some(obj)) = (&self.chat_template, config.as_object_mut()) {
            obj.insert("chat_template".into(), template.clone().into());
        }
        Ok((json, config))
    }

    /// A tiny byte-level BPE (`<s>` = 0, `</s>` = 1, the 256 byte symbols, five merges: 263
    /// tokens) with a simple chat template, for tests and examples with tiny random models.
    pub fn tiny_byte_level() -> Tokenizer {
        let mut tokens: Vec<String> = vec!["<s>".into(), "</s>".into()];
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        tokens.extend(alphabet.iter().map(|c| c.to_string()));
        let merges: tokenizers::models::bpe::Merges = vec![
            ("h".into(), "e".into()),
            ("l".into(), "l".into()),
            ("he".into(), "ll".into()),
            ("hell".into(), "o".into()),
            ("Ġ".into(), "w".into()),
        ];
        for (a, b) in &merges {
            tokens.push(format!("{a}{b}"));
        }
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .expect("a valid tiny BPE");
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.with_post_processor(Some(ByteLevel::new(true, false, true)));
        inner
            .add_special_tokens([
                AddedToken::from("<s>", true),
                AddedToken::from("</s>", true),
            ])
            .expect("special tokens");
        let special = |content: &str, id| {
            Some(Special {
                content: content.into(),
                id,
            })
        };
        Tokenizer::assemble(
            inner,
            PathBuf::from("tiny/tokenizer.json"),
            [special("<s>", 0), special("</s>", 1), special("</s>", 1), None],
            Some("{% for m in messages %}<s>{{ m.role }}: {{ m['content'] | trim }}</s>\n{% endfor %}{% if add_generation_prompt %}<s>assistant: {% endif %}".into()),
            None,
        )
        .expect("a valid tiny tokenizer")
    }

    /// The wrapped `tokenizers` tokenizer (e.g. for `decode_stream` when streaming generation).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// A token entry of tokenizer_config.json: a string, `{"content": ...}` (an AddedToken) or null.
fn config_token(config: &serde_json::Value, key: &str, path: &Path) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::format(
                path,
                format!("`{key}` has no string `content`"),
            )),
        },
        Some(other) => Err(Error::format(
            path,
            format!("`{key}` should be a string, not {other}"),
        )),
    }
}

/// tokenizer_config.json's `chat_template`: a string, or a list of named templates of which
/// transformers uses the one named `default`.
fn config_chat_template(config: &serde_json::Value, path: &Path) -> Result<Option<String>> {
    let bad = || {
        Error::format(
            path,
            "`chat_template` should be a string or a list of {name, template}",
        )
    };
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let mut named = Vec::new();
            for entry in list {
                let name = entry.get("name").and_then(|v| v.as_str()).ok_or_else(bad)?;
                let template = entry
                    .get("template")
                    .and_then(|v| v.as_str())
                    .ok_or_else(bad)?;
                named.push((name, template));
            }
            let chosen = named
                .iter()
                .find(|(name, _)| *name == "default")
                .or(named.first());
            Ok(chosen.map(|(_, t)| t.to_string()))
        }
        Some(_) => Err(bad()),
    }
}

#[cfg(test)]
mod tests;
