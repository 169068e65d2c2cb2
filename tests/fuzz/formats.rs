//! Every format a user hands us, each with a valid file and the in-process loader that reads it.

use super::common::{model_data_emulator, tune_briefly};
use candle_core::{DType, Device, Tensor};
use offsite::emulator::{Adapter, Package};
use offsite::io::tokenizer::Tokenizer;
use offsite::model::{Model, ModelConfig};
use std::path::{Path, PathBuf};

/// Loads a file; `Ok` holds a digest of everything loaded, to tell a harmless change from one
/// that silently changed what the program will compute with.
pub type Loader = fn(&Path) -> Result<String, String>;

pub struct Format {
    pub name: &'static str,
    /// The file that is damaged (inside `load_at` for directory formats).
    pub file: PathBuf,
    /// What is loaded: the file itself or the directory holding it.
    pub load_at: PathBuf,
    pub load: Loader,
    pub kind: Kind,
    /// Whether offsite sealed the file: then no accepted case may load other contents.
    pub sealed: bool,
}

#[derive(Clone, Copy)]
pub enum Kind {
    Binary { header: usize },
    SafeTensors,
    Json,
    Jsonl,
}

pub fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The fingerprint of every value loaded (matrices held in GGUF blocks dequantized).
pub fn digest(tensors: &offsite::model::TensorMap) -> String {
    let dense = tensors.dense_entries().unwrap();
    offsite::emulator::fingerprint::fingerprint(dense.iter().map(|(n, t)| (n.as_str(), t))).unwrap()
}

/// A package whose emulator matrices are shipped in q8_0 blocks (`emulator --frozen-quantized`),
/// of a tiny model whose rows the blocks tile.
fn blocks_package(dir: &Path) -> PathBuf {
    let model = Model::random(&super::common::blocky_config(), 5, DType::F32).unwrap();
    let options = offsite::emulator::EmulatorOptions {
        frozen_quantized: Some("q8_0".parse().unwrap()),
        ..offsite::emulator::EmulatorOptions::layer_drop(1, 2, 1)
    };
    let path = dir.join("blocks.offsite");
    Package::build(&model, None, options, &path)
        .unwrap()
        .save(&path)
        .unwrap();
    path
}

pub fn load_checkpoint(p: &Path) -> Result<String, String> {
    let c = offsite::io::checkpoint::load(p, &Device::Cpu).map_err(err)?;
    c.model().map_err(err)?;
    Ok(format!("{:?} {}", c.config, digest(&c.tensors)))
}

pub fn load_package(p: &Path) -> Result<String, String> {
    let pkg = Package::load(p, &Device::Cpu).map_err(err)?;
    Ok(format!("{:?} {}", pkg.meta, digest(&pkg.tensors)))
}

pub fn load_adapter(p: &Path) -> Result<String, String> {
    let a = Adapter::load(p, &Device::Cpu).map_err(err)?;
    Ok(format!("{:?} {}", a.meta, digest(&a.tensors)))
}

pub fn load_tokenizer(p: &Path) -> Result<String, String> {
    let t = Tokenizer::from_file(p).map_err(err)?;
    let ids = ["hello world", "Ünïcödé 123 <|im_start|>"]
        .map(|s| t.encode(s).map_err(err))
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("{ids:?} {:?}", t.special_tokens()))
}

pub fn load_config(p: &Path) -> Result<String, String> {
    ModelConfig::from_hf_json(p)
        .map(|c| format!("{c:?}"))
        .map_err(err)
}

pub fn load_jsonl(p: &Path) -> Result<String, String> {
    let mc = offsite::data::tasks::load_mc(p).map_err(err)?;
    Ok(format!("{mc:?}"))
}

pub fn load_resume_state(p: &Path) -> Result<String, String> {
    let snap = offsite::train::checkpoint::load_latest(p)
        .map_err(err)?
        .ok_or("no checkpoint")?;
    let d = |m: &std::collections::BTreeMap<String, Tensor>| {
        offsite::emulator::fingerprint::fingerprint(m.iter().map(|(k, v)| (k.as_str(), v))).unwrap()
    };
    Ok(format!(
        "{:?} {} {} {}",
        snap.state,
        d(&snap.params),
        d(&snap.m),
        d(&snap.v)
    ))
}

/// A tiny llama GGUF (f32 tensors), as llama.cpp would write it.
pub fn tiny_gguf(dir: &Path) -> PathBuf {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let config = ModelConfig {
        vocab_size: 40,
        num_layers: 1,
        ..ModelConfig::tiny()
    };
    let model = Model::random(&config, 9, DType::F32).unwrap();
    let gguf_name = |hf: &str| -> String {
        let map = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ];
        if let Some((_, g)) = map.iter().find(|(h, _)| *h == hf) {
            return g.to_string();
        }
        let rest = hf.strip_prefix("model.layers.").unwrap();
        let (i, rest) = rest.split_once('.').unwrap();
        let g = match rest {
            "input_layernorm.weight" => "attn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            other => panic!("{other}"),
        };
        format!("blk.{i}.{g}")
    };
    let tensors: Vec<(String, QTensor)> = model
        .named_weights()
        .into_iter()
        .map(|(n, w)| {
            let q = QTensor::quantize(w.dense().unwrap(), GgmlDType::F32).unwrap();
            (gguf_name(&n), q)
        })
        .collect();
    use gguf_file::Value as V;
    let c = &config;
    let meta: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.embedding_length", V::U32(c.hidden_size as u32)),
        ("llama.attention.head_count", V::U32(c.num_heads as u32)),
        (
            "llama.attention.head_count_kv",
            V::U32(c.num_kv_heads as u32),
        ),
        ("llama.block_count", V::U32(c.num_layers as u32)),
        (
            "llama.feed_forward_length",
            V::U32(c.intermediate_size as u32),
        ),
        ("llama.context_length", V::U32(64)),
    ];
    let path = dir.join("tiny.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    path
}

