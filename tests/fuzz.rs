//! Seeded fuzzing of every format a user hands us (issue 19): GGUF, safetensors (sealed as
//! offsite writes them, and plain as other tools do), the `.offsite` package, the adapter, HF
//! `config.json` and `tokenizer.json`, JSONL data and training checkpoints. Each case damages a
//! valid file (bit flips, truncation, 8-byte fields set to huge / negative / overflowing values,
//! JSON values replaced by wrong types, huge numbers, deep nesting or invalid UTF-8, safetensors
//! headers with overlapping offsets, wrong dtypes and shapes, duplicate / missing / extra
//! tensors, NaN weights) and loads it in-process. Every case must end in `Ok` or in an error that
//! names the file — never a panic, a hang, or an allocation larger than the file justifies.
//!
//! `cargo test --release --test fuzz` runs a bounded campaign (`FUZZ_CASES`, default 150 per
//! format); `FUZZ_CASES=10000 FUZZ_REPORT=docs/reliability-fuzz.md cargo test --release --test
//! fuzz -- --ignored` is the long run, and writes its table.

use candle_core::{DType, Device, Tensor};
use offsite::emulator::{Adapter, Package};
use offsite::io::tokenizer::Tokenizer;
use offsite::model::{Model, ModelConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;
use common::{model_data_emulator, tune_briefly};

// ---- the largest single allocation made by the armed thread ----

struct Tracking;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

// ---- a small seeded generator (the same cases on every run) ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---- mutations ----

/// Values that break length, offset and dimension fields.
const FIELDS: [u64; 9] = [
    0,
    1,
    u64::MAX,
    i64::MAX as u64,
    (-1i64) as u64,
    (-7i64) as u64,
    1 << 31,
    1 << 40,
    0xffff_ffff,
];

/// Byte-level damage: flips, truncation, an 8- or 4-byte field overwritten, a run zeroed,
/// bytes inserted. `hot` is the length of the header region, hit half of the time.
fn damage_bytes(bytes: &[u8], hot: usize, rng: &mut Rng) -> (Vec<u8>, String) {
    let mut b = bytes.to_vec();
    let len = b.len();
    let at = |rng: &mut Rng| {
        if rng.below(2) == 0 && hot > 0 {
            rng.below(hot.min(len))
        } else {
            rng.below(len)
        }
    };
    match rng.below(6) {
        0 => {
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let i = at(rng);
                b[i] ^= 1 << rng.below(8);
            }
            (b, format!("{n} bit flips"))
        }
        1 => {
            let len = rng.below(bytes.len());
            b.truncate(len);
            (b, format!("truncated to {len} bytes"))
        }
        2 => {
            let i = at(rng).min(b.len().saturating_sub(8));
            let v = *rng.pick(&FIELDS);
            let width = if rng.below(2) == 0 { 8 } else { 4 };
            let end = (i + width).min(b.len());
            b[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
            (b, format!("{width}-byte field at {i} set to {v:#x}"))
        }
        3 => {
            let i = at(rng);
            let end = (i + 1 + rng.below(64)).min(b.len());
            b[i..end].fill(0);
            (b, format!("bytes {i}..{end} zeroed"))
        }
        4 => {
            let i = at(rng);
            let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            let n = junk.len();
            b.splice(i..i, junk);
            (b, format!("{n} bytes inserted at {i}"))
        }
        _ => {
            let i = at(rng);
            b[i] = 0xff;
            (b, format!("byte {i} set to 0xff (invalid UTF-8 in text)"))
        }
    }
}

/// A JSON value that a field does not expect.
fn wrong_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(10) {
        0 => json!(null),
        1 => json!(-1),
        2 => json!(1e300),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => json!("\u{feff}x"),
        6 => json!([]),
        7 => json!({"a": {"b": [1, 2, 3]}}),
        8 => json!(0),
        _ => json!("x".repeat(1 << 16)),
    }
}

