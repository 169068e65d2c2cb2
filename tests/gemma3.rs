//! The real Gemma 3 270M GGUF (Q4_K_M, `offsite fetch gemma3-270m`) against the
//! PyTorch/transformers reference vectors in `tests/reference/gemma3-270m` (made by its
//! `make_reference.py` from the same file): configuration, dequantized weights (norms stored as
//! `1 + w`), the SentencePiece tokenizer, every hidden state, logits, cross-entropy — also past
//! the 512-token sliding window — and greedy decoding. Run in release mode.

use candle_core::{Device, Tensor};
use offsite::eval::score::score_ids;
use offsite::io::checkpoint::{self, Checkpoint};
use offsite::model::generate::{generate, Sampling};
use offsite::model::{Family, Model};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

mod common;
use common::max_abs_diff;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/gemma3-270m")
}

fn read_json(name: &str) -> Value {
    let path = reference_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| read_json("reference.json"))
}

fn reference_tensors() -> &'static HashMap<String, Tensor> {
    static R: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    R.get_or_init(|| {
        candle_core::safetensors::load(reference_dir().join("reference.safetensors"), &Device::Cpu)
            .unwrap()
    })
}

fn checkpoint() -> &'static Checkpoint {
    static C: OnceLock<Checkpoint> = OnceLock::new();
    C.get_or_init(|| {
        let path =
            offsite::io::fetch::resolve_model("gemma3-270m").expect("Gemma 3 270M available");
        checkpoint::load(&path, &Device::Cpu).expect("GGUF loads")
    })
}

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| checkpoint().model().expect("model builds"))
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn prompt_ids(i: usize) -> Vec<u32> {
    ids_of(&reference()["prompts"][i]["ids"])
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

#[test]
fn config_matches_transformers() {
    let c = &checkpoint().config;
    let r = &reference()["model"]["config"];
    assert_eq!(c.family, Family::Gemma3);
    let n = |k: &str| r[k].as_u64().unwrap() as usize;
    assert_eq!(c.num_layers, n("num_hidden_layers"));
    assert_eq!(c.hidden_size, n("hidden_size"));
    assert_eq!(c.intermediate_size, n("intermediate_size"));
    assert_eq!(c.num_heads, n("num_attention_heads"));
    assert_eq!(c.num_kv_heads, n("num_key_value_heads"));
    assert_eq!(c.head_dim, n("head_dim"));
    assert_eq!(c.vocab_size, n("vocab_size"));
    let rope = &r["rope_parameters"];
    assert_eq!(
        c.rope_theta,
        rope["full_attention"]["rope_theta"].as_f64().unwrap()
    );
    assert_eq!(
        c.local_rope_theta,
        rope["sliding_attention"]["rope_theta"].as_f64()
    );
    assert!((c.rms_norm_eps - r["rms_norm_eps"].as_f64().unwrap()).abs() < 1e-15);
    assert!(c.tie_word_embeddings);
    // The layer pattern and window the family reads from the config the GGUF stands for.
    let hf = c.to_hf_json();
    assert_eq!(hf["sliding_window"], r["sliding_window"]);
    assert_eq!(hf["query_pre_attn_scalar"], r["query_pre_attn_scalar"]);
}

#[test]
fn dequantized_weights_match_checksums() {
    // 18 layers × 13 tensors, the embedding and the final norm; the norms read back as
    // transformers has them (the file's `1 + w` minus one).
    let sums = read_json("weight_checksums.json");
    common::assert_weights_match_checksums(&checkpoint().tensors, &sums, 236);
}

#[test]
fn tokenizer_matches_the_reference_cases() {
    let tok = checkpoint().tokenizer().unwrap();
    assert!(tok.add_bos(), "Gemma wants a BOS in front");
    assert_eq!(tok.bos_id(), Some(2));
    assert_eq!(tok.eos_id(), Some(1));
    let cases = read_json("tokenizer_cases.json");
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        // transformers' ids start with the BOS its post-processor adds; `encode` gives exactly
        // the text's tokens.
        let want = ids_of(&case["ids"]);
        assert_eq!(want[0], 2);
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want[1..], "ids of {text:?}");
        let tokens: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        let want_tokens: Vec<String> = case["tokens"].as_array().unwrap()[1..]
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(tokens, want_tokens, "tokens of {text:?}");
        let decoded = case["decoded"].as_str().unwrap();
        assert_eq!(
            tok.decode(&ids).unwrap(),
            decoded.strip_prefix("<bos>").unwrap(),
            "decode of {text:?}"
        );
    }
}

