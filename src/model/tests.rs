//! Model-level tests on tiny random models: gradients of a whole decoder layer, frozen weights
//! costing no gradient, and the KV cache.

use super::*;
use crate::model::Precision;
use crate::ops::testing::{assert_close, check_gradients, max_abs_diff, rand_tensor};
use candle_core::{DType, Device, Tensor, Var};

fn tiny(layers: usize) -> ModelConfig {
    ModelConfig {
        num_layers: layers,
        hidden_size: 8,
        intermediate_size: 12,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 2,
        vocab_size: 11,
        ..ModelConfig::tiny()
    }
}

/// Builds layer 0 of `config` from the nine tensors given (in `WEIGHT_NAMES` order), trainable.
fn layer_from(config: &ModelConfig, ws: &[Tensor]) -> crate::Result<Box<dyn DecoderLayer>> {
    let mut map = TensorMap::new("<test>");
    for (name, w) in llama::WEIGHT_NAMES.iter().zip(ws) {
        map.insert(
            format!("model.layers.0.{name}"),
            w.clone(),
            "<test>".as_ref(),
        );
    }
    let mut layer: Box<dyn DecoderLayer> =
        Box::new(llama::LlamaLayer::load(config, &map, 0, false)?);
    for (_, w) in layer.weights_mut() {
        *w = Weight::Trainable(Var::from_tensor(w.dense()?)?);
    }
    Ok(layer)
}

#[test]
fn decoder_layer_gradients_match_finite_differences() -> crate::Result<()> {
    let config = tiny(1);
    let model = Model::random(&config, 7, DType::F64)?;
    let ctx = model.layer_context(0, 3)?;
    let x = rand_tensor(&[2, 3, 8], DType::F64, 1)?;
    // Frozen weights: the gradient wrt the input goes through every frozen op.
    check_gradients(std::slice::from_ref(&x), |t| {
        model.layers()[0].forward(&t[0], &ctx, None)
    })?;
    // Trainable weights: every weight's gradient too.
    let mut inputs = vec![x];
    inputs.extend(
        model.layers()[0]
            .weights()
            .iter()
            .map(|(_, w)| w.dense().unwrap().clone()),
    );
    check_gradients(&inputs, |t| {
        let layer = layer_from(&config, &t[1..]).map_err(candle_core::Error::wrap)?;
        layer.forward(&t[0], &ctx, None)
    })?;
    Ok(())
}

/// Makes the weights of layers `trainable` of `model` trainable; with `all`, every weight.
fn train(model: &mut Model, layers: &[usize], all: bool) -> crate::Result<()> {
    for (name, w) in model.named_weights_mut() {
        let pick = all
            || layers
                .iter()
                .any(|i| name.starts_with(&format!("model.layers.{i}.")));
        w.set_trainable(pick)?;
    }
    Ok(())
}

#[test]
fn frozen_parts_give_same_gradient_and_no_gradient_entries() -> crate::Result<()> {
    let config = tiny(3);
    let ids = Tensor::new(&[[1u32, 5, 3, 9, 2], [4, 4, 7, 0, 10]], &Device::Cpu)?;
    let mut frozen = Model::random(&config, 3, DType::F32)?;
    let mut plain = frozen.clone();
    train(&mut frozen, &[0, 2], false)?;
    train(&mut plain, &[], true)?;
    let g_frozen = frozen.mean_next_token_ce(&ids)?.backward()?;
    let g_plain = plain.mean_next_token_ce(&ids)?.backward()?;
    let plain_weights = plain.named_weights();
    for ((name, w), (_, p)) in frozen.named_weights().iter().zip(&plain_weights) {
        match w {
            Weight::Trainable(v) => {
                let a = g_frozen.get(v).expect("trainable weight has a gradient");
                let b = g_plain
                    .get(p.var().expect("all trainable"))
                    .expect("gradient");
                let diff = max_abs_diff(a, b)?;
                assert!(diff <= 1e-5, "{name}: {diff:e}");
            }
            Weight::Frozen(t) => assert!(g_frozen.get(t).is_none(), "{name} got a gradient"),
            Weight::Quantized(_) => panic!("{name} is quantized"),
        }
    }
    // Nothing but the trainable weights is kept in the gradient store's reach for weights:
    assert!(frozen
        .named_weights()
        .iter()
        .filter(|(n, _)| n.starts_with("model.layers.1."))
        .all(|(_, w)| !w.is_trainable()));
    Ok(())
}

