//! GGUF files of every architecture offsite reads (llama, qwen2, gemma3), written here the way
//! llama.cpp's converter writes them (its tensor names, metadata keys, LLaMA's q/k row
//! permutation, Gemma's norms stored as 1 + w), from the tiny reference checkpoints in
//! `../shared/reference/tiny`: loading the GGUF must give the model the Hugging Face directory
//! gives (same configuration, same logits).

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use offsite::io::checkpoint::{self, Checkpoint};
use offsite::model::ModelConfig;
use std::path::{Path, PathBuf};

mod common;
use common::max_abs_diff;

fn tiny(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/tiny")
        .join(family)
}

/// llama.cpp's name of an HF tensor of architecture `arch`.
fn gguf_name(arch: &str, hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").expect(hf);
    let (i, rest) = rest.split_once('.').unwrap();
    let (module, kind) = rest.rsplit_once('.').unwrap();
    let g = match (arch, module) {
        (_, "self_attn.q_proj") => "attn_q",
        (_, "self_attn.k_proj") => "attn_k",
        (_, "self_attn.v_proj") => "attn_v",
        (_, "self_attn.o_proj") => "attn_output",
        (_, "mlp.gate_proj") => "ffn_gate",
        (_, "mlp.up_proj") => "ffn_up",
        (_, "mlp.down_proj") => "ffn_down",
        (_, "input_layernorm") => "attn_norm",
        ("gemma3", "self_attn.q_norm") => "attn_q_norm",
        ("gemma3", "self_attn.k_norm") => "attn_k_norm",
        ("gemma3", "post_attention_layernorm") => "post_attention_norm",
        ("gemma3", "pre_feedforward_layernorm") => "ffn_norm",
        ("gemma3", "post_feedforward_layernorm") => "post_ffw_norm",
        (_, "post_attention_layernorm") => "ffn_norm",
        (_, other) => panic!("no GGUF name for {other}"),
    };
    format!("blk.{i}.{g}.{kind}")
}

/// llama.cpp's q/k permutation (the inverse of the loader's): rows `[head, pair, half]` become
/// `[head, half, pair]`.
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// Writes `ckpt` as llama.cpp would convert it (f32 tensors), with the metadata `extra` beside
/// the common keys.
fn write_gguf(ckpt: &Checkpoint, arch: &str, extra: Vec<(String, gguf_file::Value)>, path: &Path) {
    use gguf_file::Value as V;
    let c: &ModelConfig = &ckpt.config;
    let model = ckpt.model().unwrap();
    let tensors: Vec<(String, QTensor)> = model
        .named_weights()
        .into_iter()
        .map(|(name, w)| {
            let mut t = w.dense().unwrap().to_dtype(DType::F32).unwrap();
            if arch == "llama" && name.ends_with("q_proj.weight") {
                t = permute(&t, c.num_heads);
            } else if arch == "llama" && name.ends_with("k_proj.weight") {
                t = permute(&t, c.num_kv_heads);
            } else if arch == "gemma3" && name.ends_with("norm.weight") {
                t = t.affine(1.0, 1.0).unwrap();
            }
            (
                gguf_name(arch, &name),
                QTensor::quantize(&t, GgmlDType::F32).unwrap(),
            )
        })
        .collect();
    let k = |s: &str| format!("{arch}.{s}");
    let mut meta: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.into())),
        (k("embedding_length"), V::U32(c.hidden_size as u32)),
        (k("attention.head_count"), V::U32(c.num_heads as u32)),
        (k("attention.head_count_kv"), V::U32(c.num_kv_heads as u32)),
        (k("attention.key_length"), V::U32(c.head_dim as u32)),
        (k("block_count"), V::U32(c.num_layers as u32)),
        (k("feed_forward_length"), V::U32(c.intermediate_size as u32)),
        (
            k("context_length"),
            V::U32(c.max_position_embeddings as u32),
        ),
        (k("rope.freq_base"), V::F32(c.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            V::F32(c.rms_norm_eps as f32),
        ),
    ];
    meta.extend(extra);
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