#[test]
fn tokenizer_gives_the_prompt_ids() {
    let tok = checkpoint().tokenizer().unwrap();
    for (i, p) in reference()["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let text = p["text"].as_str().unwrap();
        // What training, scoring and generation feed the model: the BOS, then the text.
        assert_eq!(tok.encode_start(text).unwrap(), prompt_ids(i), "prompt {i}");
    }
}

#[test]
fn hidden_states_and_logits_match_prompt_0() {
    let r = reference_tensors();
    let ids = ids_tensor(&prompt_ids(0));
    let hs = model().hidden_states(&ids).unwrap();
    assert_eq!(hs.len(), 19);
    let layer_out = &r["p0.layer_out"];
    for (i, h) in hs[1..].iter().enumerate() {
        let want = layer_out.get(i).unwrap();
        // Relative to the stream's size: Gemma's residual stream grows to the hundreds.
        let scale = common::max_abs(&want);
        let d = max_abs_diff(&h.squeeze(0).unwrap(), &want);
        assert!(
            d <= 1e-3 * scale.max(1.0),
            "layer {i}: differs by {d} (largest magnitude {scale})"
        );
    }
    let normed = model().final_norm(&hs[18]).unwrap().squeeze(0).unwrap();
    let d = max_abs_diff(&normed, &r["p0.final_norm"]);
    assert!(d <= 1e-3, "final norm differs by {d}");
    let logits = model().forward(&ids).unwrap().squeeze(0).unwrap();
    let last = logits.get(prompt_ids(0).len() - 1).unwrap();
    let d = max_abs_diff(&last, &r["p0.logits_last"]);
    assert!(d <= 1e-2, "last logits differ by {d}");
}

#[test]
fn cross_entropy_and_top_tokens_match_every_prompt() {
    for (i, p) in reference()["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let ids = prompt_ids(i);
        let ce = score_ids(model(), &ids).unwrap().mean_ce;
        let want = p["mean_next_token_ce"].as_f64().unwrap();
        eprintln!("prompt {i}: mean CE {ce:.6} vs reference {want:.6}");
        // The bar: within 1e-3 of the reference on the same dequantized weights. Prompt
        // 3 (591 tokens) runs past the local layers' 512-token window.
        assert!(
            (ce - want).abs() <= 1e-3,
            "prompt {i} ({} tokens): mean CE {ce} vs {want}",
            ids.len()
        );
        let logits = model()
            .forward(&ids_tensor(&ids))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let last: Vec<f32> = logits.get(ids.len() - 1).unwrap().to_vec1().unwrap();
        let want_top = ids_of(&p["last_logits_top10"]["ids"]);
        let want_values = p["last_logits_top10"]["values"].as_array().unwrap();
        for (&id, v) in want_top.iter().zip(want_values) {
            let d = (last[id as usize] as f64 - v.as_f64().unwrap()).abs();
            assert!(d <= 1e-2, "prompt {i}: logit of {id} differs by {d}");
        }
        let mut order: Vec<usize> = (0..last.len()).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        assert_eq!(order[0], want_top[0] as usize, "prompt {i}: top-1 token");
    }
}

#[test]
fn greedy_continuations_match() {
    for i in 0..3 {
        let want = ids_of(&reference()["prompts"][i]["greedy_continuation_ids"]);
        let got = generate(model(), &prompt_ids(i), want.len(), &[], &Sampling::Greedy).unwrap();
        assert_eq!(got, want, "prompt {i}");
    }
}

#[test]
fn hf_directory_round_trip_gives_the_same_model_and_tokenizer() {
    let back = common::assert_hf_round_trip(checkpoint(), model(), &ids_tensor(&prompt_ids(0)));
    let tok = back.tokenizer().unwrap();
    assert!(tok.add_bos());
    for case in read_json("tokenizer_cases.json")["cases"]
        .as_array()
        .unwrap()
    {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text).unwrap(),
            ids_of(&case["ids"])[1..],
            "{text:?}"
        );
    }
}
