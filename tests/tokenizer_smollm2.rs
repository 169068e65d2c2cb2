//! The SmolLM2 tokenizer rebuilt from GGUF metadata against the reference ids, token strings and
//! decodes that HF transformers/tokenizers produced (`shared/reference/smollm2`), including the
//! chat template, and the save → from_file round trip on the real vocabulary.

use candle_core::quantized::gguf_file;
use offsite::io::fetch::resolve_model;
use offsite::io::tokenizer::{ChatMessage, Tokenizer};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    tokens: Vec<String>,
    decoded: String,
}

#[derive(Deserialize)]
struct ChatExample {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
    chat_template_example: ChatExample,
    tokenizer: serde_json::Value,
}

fn reference() -> Reference {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/smollm2/tokenizer_cases.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn gguf_tokenizer() -> Tokenizer {
    let path = resolve_model("smollm2").unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    Tokenizer::from_gguf(&content, &path).unwrap()
}

fn check_cases(tok: &Tokenizer, reference: &Reference) {
    for case in &reference.cases {
        let ids = tok.encode(&case.text).unwrap();
        assert_eq!(ids, case.ids, "ids of {:?}", case.text);
        let tokens: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        assert_eq!(tokens, case.tokens, "tokens of {:?}", case.text);
        assert_eq!(
            tok.decode(&ids).unwrap(),
            case.decoded,
            "decode of {:?}",
            case.text
        );
        assert_eq!(case.decoded, case.text, "the reference round-trips exactly");
    }
}

#[test]
fn gguf_tokenizer_matches_reference() {
    let reference = reference();
    assert_eq!(reference.cases.len(), 27);
    let tok = gguf_tokenizer();
    check_cases(&tok, &reference);

    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.pad_id(), Some(2));
    assert_eq!(tok.unk_id(), Some(0));
    assert_eq!(tok.id_to_token(1).as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.id_to_token(2).as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.id_to_token(0).as_deref(), Some("<|endoftext|>"));
    assert_eq!(tok.bos_token(), reference.tokenizer["bos_token"].as_str());
    assert_eq!(tok.eos_token(), reference.tokenizer["eos_token"].as_str());
    assert!(!tok.add_bos());
    let specials = tok.special_tokens();
    assert_eq!(specials.len(), 17);
    assert!(specials
        .iter()
        .enumerate()
        .all(|(i, (_, id))| *id == i as u32));
    assert_eq!(specials[16].0, "<empty_output>");

    assert_eq!(
        tok.chat_template(),
        reference.tokenizer["chat_template"].as_str()
    );
    let chat = &reference.chat_template_example;
    let rendered = tok
        .apply_chat_template(&chat.messages, chat.add_generation_prompt)
        .unwrap();
    assert_eq!(rendered, chat.rendered);
    assert_eq!(tok.encode(&rendered).unwrap(), chat.ids);
}

#[test]
fn saved_tokenizer_loads_back_identically() {
    let reference = reference();
    let tok = gguf_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path()).unwrap();
    let back = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    check_cases(&back, &reference);
    assert_eq!(
        back.inner().to_string(false).unwrap(),
        tok.inner().to_string(false).unwrap()
    );
    assert_eq!(back.vocab_size(), tok.vocab_size());
    assert_eq!(
        (back.bos_id(), back.eos_id(), back.pad_id(), back.unk_id()),
        (Some(1), Some(2), Some(2), Some(0))
    );
    assert_eq!(back.add_bos(), tok.add_bos());
    assert_eq!(back.special_tokens(), tok.special_tokens());
    assert_eq!(back.chat_template(), tok.chat_template());
    let chat = &reference.chat_template_example;
    let rendered = back
        .apply_chat_template(&chat.messages, chat.add_generation_prompt)
        .unwrap();
    assert_eq!(back.encode(&rendered).unwrap(), chat.ids);
}