/// The HF checkpoint `dir` and its GGUF conversion agree: configuration and logits.
fn check(dir: &Path, arch: &str, extra: Vec<(String, gguf_file::Value)>) {
    let hf = checkpoint::load(dir, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.gguf");
    write_gguf(&hf, arch, extra, &path);
    let gguf = checkpoint::load(&path, &Device::Cpu).unwrap();
    let (a, b) = (&hf.config, &gguf.config);
    assert_eq!(
        (
            a.family,
            a.num_layers,
            a.hidden_size,
            a.num_heads,
            a.num_kv_heads,
            a.head_dim
        ),
        (
            b.family,
            b.num_layers,
            b.hidden_size,
            b.num_heads,
            b.num_kv_heads,
            b.head_dim
        ),
        "{arch}"
    );
    assert_eq!(a.local_rope_theta, b.local_rope_theta, "{arch}");
    let ids = Tensor::new(
        &[[3u32, 17, 101, 7, 250, 9, 33, 64, 5, 11, 200, 2]],
        &Device::Cpu,
    )
    .unwrap();
    let want = hf.model().unwrap().forward(&ids).unwrap();
    let got = gguf.model().unwrap().forward(&ids).unwrap();
    // Gemma's norms go through w + 1 − 1 in f32.
    let d = max_abs_diff(&want, &got);
    assert!(d <= 1e-5, "{arch}: logits differ by {d}");
}

#[test]
fn a_llama_gguf_loads_as_its_hf_directory() {
    check(&tiny("llama"), "llama", vec![]);
}

#[test]
fn a_qwen2_gguf_with_biases_loads_as_its_hf_directory() {
    check(&tiny("qwen2"), "qwen2", vec![]);
}

#[test]
fn a_gemma3_gguf_loads_as_its_hf_directory() {
    use gguf_file::Value as V;
    // A GGUF states the window and the local/global pattern, and llama.cpp scales queries by
    // head_dim^-½: the tiny reference model's 32 is changed to its head_dim (16) so that both
    // files describe the same model.
    let src = tiny("gemma3");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gemma3");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["query_pre_attn_scalar"] = config["head_dim"].clone();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let extra = vec![
        (
            "gemma3.attention.sliding_window".to_string(),
            V::U32(config["sliding_window"].as_u64().unwrap() as u32),
        ),
        (
            "gemma3.attention.sliding_window_pattern".to_string(),
            V::U32(config["sliding_window_pattern"].as_u64().unwrap() as u32),
        ),
    ];
    check(&dir, "gemma3", extra);
}

#[test]
fn a_bias_the_architecture_does_not_have_is_refused_by_name() {
    use gguf_file::Value as V;
    let hf = checkpoint::load(&tiny("qwen2"), &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.gguf");
    // Qwen2's tensors (with q/k/v biases) declared as `llama`, which has none.
    write_gguf(&hf, "qwen2", vec![], &path);
    let bytes = std::fs::read(&path).unwrap();
    let content = gguf_file::Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
    let mut meta: Vec<(String, V)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.replace("qwen2.", "llama."), v.clone()))
        .collect();
    meta.retain(|(k, _)| k != "general.architecture");
    meta.push(("general.architecture".into(), V::String("llama".into())));
    let mut f = std::io::Cursor::new(&bytes);
    let tensors: Vec<(String, QTensor)> = content
        .tensor_infos
        .keys()
        .map(|n| (n.clone(), content.tensor(&mut f, n, &Device::Cpu).unwrap()))
        .collect();
    let llama = tmp.path().join("llama.gguf");
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(
        &mut std::fs::File::create(&llama).unwrap(),
        &meta_refs,
        &tensor_refs,
    )
    .unwrap();
    let err = checkpoint::load(&llama, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("llama.gguf"), "{err}");
    assert!(
        err.contains(".bias") && err.contains("not supported"),
        "{err}"
    );
}