#[test]
fn bf16_frozen_layers_stay_close_to_f32_and_train_the_same_weights() -> crate::Result<()> {
    if !crate::ops::gemm_bf16::available() {
        eprintln!("skipped: no bf16 kernel on this CPU");
        return Ok(());
    }
    let config = ModelConfig {
        hidden_size: 64,
        intermediate_size: 96,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        vocab_size: 128,
        ..tiny(3)
    };
    let ids = Tensor::new(
        &[[1u32, 5, 9, 3, 7, 2, 8, 4], [6, 2, 2, 9, 1, 0, 3, 5]],
        &Device::Cpu,
    )?;
    let mut f32_model = Model::random(&config, 3, DType::F32)?;
    train(&mut f32_model, &[0, 2], false)?;
    let mut bf16_model = f32_model.clone();
    let bytes = bf16_model.set_precision(Precision::FrozenBf16)?;
    // Layer 1's seven maps and the head, packed for the forward (the backward's packing comes
    // with the first backward pass).
    let layer1: usize = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 96;
    assert_eq!(bytes, 2 * (layer1 + 128 * 64), "bytes packed");
    let stored: Vec<DType> = bf16_model.layers()[1]
        .weights()
        .iter()
        .filter(|(_, w)| w.dense().unwrap().rank() == 2)
        .map(|(_, w)| w.dense().unwrap().dtype())
        .collect();
    assert_eq!(
        stored,
        vec![DType::BF16; 7],
        "the frozen maps are stored in bf16"
    );
    let (lf, lb) = (f32_model.forward(&ids)?, bf16_model.forward(&ids)?);
    let scale = lf.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let diff = max_abs_diff(&lf, &lb)?;
    assert!(
        diff > 0.0 && diff < 2e-2 * scale as f64,
        "logits differ by {diff} (scale {scale})"
    );
    let gf = f32_model.mean_next_token_ce(&ids)?.backward()?;
    let gb = bf16_model.mean_next_token_ce(&ids)?.backward()?;
    for ((name, wf), (_, wb)) in f32_model
        .named_weights()
        .iter()
        .zip(bf16_model.named_weights())
    {
        match (wf.var(), wb.var()) {
            (Some(a), Some(b)) => {
                let (a, b) = (gf.get(a).expect("grad"), gb.get(b).expect("grad"));
                let scale = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                let diff = max_abs_diff(a, b)?;
                assert!(
                    diff <= 5e-2 * scale as f64 + 1e-6,
                    "{name}: {diff:e} (scale {scale:e})"
                );
            }
            (None, None) => {}
            _ => panic!("{name}: packing changed which weights train"),
        }
    }
    // Switching back gives f32 products over the weights' bf16 values.
    bf16_model.set_precision(Precision::F32)?;
    for (name, w) in bf16_model.named_weights() {
        assert_eq!(w.dense().unwrap().dtype(), DType::F32, "{name}");
    }
    let mut rounded = f32_model.clone();
    for w in rounded.layers_mut()[1]
        .weights_mut()
        .into_iter()
        .map(|(_, w)| w)
    {
        if w.dense().unwrap().rank() == 2 {
            let t = w
                .dense()
                .unwrap()
                .to_dtype(DType::BF16)?
                .to_dtype(DType::F32)?;
            *w = Weight::Frozen(t);
        }
    }
    let (back, want) = (bf16_model.forward(&ids)?, rounded.forward(&ids)?);
    assert_eq!(max_abs_diff(&back, &want)?, 0.0);
    Ok(())
}

#[test]
fn kv_cache_matches_full_forward() -> crate::Result<()> {
    let model = Model::random(&tiny(2), 5, DType::F32)?;
    let ids = Tensor::new(&[[1u32, 5, 3, 9, 2, 8, 6]], &Device::Cpu)?;
    let full = model.forward(&ids)?;
    let mut cache = ModelCache::default();
    let a = model.forward_cached(&ids.narrow(1, 0, 4)?, &mut cache)?;
    let b = model.forward_cached(&ids.narrow(1, 4, 1)?, &mut cache)?;
    let c = model.forward_cached(&ids.narrow(1, 5, 2)?, &mut cache)?;
    assert_eq!(cache.len(), 7);
    let incremental = Tensor::cat(&[a, b, c], 1)?;
    assert_close(&incremental, &full, 1e-5)?;
    Ok(())
}

#[test]
fn layer_subset_runs_the_chosen_layers() -> crate::Result<()> {
    let config = tiny(4);
    let tensors = model::random_tensors(&config, 9, DType::F32)?;
    let full = Model::from_tensors(&config, &tensors, None)?;
    let sub = Model::from_tensors(&config, &tensors, Some(&[0, 2, 3]))?;
    assert_eq!(sub.layer_ids(), &[0, 2, 3]);
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu)?;
    let ctx = full.layer_context(0, 3)?;
    let h = full.embed(&ids)?;
    let h = full.forward_layers(h, &ctx, 0..1)?;
    let h = full.forward_layers(h, &ctx, 2..4)?;
    assert_close(&full.head(&h)?, &sub.forward(&ids)?, 1e-6)?;
    assert!(sub
        .named_weights()
        .iter()
        .all(|(n, _)| !n.starts_with("model.layers.1.")));
    Ok(())
}

#[test]
fn missing_or_misshapen_tensor_is_named() {
    let config = tiny(2);
    let mut tensors = model::random_tensors(&config, 1, DType::F32).unwrap();
    tensors.insert(
        "model.layers.1.mlp.up_proj.weight",
        Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap(),
        "shard-2.safetensors".as_ref(),
    );
    let err = Model::from_tensors(&config, &tensors, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shard-2.safetensors") && err.contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
    let tensors = model::random_tensors(&config, 1, DType::F32).unwrap();
    let err = Model::from_tensors(
        &ModelConfig {
            num_layers: 3,
            ..config
        },
        &tensors,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model.layers.2.input_layernorm.weight") && err.contains("missing"),
        "{err}"
    );
}
