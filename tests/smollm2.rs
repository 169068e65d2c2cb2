//! The real SmolLM2-135M-Instruct GGUF against the PyTorch/transformers reference vectors in
//! `../shared/reference/smollm2` (dequantization, every hidden state, logits, cross-entropy,
//! greedy decoding) and the Hugging Face directory round trip. Run in release mode.

use candle_core::{Device, Tensor};
use offsite::eval::score::score_ids;
use offsite::io::checkpoint::{self, Checkpoint};
use offsite::model::generate::{generate, Sampling};
use offsite::model::Model;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

mod common;
use common::max_abs_diff;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/smollm2")
}

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        let text = std::fs::read_to_string(reference_dir().join("reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
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
        let path = offsite::io::fetch::resolve_model("smollm2").expect("demo model available");
        checkpoint::load(&path, &Device::Cpu).expect("GGUF loads")
    })
}

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| checkpoint().model().expect("model builds"))
}

fn prompt_ids(i: usize) -> Vec<u32> {
    reference()["prompts"][i]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// The residual stream within 1e-3 absolute, except SmolLM2's "massive activation" (channel 507
/// at position 0 reaches 22,552 from layer 11 on): there one f32 ulp is 0.0039, so no f32
/// implementation with another summation order can be within 1e-3. Entries of magnitude ≥ 1000
/// are held to 2e-6 of the stream's largest magnitude (`scale`) instead: ≈ 10 ulps at 22,552,
/// an error that layers 28–29 carry along when they cancel the channel down to 2,500.
fn assert_residual_close(ours: &Tensor, reference: &Tensor, layer: usize, scale: f64) {
    let a: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = reference.flatten_all().unwrap().to_vec1().unwrap();
    let mut massive = 0;
    for (k, (&x, &y)) in a.iter().zip(&b).enumerate() {
        let d = (x as f64 - y as f64).abs();
        let tol = if y.abs() >= 1000.0 {
            massive += 1;
            2e-6 * scale
        } else {
            1e-3
        };
        assert!(
            d <= tol,
            "layer {layer}: position {} channel {}: {x} vs {y} (diff {d:e}, tolerance {tol:e})",
            k / 576,
            k % 576
        );
    }
    assert!(
        massive <= 8,
        "layer {layer}: {massive} entries of magnitude >= 1000"
    );
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
    assert_eq!(
        c.num_layers as u64,
        r["num_hidden_layers"].as_u64().unwrap()
    );
    assert_eq!(c.hidden_size as u64, r["hidden_size"].as_u64().unwrap());
    assert_eq!(
        c.intermediate_size as u64,
        r["intermediate_size"].as_u64().unwrap()
    );
    assert_eq!(
        c.num_heads as u64,
        r["num_attention_heads"].as_u64().unwrap()
    );
    assert_eq!(
        c.num_kv_heads as u64,
        r["num_key_value_heads"].as_u64().unwrap()
    );
    assert_eq!(c.vocab_size as u64, r["vocab_size"].as_u64().unwrap());
    assert_eq!(c.rope_theta, r["rope_theta"].as_f64().unwrap_or(100000.0));
    assert!((c.rms_norm_eps - r["rms_norm_eps"].as_f64().unwrap()).abs() < 1e-12);
    assert!(c.tie_word_embeddings);
    assert_eq!(
        model().num_parameters() as u64,
        reference()["model"]["num_parameters_unique"]
            .as_u64()
            .unwrap()
    );
}

#[test]
fn dequantized_weights_match_checksums() {
    let text = std::fs::read_to_string(reference_dir().join("weight_checksums.json")).unwrap();
    let sums: Value = serde_json::from_str(&text).unwrap();
    common::assert_weights_match_checksums(&checkpoint().tensors, &sums, 272);
}

#[test]
fn hidden_states_and_logits_match_prompt_0() {
    let r = reference_tensors();
    let ids = ids_tensor(&prompt_ids(0));
    let hs = model().hidden_states(&ids).unwrap();
    assert_eq!(hs.len(), 31);
    let d = max_abs_diff(&hs[0].squeeze(0).unwrap(), &r["p0.embed"]);
    assert!(d <= 1e-3, "embedding output differs by {d}");
    let layer_out = &r["p0.layer_out"];
    let scale = layer_out
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let scale = scale.to_scalar::<f32>().unwrap() as f64;
    for (i, h) in hs[1..].iter().enumerate() {
        assert_residual_close(&h.squeeze(0).unwrap(), &layer_out.get(i).unwrap(), i, scale);
    }
    let normed = model().final_norm(&hs[30]).unwrap().squeeze(0).unwrap();
    let d = max_abs_diff(&normed, &r["p0.final_norm"]);
    assert!(d <= 1e-3, "final norm differs by {d}");
    let logits = model().forward(&ids).unwrap().squeeze(0).unwrap();
    let d = max_abs_diff(&logits, &r["p0.logits_all"]);
    assert!(d <= 1e-3, "logits differ by {d}");
}

#[test]
fn last_logits_and_cross_entropy_match_all_prompts() {
    for i in 0..3 {
        let ids = prompt_ids(i);
        let logits = model()
            .forward(&ids_tensor(&ids))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let last = logits.get(ids.len() - 1).unwrap();
        let d = max_abs_diff(&last, &reference_tensors()[&format!("p{i}.logits_last")]);
        assert!(d <= 1e-3, "prompt {i}: last logits differ by {d}");
        let ce = score_ids(model(), &ids).unwrap().mean_ce;
        let want = reference()["prompts"][i]["mean_next_token_ce"]
            .as_f64()
            .unwrap();
        assert!(
            (ce - want).abs() <= 1e-4,
            "prompt {i}: mean CE {ce} vs {want}"
        );
    }
}

#[test]
fn tokenizer_gives_the_prompt_ids() {
    let tok = checkpoint().tokenizer().unwrap();
    for i in 0..3 {
        let text = reference()["prompts"][i]["text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), prompt_ids(i), "prompt {i}");
    }
}

#[test]
fn greedy_continuations_match() {
    for i in 0..3 {
        let want: Vec<u32> = reference()["prompts"][i]["greedy_continuation_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // No stop token: the reference generated exactly 20 tokens.
        let got = generate(model(), &prompt_ids(i), want.len(), &[], &Sampling::Greedy).unwrap();
        assert_eq!(got, want, "prompt {i}");
    }
}

#[test]
fn hf_directory_round_trip_gives_the_same_model() {
    let back = common::assert_hf_round_trip(checkpoint(), model(), &ids_tensor(&prompt_ids(1)));
    let text = reference()["prompts"][1]["text"].as_str().unwrap();
    assert_eq!(
        back.tokenizer().unwrap().encode(text).unwrap(),
        prompt_ids(1)
    );
}

#[test]
fn emulator_layer_choice_and_logits_match() {
    let e = &reference()["emulator"];
    let split = offsite::emulator::plan(30, 2, 2, 13).unwrap();
    let want: Vec<usize> = e["emulator_layer_order_absolute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(split.layer_order(), want);
    let ckpt = checkpoint();
    let emu = Model::from_tensors(&ckpt.config, &ckpt.tensors, Some(&split.layer_order())).unwrap();
    for i in 0..3 {
        let ids = prompt_ids(i);
        let logits = emu.forward(&ids_tensor(&ids)).unwrap().squeeze(0).unwrap();
        let last = logits.get(ids.len() - 1).unwrap();
        let d = max_abs_diff(
            &last,
            &reference_tensors()[&format!("emu.p{i}.logits_last")],
        );
        assert!(d <= 1e-3, "emulator prompt {i}: last logits differ by {d}");
        let ce = score_ids(&emu, &ids).unwrap().mean_ce;
        let want = e["prompts"][i]["mean_next_token_ce"].as_f64().unwrap();
        assert!(
            (ce - want).abs() <= 1e-4,
            "emulator prompt {i}: CE {ce} vs {want}"
        );
    }
}

#[test]
fn fused_training_loss_matches_the_reference_cross_entropy() {
    for i in 0..3 {
        let ids = prompt_ids(i);
        let seq = offsite::data::Sequence {
            ids: ids.clone(),
            loss_from: 1,
        };
        let batch = offsite::data::Batch::new(&[&seq], 0, &Device::Cpu).unwrap();
        let loss = offsite::train::loss::lm_loss(model(), &batch, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let want = reference()["prompts"][i]["mean_next_token_ce"]
            .as_f64()
            .unwrap();
        assert!(
            (loss - want).abs() <= 1e-4,
            "prompt {i}: fused loss {loss} vs {want}"
        );
    }
}