/// Every format, each with a valid file in `dir`.
pub fn formats(dir: &Path) -> Vec<Format> {
    let (model, train, emu) = model_data_emulator(dir, 11);
    let adapter = dir.join("a.safetensors");
    tune_briefly(&emu, &train, &adapter, &[]);
    // A run's checkpoint folder, as a killed `tune` leaves it.
    let ckpt = dir.join("ckpt");
    let t = |v: f32| Tensor::new(&[v, v + 1.0], &Device::Cpu).unwrap();
    let snap = offsite::train::checkpoint::Snapshot {
        state: offsite::train::checkpoint::LoopState {
            step: 3,
            epoch: 0,
            micro: 1,
            tokens: 48,
            best: Some((1.5, 2)),
            seed: 42,
            options_digest: "d".into(),
        },
        params: [("w".to_string(), t(1.0))].into(),
        m: [("w".to_string(), t(0.1))].into(),
        v: [("w".to_string(), t(0.2))].into(),
        best: None,
    };
    offsite::train::checkpoint::save(&ckpt, &snap).unwrap();
    let step = ckpt.join("step-00000003");
    // An unsealed copy of the model directory: safetensors as other tools write them.
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(model.join(f), plain.join(f)).unwrap();
    }
    let loaded = offsite::io::checkpoint::load(&model, &Device::Cpu).unwrap();
    let tensors: Vec<(String, Tensor)> = loaded
        .tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    std::fs::write(
        plain.join("model.safetensors"),
        safetensors::serialize(tensors, None).unwrap(),
    )
    .unwrap();
    let gguf = tiny_gguf(dir);
    let blocks = blocks_package(dir);
    let data = dir.join("records.jsonl");
    std::fs::write(
        &data,
        "{\"context\": \"Q: 2+2?\\nA:\", \"choices\": [\" 4\", \" 5\"], \"label\": 0}\n\
         {\"id\": \"b\", \"context\": \"Is it?\", \"choices\": [\" no\", \" yes\"], \"label\": 1}\n\
         {\"context\": \"Pick:\", \"choices\": [\" a\", \" b\", \" c\"], \"label\": 2}\n",
    )
    .unwrap();
    let header = |p: &Path| {
        let b = std::fs::read(p).unwrap();
        u64::from_le_bytes(b[..8].try_into().unwrap()) as usize + 8
    };
    let f = |name: &'static str, file: PathBuf, load_at: PathBuf, load: Loader, kind| Format {
        // The package, the adapter, offsite's model and checkpoint files carry a seal (a
        // checkpoint's state.json through its parameters file).
        sealed: name.contains("sealed")
            || name.contains("emulator")
            || name.contains("adapter")
            || name.starts_with("checkpoint"),
        name,
        file,
        load_at,
        load,
        kind,
    };
    vec![
        f(
            "GGUF model",
            gguf.clone(),
            gguf.clone(),
            load_checkpoint,
            Kind::Binary { header: 600 },
        ),
        f(
            "safetensors model, sealed (offsite's)",
            model.join("model.safetensors"),
            model.clone(),
            load_checkpoint,
            Kind::SafeTensors,
        ),
        f(
            "safetensors model, plain (other tools')",
            plain.join("model.safetensors"),
            plain.clone(),
            load_checkpoint,
            Kind::SafeTensors,
        ),
        f(
            "emulator package (.offsite)",
            emu.clone(),
            emu.clone(),
            load_package,
            Kind::SafeTensors,
        ),
        f(
            "emulator package, bytes",
            emu.clone(),
            emu.clone(),
            load_package,
            Kind::Binary {
                header: header(&emu),
            },
        ),
        f(
            "emulator package in q8_0 blocks",
            blocks.clone(),
            blocks.clone(),
            load_package,
            Kind::SafeTensors,
        ),
        f(
            "adapter (.safetensors)",
            adapter.clone(),
            adapter.clone(),
            load_adapter,
            Kind::SafeTensors,
        ),
        f(
            "HF config.json",
            model.join("config.json"),
            model.join("config.json"),
            load_config,
            Kind::Json,
        ),
        f(
            "HF tokenizer.json",
            model.join("tokenizer.json"),
            model.join("tokenizer.json"),
            load_tokenizer,
            Kind::Json,
        ),
        f(
            "JSONL multiple-choice data",
            data.clone(),
            data,
            load_jsonl,
            Kind::Jsonl,
        ),
        f(
            "checkpoint state.json",
            step.join("state.json"),
            ckpt.clone(),
            load_resume_state,
            Kind::Json,
        ),
        f(
            "checkpoint tensors",
            step.join("params.safetensors"),
            ckpt,
            load_resume_state,
            Kind::SafeTensors,
        ),
    ]
}