/// Structure-aware damage of a JSON document: a value replaced, a key removed, deep nesting.
fn damage_json(text: &str, rng: &mut Rng) -> (Vec<u8>, String) {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(text) else {
        return damage_bytes(text.as_bytes(), text.len(), rng);
    };
    // Walk to a random node, as a JSON pointer.
    let mut path: Vec<String> = Vec::new();
    {
        let mut node = &v;
        for _ in 0..1 + rng.below(4) {
            node = match node {
                serde_json::Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(rng.below(m.len())).unwrap();
                    path.push(k.clone());
                    &m[k]
                }
                serde_json::Value::Array(a) if !a.is_empty() => {
                    let i = rng.below(a.len());
                    path.push(i.to_string());
                    &a[i]
                }
                _ => break,
            };
        }
    }
    let pointer: String = path
        .iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect();
    let node = v.pointer_mut(&pointer).unwrap();
    let what = match rng.below(4) {
        0 => {
            let w = wrong_value(rng);
            let shown = w.to_string().chars().take(24).collect::<String>();
            *node = w;
            format!("/{} set to {shown}", path.join("/"))
        }
        1 => {
            *node = serde_json::Value::Null;
            format!("/{} nulled", path.join("/"))
        }
        2 => {
            // Deep nesting: serde_json's recursion limit must turn this into an error.
            let depth = 100_000;
            let s = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            return (s.into_bytes(), format!("array nested {depth} deep"));
        }
        _ => {
            if let serde_json::Value::Object(m) = &mut v {
                if let Some(k) = m.keys().nth(rng.below(m.len().max(1))).cloned() {
                    m.remove(&k);
                    return (
                        serde_json::to_vec(&v).unwrap(),
                        format!("top-level `{k}` removed"),
                    );
                }
            }
            return damage_bytes(text.as_bytes(), text.len(), rng);
        }
    };
    (serde_json::to_vec(&v).unwrap(), what)
}

