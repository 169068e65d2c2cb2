//! How close a mode runs to the machine's limit: the matrix-product work of one step (counted
//! from the model, not assumed) against a gemm peak measured on the same machine, in the same
//! run, for the precision the products use.

use offsite::emulator::package::layer_index;
use offsite::model::Model;
use std::collections::BTreeSet;
use std::time::Instant;

/// Matrix-product FLOPs per token of one step of `model` at `seq` tokens per sequence, with
/// `trained` weights (empty: inference, forward only). An estimate of the products only (norms,
/// softmax and element-wise ops are left out):
/// - forward: 2 per weight of every linear map run, attention's scores and weighted values
///   (causal: 2·seq·heads·head_dim per layer), and the LM head;
/// - backward: the input gradients of everything above the lowest trained layer (the same
///   products again, attention's twice), the head's input gradient, and 2 per trained matrix
///   weight for the weight gradients.
///
/// For SmolLM2-135M, offsite 2-13-2 at 128 tokens, this gives 0.39 GFLOP per token.
pub fn step_flops_per_token(model: &Model, trained: &BTreeSet<String>, seq: usize) -> f64 {
    let config = model.config();
    let attention = 2.0 * (seq * config.num_heads * config.head_dim) as f64;
    let ids = model.layer_ids();
    let mut linear = vec![0f64; ids.len()];
    let mut trained_matrix = 0f64;
    let mut lowest_trained: Option<usize> = None;
    for (name, w) in model.named_weights() {
        if w.dims().len() != 2 {
            continue;
        }
        let n = w.elem_count() as f64;
        if trained.contains(&name) {
            trained_matrix += n;
        }
        let Some(pos) = layer_index(&name).and_then(|l| ids.iter().position(|&i| i == l)) else {
            continue;
        };
        linear[pos] += n;
        if trained.contains(&name) {
            lowest_trained = Some(lowest_trained.map_or(pos, |p: usize| p.min(pos)));
        }
    }
    let head = model.head_weight().elem_count() as f64;
    let forward: f64 = linear.iter().map(|l| 2.0 * l + attention).sum::<f64>() + 2.0 * head;
    if trained.is_empty() {
        return forward;
    }
    // The input gradients run from the loss down to the lowest trained layer (or only through
    // the head, when nothing below it trains).
    let from = lowest_trained.unwrap_or(linear.len());
    let input_grads: f64 = linear[from..]
        .iter()
        .map(|l| 2.0 * l + 2.0 * attention)
        .sum::<f64>()
        + 2.0 * head;
    // Weight gradients: a trained head is among the trained matrices (a tied one once, as the
    // embedding, whose own gradient is a scatter and not counted apart).
    forward + input_grads + 2.0 * trained_matrix
}

/// The best GFLOP/s of a `m × k · k × n` product on this machine (best of several), in f32
/// (candle's matmul, as the f32 products run) and, where the CPU has a bf16 kernel, in bf16 with the
/// right operand packed once (as a frozen weight): the physical limit each precision's steps
/// are measured against. Shaped like a layer's MLP product at 4 × 128 tokens.
pub fn gemm_peak() -> (f64, Option<f64>) {
    let (m, k, n) = (512, 576, 1536);
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    let flops = 2.0 * (m * k * n) as f64;
    let best = |f: &mut dyn FnMut()| {
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        flops / best / 1e9
    };
    let (ta, tb) = (
        candle_core::Tensor::from_slice(&a, (m, k), &candle_core::Device::Cpu),
        candle_core::Tensor::from_slice(&b, (k, n), &candle_core::Device::Cpu),
    );
    let f32_peak = match (ta, tb) {
        (Ok(ta), Ok(tb)) => best(&mut || drop(ta.matmul(&tb))),
        _ => f64::NAN,
    };
    let bf16_peak = offsite::ops::gemm_bf16::available().then(|| {
        let packed = offsite::ops::gemm_bf16::PackedRhs::pack(&b, k, n, n, 1);
        best(&mut || offsite::ops::gemm_bf16::matmul(&a, m, &packed, &mut c))
    });
    (f32_peak, bf16_peak)
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite::model::ModelConfig;

    #[test]
    fn flops_count_forward_input_and_weight_gradients_by_hand() {
        let config = ModelConfig {
            num_layers: 3,
            ..ModelConfig::tiny()
        };
        let model = Model::random(&config, 1, candle_core::DType::F32).unwrap();
        let (d, i, v) = (
            config.hidden_size as f64,
            config.intermediate_size as f64,
            config.vocab_size as f64,
        );
        let kv = (config.num_kv_heads * config.head_dim) as f64;
        let q = (config.num_heads * config.head_dim) as f64;
        // q, k, v, o, gate, up, down of one layer.
        let layer = d * q + 2.0 * d * kv + q * d + 3.0 * d * i;
        let seq = 16;
        let attention = 2.0 * seq as f64 * q;
        let forward = 3.0 * (2.0 * layer + attention) + 2.0 * v * d;
        let none = BTreeSet::new();
        assert_eq!(step_flops_per_token(&model, &none, seq), forward);
        // Only the top layer's up projection trains: input gradients through the top layer and
        // the head, one weight gradient.
        let up: BTreeSet<String> = ["model.layers.2.mlp.up_proj.weight".to_string()].into();
        let want = forward + (2.0 * layer + 2.0 * attention) + 2.0 * v * d + 2.0 * d * i;
        assert_eq!(step_flops_per_token(&model, &up, seq), want);
        // The bottom layer trains: the input gradients run through all three.
        let down: BTreeSet<String> = ["model.layers.0.mlp.down_proj.weight".to_string()].into();
        let want = forward + 3.0 * (2.0 * layer + 2.0 * attention) + 2.0 * v * d + 2.0 * d * i;
        assert_eq!(step_flops_per_token(&model, &down, seq), want);
    }
}
