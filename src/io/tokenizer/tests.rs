//! Tests of the tokenizer: HF files, chat templates, BOS handling, save and load.

use super::*;

fn tiny() -> Tokenizer {
    Tokenizer::tiny_byte_level()
}

#[test]
fn encode_decode_round_trip_with_specials() {
    let t = tiny();
    let hello = t.token_to_id("hello").unwrap();
    let ids = t.encode("<s>hello world</s>").unwrap();
    assert_eq!(ids[0], 0);
    assert_eq!(ids[1], hello);
    assert_eq!(*ids.last().unwrap(), 1);
    assert_eq!(t.decode(&ids).unwrap(), "<s>hello world</s>");
    assert!(!t.add_bos(), "a ByteLevel post-processor adds nothing");
    assert_eq!(
        t.special_tokens(),
        vec![("<s>".into(), 0), ("</s>".into(), 1)]
    );
    assert!(t
        .decode(&[9999])
        .unwrap_err()
        .to_string()
        .contains("tiny/tokenizer.json"));
}

#[test]
fn encode_start_adds_the_bos_only_when_the_model_wants_one() {
    let mut t = Tokenizer::tiny_byte_level();
    let plain = t.encode("hello").unwrap();
    assert_eq!(t.encode_start("hello").unwrap(), plain);
    t.add_bos = true;
    assert_eq!(t.encode_start("hello").unwrap(), [vec![0], plain].concat());
    // A text that starts with the BOS already does not get a second one.
    let written = t.encode("<s>hello").unwrap();
    assert_eq!(written[0], 0);
    assert_eq!(t.encode_start("<s>hello").unwrap(), written);
}

#[test]
fn chat_template_renders_like_transformers() {
    let t = tiny();
    let msgs = [
        ChatMessage::new("user", " hi "),
        ChatMessage::new("assistant", "yo"),
    ];
    assert_eq!(
        t.apply_chat_template(&msgs, true).unwrap(),
        "<s>user: hi</s>\n<s>assistant: yo</s>\n<s>assistant: "
    );
    assert_eq!(
        t.apply_chat_template(&msgs[..1], false).unwrap(),
        "<s>user: hi</s>\n"
    );
}

#[test]
fn chat_template_python_compat() {
    let msgs = [
        ChatMessage::new("system", "  Be brief.\n"),
        ChatMessage::new("user", "a,b,c"),
    ];
    let tpl = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}[{{ m['content'].strip() }}]{% else %}{{ m.content.split(',') | join('|') }} {{ m.get('missing', 'dflt') }} {{ m | tojson }}{% endif %}{% endfor %}{{ eos_token }}";
    let out = render_chat_template(tpl, &msgs, false, &[("bos_token", "<s>")]).unwrap();
    assert_eq!(
        out,
        r#"<s>[Be brief.]a|b|c dflt {"role": "user", "content": "a,b,c"}"#
    );
    let err = render_chat_template("{{ raise_exception('no system role') }}", &msgs, false, &[])
        .unwrap_err();
    assert!(format!("{err:#}").contains("no system role"));
}

#[test]
fn missing_chat_template_is_a_clear_error() {
    let mut t = tiny();
    t.chat_template = None;
    let err = t.apply_chat_template(&[], true).unwrap_err().to_string();
    assert!(
        err.contains("no chat template") && err.contains("tiny/tokenizer.json"),
        "{err}"
    );
}

#[test]
fn save_then_load_gives_the_same_tokenizer() {
    let t = tiny();
    let dir = tempfile::tempdir().unwrap();
    t.save(dir.path()).unwrap();
    let back = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(
        back.inner().to_string(false).unwrap(),
        t.inner().to_string(false).unwrap()
    );
    for text in ["", "hello world", "<s>hello</s> héllo\n\tworld"] {
        assert_eq!(back.encode(text).unwrap(), t.encode(text).unwrap());
    }
    assert_eq!(back.bos_id(), Some(0));
    assert_eq!(back.eos_id(), Some(1));
    assert_eq!(back.pad_id(), Some(1));
    assert_eq!(back.unk_id(), None);
    assert_eq!(back.add_bos(), t.add_bos());
    assert_eq!(back.chat_template(), t.chat_template());
    assert_eq!(back.special_tokens(), t.special_tokens());
    assert_eq!(back.vocab_size(), t.vocab_size());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["add_bos_token"], false);
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
}

#[test]
fn from_file_reads_added_token_dicts_and_template_lists() {
    let t = tiny();
    let dir = tempfile::tempdir().unwrap();
    t.save(dir.path()).unwrap();
    let config = serde_json::json!({
        "bos_token": {"content": "<s>", "special": true},
        "eos_token": "</s>",
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let back = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(back.bos_id(), Some(0));
    assert_eq!(back.chat_template(), Some("D"));
    assert_eq!(back.pad_id(), None);

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<nope>"}"#,
    )
    .unwrap();
    let err = Tokenizer::from_file(&dir.path().join("tokenizer.json"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("<nope>"),
        "{err}"
    );
}

#[test]
fn from_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tokenizer.json");
    let err = Tokenizer::from_file(&missing).unwrap_err().to_string();
    assert!(err.contains(&*missing.to_string_lossy()), "{err}");
    std::fs::write(&missing, "{ not json").unwrap();
    let err = Tokenizer::from_file(&missing).unwrap_err().to_string();
    assert!(err.contains(&*missing.to_string_lossy()), "{err}");
}
