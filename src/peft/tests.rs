//! LoRA on tiny random models: exactness at init, merge equivalence, gradients only on LoRA.

use super::*;
use crate::model::{ModelConfig, Weight};
use crate::ops::testing::max_abs_diff;
use candle_core::{DType, Device, Tensor};

fn model() -> Model {
    Model::random(
        &ModelConfig {
            num_layers: 3,
            ..ModelConfig::tiny()
        },
        4,
        DType::F32,
    )
    .unwrap()
}

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 5, 3, 9, 2], [4, 4, 7, 0, 10]], &Device::Cpu).unwrap()
}

/// Gives every LoRA B random values (a trained-looking update).
fn perturb_b(model: &mut Model) {
    for (name, w) in model.named_weights_mut() {
        if name.ends_with("lora_B.weight") {
            let t = crate::ops::testing::rand_tensor(w.tensor().dims(), DType::F32, 9).unwrap();
            *w = Weight::Frozen((t * 0.1).unwrap());
        }
    }
}

#[test]
fn lora_with_zero_b_reproduces_the_base_model_exactly() {
    let base = model();
    let mut lora = base.clone();
    add_lora(&mut lora, &[0, 2], &LoraConfig::default(), 1).unwrap();
    let a = base
        .forward(&ids())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = lora
        .forward(&ids())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);
    let names: Vec<String> = lora.named_weights().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"model.layers.0.self_attn.q_proj.lora_A.weight".to_string()));
    assert!(names.contains(&"model.layers.2.mlp.down_proj.lora_B.weight".to_string()));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("model.layers.1.") && is_lora_weight(n)));
}

#[test]
fn merged_and_unmerged_lora_agree() {
    let mut m = model();
    add_lora(&mut m, &[0, 1, 2], &LoraConfig::default(), 2).unwrap();
    perturb_b(&mut m);
    let unmerged = m.forward(&ids()).unwrap();
    let mut merged = m.clone();
    merge_lora(&mut merged).unwrap();
    assert!(!merged
        .named_weights()
        .iter()
        .any(|(n, _)| is_lora_weight(n)));
    let diff = max_abs_diff(&unmerged, &merged.forward(&ids()).unwrap()).unwrap();
    assert!(diff <= 1e-5, "{diff:e}");
    // The update really changes the model.
    assert!(max_abs_diff(&unmerged, &model().forward(&ids()).unwrap()).unwrap() > 1e-4);
}

#[test]
fn only_lora_weights_get_gradients() {
    let mut m = model();
    let config = LoraConfig {
        targets: vec!["q_proj".into(), "down_proj".into()],
        ..Default::default()
    };
    add_lora(&mut m, &[1], &config, 3).unwrap();
    let params = crate::train::trainable_params(&mut m, is_lora_weight).unwrap();
    assert_eq!(params.len(), 4);
    let grads = m.mean_next_token_ce(&ids()).unwrap().backward().unwrap();
    for p in &params {
        assert!(grads.get(&p.var).is_some(), "{} has no gradient", p.name);
    }
    for (name, w) in m.named_weights() {
        if !is_lora_weight(&name) {
            assert!(grads.get(w.tensor()).is_none(), "{name} got a gradient");
        }
    }
}

#[test]
fn dropout_is_reproducible_and_off_without_a_seed() {
    let x = Tensor::ones((4, 50), DType::F32, &Device::Cpu).unwrap();
    let a = lora::dropout(&x, 0.5, 7).unwrap().to_vec2::<f32>().unwrap();
    let b = lora::dropout(&x, 0.5, 7).unwrap().to_vec2::<f32>().unwrap();
    let c = lora::dropout(&x, 0.5, 8).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let zeros = a.iter().flatten().filter(|v| **v == 0.0).count();
    assert!((50..150).contains(&zeros), "{zeros} of 200 dropped");
    assert!(a.iter().flatten().all(|v| *v == 0.0 || *v == 2.0));
}

#[test]
fn unknown_target_is_an_error() {
    let mut m = model();
    let config = LoraConfig {
        targets: vec!["c_attn".into()],
        ..Default::default()
    };
    let err = add_lora(&mut m, &[0], &config, 1).unwrap_err().to_string();
    assert!(err.contains("c_attn"), "{err}");
}