/// Damage of a safetensors file's header: offsets, dtypes and shapes set wrong, tensors
/// duplicated / removed / added, the seal dropped, NaN written into the data.
fn damage_safetensors(bytes: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let name = rng.pick(&names).clone();
    let mut data = data.to_vec();
    let what = match rng.below(8) {
        0 => {
            let v = *rng.pick(&FIELDS);
            header[&name]["data_offsets"][rng.below(2)] = v.into();
            format!("`{name}` offset set to {v:#x}")
        }
        1 => {
            header[&name]["data_offsets"] = serde_json::json!([0, data.len()]);
            format!("`{name}` overlaps every tensor")
        }
        2 => {
            let d = rng.pick(&["F16", "BF16", "I64", "U8", "F64", "BOOL", "F8_E4M3", "XX"]);
            header[&name]["dtype"] = (*d).into();
            format!("`{name}` dtype set to {d}")
        }
        3 => {
            let shape = match rng.below(4) {
                0 => serde_json::json!([1u64 << 40, 1u64 << 40]),
                1 => serde_json::json!([-1, 4]),
                2 => serde_json::json!([0]),
                _ => serde_json::json!([3, 5, 7, 11]),
            };
            header[&name]["shape"] = shape.clone();
            format!("`{name}` shape set to {shape}")
        }
        4 => {
            header.remove(&name);
            format!("`{name}` removed")
        }
        5 => {
            let copy = header[&name].clone();
            header.insert(format!("{name}.extra"), copy);
            format!("`{name}` duplicated under another name")
        }
        6 => {
            let meta = header
                .get_mut("__metadata__")
                .and_then(|m| m.as_object_mut());
            if let Some(m) = meta {
                m.remove("offsite.sha256");
            }
            // Unsealed now: NaN / inf in the data must still be refused or be harmless.
            let off = header[&name]["data_offsets"][0].as_u64().unwrap() as usize;
            let v = if rng.below(2) == 0 {
                f32::NAN
            } else {
                f32::INFINITY
            };
            if header[&name]["dtype"] == "F32" && off + 4 <= data.len() {
                data[off..off + 4].copy_from_slice(&v.to_le_bytes());
            }
            format!("seal removed, `{name}`[0] set to {v}")
        }
        _ => {
            // A duplicate key in the raw JSON text (a map cannot hold one).
            let text = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
            let entry = format!("\"{name}\":{}", header[&name]);
            let dup = text.replacen('{', &format!("{{{entry},"), 1);
            let mut out = (dup.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(dup.as_bytes());
            out.extend_from_slice(&data);
            return (out, format!("`{name}` listed twice"));
        }
    };
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    (out, what)
}

// ---- the formats ----

/// How one case ended.
#[derive(Debug, Default, Clone)]
struct Tally {
    cases: usize,
    accepted: usize,
    /// Accepted, and what was loaded differs from the intact file's.
    changed: Vec<String>,
    refused: usize,
    panics: Vec<String>,
    hangs: Vec<String>,
    unnamed: Vec<String>,
    oversize: Vec<String>,
    largest_ratio: f64,
}

/// Loads a file; `Ok` holds a digest of everything loaded, to tell a harmless change from one
/// that silently changed what the program will compute with.
type Loader = fn(&Path) -> Result<String, String>;

struct Format {
    name: &'static str,
    /// The file that is damaged (inside `load_at` for directory formats).
    file: PathBuf,
    /// What is loaded: the file itself or the directory holding it.
    load_at: PathBuf,
    load: Loader,
    kind: Kind,
    /// Whether offsite sealed the file: then no accepted case may load other contents.
    sealed: bool,
}

#[derive(Clone, Copy)]
enum Kind {
    Binary { header: usize },
    SafeTensors,
    Json,
    Jsonl,
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn digest(tensors: &offsite::model::TensorMap) -> String {
    offsite::emulator::fingerprint::fingerprint(tensors.iter()).unwrap()
}

fn load_checkpoint(p: &Path) -> Result<String, String> {
    let c = offsite::io::checkpoint::load(p, &Device::Cpu).map_err(err)?;
    c.model().map_err(err)?;
    Ok(format!("{:?} {}", c.config, digest(&c.tensors)))
}

fn load_package(p: &Path) -> Result<String, String> {
    let pkg = Package::load(p, &Device::Cpu).map_err(err)?;
    Ok(format!("{:?} {}", pkg.meta, digest(&pkg.tensors)))
}

fn load_adapter(p: &Path) -> Result<String, String> {
    let a = Adapter::load(p, &Device::Cpu).map_err(err)?;
    Ok(format!("{:?} {}", a.meta, digest(&a.tensors)))
}

fn load_tokenizer(p: &Path) -> Result<String, String> {
    let t = Tokenizer::from_file(p).map_err(err)?;
    let ids = ["hello world", "Ünïcödé 123 <|im_start|>"]
        .map(|s| t.encode(s).map_err(err))
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("{ids:?} {:?}", t.special_tokens()))
}

fn load_config(p: &Path) -> Result<String, String> {
    ModelConfig::from_hf_json(p)
        .map(|c| format!("{c:?}"))
        .map_err(err)
}

fn load_jsonl(p: &Path) -> Result<String, String> {
    let mc = offsite::data::tasks::load_mc(p).map_err(err)?;
    Ok(format!("{mc:?}"))
}

fn load_resume_state(p: &Path) -> Result<String, String> {
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
fn tiny_gguf(dir: &Path) -> PathBuf {
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
fn formats(dir: &Path) -> Vec<Format> {
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

/// Total bytes of the input a load reads (the file, or the directory's files).
fn input_bytes(p: &Path) -> u64 {
    if p.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| input_bytes(&e.unwrap().path()))
            .sum()
    } else {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }
}

/// Runs `cases` damaged versions of `format` and tallies them.
fn campaign(format: &Format, cases: usize, seed: u64) -> Tally {
    let original = std::fs::read(&format.file).unwrap();
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    // Each format's allowance: what its valid file needs at the most, times 4, or 128 bytes per
    // input byte (a regex or trie built from a damaged token string), plus 1 MiB for fixed
    // tables: bounded by the input, where a header claiming a 100 GB tensor is not.
    let (intact, base) = run_one(format, &original);
    let intact = match intact {
        Outcome::Ok(d) => d,
        Outcome::Err(e) | Outcome::Panic(e) => {
            // The quiet panic hook is installed: say it before failing.
            eprintln!("{}: the intact file does not load: {e}", format.name);
            panic!("{}: the intact file does not load: {e}", format.name)
        }
        Outcome::Hang => panic!("{}: the intact file hangs", format.name),
    };
    let allowance = |input: u64| (4 * base).max(128 * input as usize) + (1 << 20);
    let name = format
        .file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let shown_at = format
        .load_at
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for i in 0..cases {
        let (bytes, what) = match format.kind {
            // Truncation at every boundary first for the small files, then random damage.
            Kind::Binary { .. } | Kind::Jsonl if i < 40 && original.len() < 4096 => {
                let len = i * original.len() / 40;
                (
                    original[..len].to_vec(),
                    format!("truncated to {len} bytes"),
                )
            }
            Kind::Binary { header } => damage_bytes(&original, header, &mut rng),
            Kind::SafeTensors => match rng.below(3) {
                0 => damage_bytes(&original, 256, &mut rng),
                _ => damage_safetensors(&original, &mut rng),
            },
            Kind::Json => damage_json(&String::from_utf8_lossy(&original), &mut rng),
            Kind::Jsonl => {
                let text = String::from_utf8_lossy(&original);
                let lines: Vec<&str> = text.lines().collect();
                let k = rng.below(lines.len());
                let (line, what) = damage_json(lines[k], &mut rng);
                let mut out = Vec::new();
                for (j, l) in lines.iter().enumerate() {
                    if j == k {
                        out.extend_from_slice(&line);
                    } else {
                        out.extend_from_slice(l.as_bytes());
                    }
                    out.push(b'\n');
                }
                (out, format!("line {}: {what}", k + 1))
            }
        };
        if std::env::var_os("FUZZ_TRACE").is_some() {
            eprintln!("{} case {i}: {what}", format.name);
        }
        let (outcome, largest) = run_one(format, &bytes);
        tally.cases += 1;
        tally.largest_ratio = tally
            .largest_ratio
            .max(largest as f64 / input_bytes(&format.load_at).max(1) as f64);
        if largest > allowance(input_bytes(&format.load_at)) {
            tally
                .oversize
                .push(format!("{what}: one allocation of {largest} bytes"));
        }
        match outcome {
            Outcome::Ok(d) => {
                tally.accepted += 1;
                if d != intact {
                    tally.changed.push(what);
                }
            }
            Outcome::Err(msg) => {
                tally.refused += 1;
                if !msg.contains(&name) && !msg.contains(&shown_at) {
                    tally.unnamed.push(format!("{what}: {msg}"));
                }
            }
            Outcome::Panic(msg) => {
                if std::env::var_os("FUZZ_TRACE").is_some() {
                    let n = tally.panics.len();
                    let kept = std::env::temp_dir().join(format!("fuzz-panic-{n}-{name}"));
                    std::fs::write(kept, &bytes).unwrap();
                }
                tally.panics.push(format!("{what}: {msg}"))
            }
            Outcome::Hang => tally.hangs.push(what),
        }
    }
    std::fs::write(&format.file, &original).unwrap();
    tally
}

enum Outcome {
    Ok(String),
    Err(String),
    Panic(String),
    Hang,
}

/// Writes `bytes` over the format's file and loads it on a watched thread.
fn run_one(format: &Format, bytes: &[u8]) -> (Outcome, usize) {
    std::fs::write(&format.file, bytes).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let load = format.load;
    let at = format.load_at.clone();
    std::thread::spawn(move || {
        LARGEST.with(|l| l.set(0));
        ARMED.with(|a| a.set(true));
        let r = std::panic::catch_unwind(|| load(&at));
        ARMED.with(|a| a.set(false));
        let largest = LARGEST.with(|l| l.get());
        let _ = tx.send((r, largest));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok((Ok(Ok(d)), l)) => (Outcome::Ok(d), l),
        Ok((Ok(Err(e)), l)) => (Outcome::Err(e), l),
        Ok((Err(p), l)) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (Outcome::Panic(msg), l)
        }
        Err(_) => (Outcome::Hang, 0),
    }
}

fn run_campaign(cases: usize) -> Vec<(&'static str, bool, Tally)> {
    let dir = tempfile::tempdir().unwrap();
    // Panics are caught and counted; their default message would only clutter the output.
    std::panic::set_hook(Box::new(|_| {}));
    let results: Vec<(&'static str, bool, Tally)> = formats(dir.path())
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name, f.sealed, campaign(f, cases, 1000 + i as u64)))
        .collect();
    let _ = std::panic::take_hook();
    results
}

fn table(results: &[(&'static str, bool, Tally)]) -> String {
    let mut s = String::from(
        "| format | sealed | cases | refused | accepted, same contents | accepted, other contents | panics | hangs | errors not naming the file | oversize allocations | largest allocation / input |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (name, sealed, t) in results {
        s += &format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |\n",
            if *sealed { "yes" } else { "no" },
            t.cases,
            t.refused,
            t.accepted - t.changed.len(),
            t.changed.len(),
            t.panics.len(),
            t.hangs.len(),
            t.unnamed.len(),
            t.oversize.len(),
            t.largest_ratio
        );
    }
    s
}

fn check(results: &[(&'static str, bool, Tally)]) {
    let mut problems = Vec::new();
    let none = Vec::new();
    for (name, sealed, t) in results {
        // Unsealed text formats may legitimately be edited: a changed value that still parses
        // is the user's. A sealed file may never load other contents.
        let changed = if *sealed { &t.changed } else { &none };
        for (kind, list) in [
            ("accepted with other contents", changed),
            ("panic", &t.panics),
            ("hang", &t.hangs),
            ("error without the file's name", &t.unnamed),
            ("oversize allocation", &t.oversize),
        ] {
            for p in list.iter().take(3) {
                problems.push(format!("{name}: {kind}: {p}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n{}",
        table(results),
        problems.join("\n")
    );
}

#[test]
fn bounded_campaign_over_every_format() {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let results = run_campaign(cases);
    eprintln!("{}", table(&results));
    check(&results);
}

#[test]
#[ignore = "the long campaign: FUZZ_CASES (default 10000) per format, table to FUZZ_REPORT"]
fn long_campaign_over_every_format() {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let started = std::time::Instant::now();
    let results = run_campaign(cases);
    let t = table(&results);
    if let Ok(out) = std::env::var("FUZZ_REPORT") {
        let body = format!(
            "{t}\n{cases} cases per format, seeded (the same cases on every run), {:.0} s.\n",
            started.elapsed().as_secs_f64()
        );
        std::fs::write(out, body).unwrap();
    }
    eprintln!("{t}");
    check(&results);
}
