//! Micro-benchmarks of the fused ops against their unfused candle compositions, forward and
//! forward + backward, at SmolLM2-135M's shapes for a batch of 4 × 128 tokens.
//! Run: `cargo bench --bench ops` (add `-- NAME` to pick one).

use candle_core::{Device, Result, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use offsite::ops;

const TOKENS: usize = 4 * 128;
const HIDDEN: usize = 576;
const HEADS: usize = 9;
const HEAD_DIM: usize = 64;
const SEQ: usize = 128;
const MLP: usize = 1536;
const VOCAB: usize = 49_152;

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).expect("random tensor")
}

/// Times `f` (forward) and `f` followed by a backward pass of the sum of its output.
fn pair(c: &mut Criterion, name: &str, x: &Var, f: impl Fn(&Tensor) -> Result<Tensor>) {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.bench_function("forward", |b| {
        b.iter(|| f(&x.as_tensor().detach()).expect("forward"))
    });
    g.bench_function("forward+backward", |b| {
        b.iter(|| {
            f(x.as_tensor())
                .and_then(|y| y.sum_all())
                .and_then(|s| s.backward())
                .expect("backward")
        })
    });
    g.finish();
}

fn frozen_linear(c: &mut Criterion) {
    let x = Var::from_tensor(&randn(&[TOKENS, HIDDEN])).expect("var");
    let w = randn(&[MLP, HIDDEN]);
    pair(c, "frozen_linear/fused", &x, |x| ops::frozen_linear(x, &w));
    // candle's matmul also computes the (unwanted) weight gradient when the weight is a Var.
    let wv = Var::from_tensor(&w).expect("var");
    pair(c, "frozen_linear/matmul", &x, |x| {
        x.matmul(&wv.as_tensor().t()?)
    });
}

fn rms_norm(c: &mut Criterion) {
    let x = Var::from_tensor(&randn(&[4, SEQ, HIDDEN])).expect("var");
    let w = randn(&[HIDDEN]);
    pair(c, "rms_norm/fused", &x, |x| {
        ops::rms_norm(x, &w, 1e-5, false)
    });
    pair(c, "rms_norm/composed", &x, |x| {
        ops::rms_norm::rms_norm_reference(x, &w, 1e-5)
    });
}

fn rope(c: &mut Criterion) {
    let x = Var::from_tensor(&randn(&[4, SEQ, HEADS, HEAD_DIM])).expect("var");
    let cos = randn(&[SEQ, HEAD_DIM / 2]);
    let sin = randn(&[SEQ, HEAD_DIM / 2]);
    pair(c, "rope/fused", &x, |x| ops::rope(x, &cos, &sin));
    pair(c, "rope/composed", &x, |x| {
        ops::rope::rope_reference(x, &cos, &sin)
    });
}

fn silu_mul(c: &mut Criterion) {
    let gate = Var::from_tensor(&randn(&[TOKENS, MLP])).expect("var");
    // `up` is a Var too, so the backward computes both input gradients, as in training.
    let up = Var::from_tensor(&randn(&[TOKENS, MLP])).expect("var");
    pair(c, "silu_mul/fused", &gate, |g| {
        ops::silu_mul(g, up.as_tensor())
    });
    pair(c, "silu_mul/composed", &gate, |g| {
        ops::silu_mul::silu_mul_reference(g, up.as_tensor())
    });
}

fn causal_softmax(c: &mut Criterion) {
    let x = Var::from_tensor(&randn(&[4, HEADS, SEQ, SEQ])).expect("var");
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    pair(c, "causal_softmax/fused", &x, |x| {
        ops::causal_softmax(x, scale)
    });
    pair(c, "causal_softmax/composed", &x, |x| {
        ops::softmax::causal_softmax_reference(x, scale, Default::default())
    });
}

fn attention(c: &mut Criterion) {
    // SmolLM2: 9 query heads sharing 3 key/value heads.
    let q = Var::from_tensor(&randn(&[4, SEQ, HEADS, HEAD_DIM])).expect("var");
    let k = Var::from_tensor(&randn(&[4, SEQ, 3, HEAD_DIM])).expect("var");
    let v = Var::from_tensor(&randn(&[4, SEQ, 3, HEAD_DIM])).expect("var");
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let mask = ops::SoftmaxMask::default();
    pair(c, "attention/fused", &q, |q| {
        ops::attention(q, k.as_tensor(), v.as_tensor(), scale, mask)
    });
    pair(c, "attention/composed", &q, |q| {
        ops::attention::attention_reference(q, k.as_tensor(), v.as_tensor(), scale, mask)
    });
}

fn lm_head_loss(c: &mut Criterion) {
    let h = Var::from_tensor(&(randn(&[TOKENS, HIDDEN]) * 0.05).expect("scale")).expect("var");
    let w = (randn(&[VOCAB, HIDDEN]) * 0.05).expect("scale");
    let targets: Vec<u32> = (0..TOKENS).map(|i| (i * 7919 % VOCAB) as u32).collect();
    let weights = vec![1.0 / TOKENS as f64; TOKENS];
    pair(c, "lm_head_loss/fused", &h, |h| {
        ops::lm_head_loss(h, &w, false, &targets, &weights, ops::HeadProducts::F32)
    });
    let t = Tensor::new(targets.as_slice(), &Device::Cpu).expect("targets");
    pair(c, "lm_head_loss/logits", &h, |h| {
        let logits = h.matmul(&w.t()?)?;
        let logp = offsite::model::log_softmax(&logits)?;
        logp.gather(&t.unsqueeze(1)?, 1)?.mean_all()?.neg()
    });
}

/// The bf16 ops against their f32 counterparts; skipped on CPUs without a bf16 kernel.
fn bf16(c: &mut Criterion) {
    if !ops::gemm_bf16::available() {
        eprintln!("bf16 benches skipped: no bf16 kernel on this CPU");
        return;
    }
    let x = Var::from_tensor(&randn(&[TOKENS, HIDDEN])).expect("var");
    let w = (randn(&[MLP, HIDDEN]) * 0.05).expect("scale");
    let packed = std::sync::Arc::new(
        ops::Bf16Weight::pack(&w.to_dtype(candle_core::DType::BF16).expect("bf16"), false)
            .expect("pack")
            .expect("a bf16 kernel"),
    );
    pair(c, "frozen_linear_bf16/bf16", &x, |x| {
        ops::frozen_linear_bf16(x, &packed)
    });
    pair(c, "frozen_linear_bf16/f32", &x, |x| {
        ops::frozen_linear(x, &w)
    });
    // A trained weight: both gradients.
    let wv = Var::from_tensor(&w).expect("var");
    pair(c, "linear_bf16/bf16", &x, |x| {
        ops::linear_bf16(x, wv.as_tensor())
    });
    pair(c, "linear_bf16/f32", &x, |x| x.matmul(&wv.as_tensor().t()?));
    // LoRA r 8 over the frozen map: the fused op against the f32 composition.
    let a = Var::from_tensor(&(randn(&[8, HIDDEN]) * 0.05).expect("scale")).expect("var");
    let bm = Var::from_tensor(&(randn(&[MLP, 8]) * 0.05).expect("scale")).expect("var");
    pair(c, "lora_linear/fused_bf16", &x, |x| {
        ops::lora_linear_bf16(x, &packed, a.as_tensor(), bm.as_tensor(), 4.0, None)
    });
    pair(c, "lora_linear/composed_f32", &x, |x| {
        let branch = (x
            .matmul(&a.as_tensor().t()?)?
            .matmul(&bm.as_tensor().t()?)?
            * 4.0)?;
        ops::frozen_linear(x, &w)? + branch
    });
    // Attention's products on the tiles against f32 (SmolLM2's heads).
    let q = Var::from_tensor(&randn(&[4, SEQ, HEADS, HEAD_DIM])).expect("var");
    let k = Var::from_tensor(&randn(&[4, SEQ, 3, HEAD_DIM])).expect("var");
    let v = Var::from_tensor(&randn(&[4, SEQ, 3, HEAD_DIM])).expect("var");
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    for (name, bf16) in [("attention/bf16", true), ("attention/f32", false)] {
        pair(c, name, &q, |q| {
            ops::attention_with(
                q,
                k.as_tensor(),
                v.as_tensor(),
                scale,
                Default::default(),
                bf16,
            )
        });
    }
    // A whole frozen SmolLM2 layer (the emulator's middle): one fused op against its separate ops.
    let x3 = Var::from_tensor(&randn(&[4, SEQ, HIDDEN])).expect("var");
    let pack = |out: usize, inp: usize| {
        let w = (randn(&[out, inp]) * 0.05).expect("scale");
        std::sync::Arc::new(
            ops::Bf16Weight::pack(&w, false)
                .expect("pack")
                .expect("a bf16 kernel"),
        )
    };
    let kv = 3 * HEAD_DIM;
    let layer = ops::FrozenLlamaLayer {
        norms: [randn(&[HIDDEN]), randn(&[HIDDEN])],
        eps: 1e-5,
        linears: [
            pack(HIDDEN, HIDDEN),
            pack(kv, HIDDEN),
            pack(kv, HIDDEN),
            pack(HIDDEN, HIDDEN),
            pack(MLP, HIDDEN),
            pack(MLP, HIDDEN),
            pack(HIDDEN, MLP),
        ],
        heads: (HEADS, 3, HEAD_DIM),
        bf16_attention: true,
    };
    let cos = randn(&[SEQ, HEAD_DIM / 2]);
    let sin = randn(&[SEQ, HEAD_DIM / 2]);
    pair(c, "frozen_llama_layer/fused", &x3, |x| {
        ops::frozen_llama_layer(x, &layer, &cos, &sin)
    });
    pair(c, "frozen_llama_layer/separate", &x3, |x| {
        ops::frozen_llama_layer_reference(x, &layer, &cos, &sin)
    });
    // A trained head (the tied embedding under full fine-tuning): per-call packing on the tiles.
    let h = Var::from_tensor(&(randn(&[TOKENS, HIDDEN]) * 0.05).expect("scale")).expect("var");
    let head = Var::from_tensor(&(randn(&[VOCAB, HIDDEN]) * 0.05).expect("scale")).expect("var");
    let targets: Vec<u32> = (0..TOKENS).map(|i| (i * 7919 % VOCAB) as u32).collect();
    let weights = vec![1.0 / TOKENS as f64; TOKENS];
    for (name, products) in [
        ("lm_head_loss_trained/bf16", ops::HeadProducts::PackPerCall),
        ("lm_head_loss_trained/f32", ops::HeadProducts::F32),
    ] {
        pair(c, name, &h, |h| {
            ops::lm_head_loss(h, head.as_tensor(), true, &targets, &weights, products)
        });
    }
}

criterion_group!(
    benches,
    bf16,
    frozen_linear,
    rms_norm,
    rope,
    silu_mul,
    causal_softmax,
    attention,
    lm_head_loss
);
criterion_main!(benches);
