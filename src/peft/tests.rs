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

/// Gives every weight whose name ends with one of `suffixes` small random values (a
/// trained-looking update), trainable or frozen.
fn perturb(model: &mut Model, suffixes: &[&str], seed: u64, trainable: bool) {
    for (name, w) in model.named_weights_mut() {
        if suffixes.iter().any(|s| name.ends_with(s)) {
            let t = crate::ops::testing::rand_tensor(w.dense().unwrap().dims(), DType::F32, seed)
                .unwrap();
            let t = (t * 0.1).unwrap();
            *w = if trainable {
                Weight::Trainable(candle_core::Var::from_tensor(&t).unwrap())
            } else {
                Weight::Frozen(t)
            };
        }
    }
}

/// Gives every LoRA B random values.
fn perturb_b(model: &mut Model) {
    perturb(model, &["lora_B.weight"], 9, false);
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
            assert!(
                grads.get(w.dense().unwrap()).is_none(),
                "{name} got a gradient"
            );
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

/// Gives every bottleneck's `up` random values (a trained-looking adapter).
fn perturb_up(model: &mut Model) {
    perturb(model, &["adapter.up.weight", "adapter.up.bias"], 5, true);
}

#[test]
fn bottleneck_with_zero_up_reproduces_the_base_model_exactly() {
    let base = model();
    let mut adapted = base.clone();
    add_bottleneck(&mut adapted, &[0, 2], &BottleneckConfig::default(), 1).unwrap();
    let a = base.forward(&ids()).unwrap().to_vec3::<f32>().unwrap();
    let b = adapted.forward(&ids()).unwrap().to_vec3::<f32>().unwrap();
    assert_eq!(a, b);
    let names: Vec<String> = adapted
        .named_weights()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for suffix in bottleneck::WEIGHT_SUFFIXES {
        for module in ["self_attn.o_proj", "mlp.down_proj"] {
            let name = format!("model.layers.2.{module}.{suffix}");
            assert!(names.contains(&name), "{name} missing");
        }
    }
    let h = ModelConfig::tiny().hidden_size;
    let shapes: Vec<Vec<usize>> = adapted
        .named_weights()
        .into_iter()
        .filter(|(n, _)| n.starts_with("model.layers.0.self_attn.o_proj.adapter."))
        .map(|(_, w)| w.dense().unwrap().dims().to_vec())
        .collect();
    assert_eq!(shapes, [vec![64, h], vec![64], vec![h, 64], vec![h]]);
    assert_eq!(
        names.iter().filter(|n| is_bottleneck_weight(n)).count(),
        2 * 2 * 4
    );
    // A trained adapter changes the output.
    perturb_up(&mut adapted);
    let c = adapted.forward(&ids()).unwrap();
    assert!(max_abs_diff(&c, &base.forward(&ids()).unwrap()).unwrap() > 1e-4);
}

#[test]
fn only_bottleneck_weights_get_gradients() {
    let mut m = model();
    add_bottleneck(&mut m, &[1], &BottleneckConfig::default(), 3).unwrap();
    // With `up` = 0 the gradient of `down` is exactly zero; start from a trained-looking `up`.
    perturb_up(&mut m);
    let params = crate::train::trainable_params(&mut m, is_bottleneck_weight).unwrap();
    assert_eq!(params.len(), 2 * 4);
    let grads = m.mean_next_token_ce(&ids()).unwrap().backward().unwrap();
    for p in &params {
        let g = grads.get(&p.var).expect("a gradient");
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{} has a zero gradient", p.name);
    }
    for (name, w) in m.named_weights() {
        if !is_bottleneck_weight(&name) {
            assert!(
                grads.get(w.dense().unwrap()).is_none(),
                "{name} got a gradient"
            );
        }
    }
}

#[test]
fn bottleneck_gradient_matches_finite_differences() {
    let config = BottleneckConfig {
        size: 3,
        dropout: 0.0,
        ..Default::default()
    };
    let mut b = Bottleneck::init(5, &config, 4, DType::F64).unwrap();
    let up = crate::ops::testing::rand_tensor(&[5, 3], DType::F64, 2).unwrap();
    b.up = Weight::Trainable(candle_core::Var::from_tensor(&up).unwrap());
    let y = crate::ops::testing::rand_tensor(&[2, 4, 5], DType::F64, 3).unwrap();
    let w = crate::ops::testing::rand_tensor(&[2, 4, 5], DType::F64, 6).unwrap();
    let loss = |b: &Bottleneck| -> f64 {
        (b.forward(&y, None).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = (b.forward(&y, None).unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for i in 0..4 {
        let var = b.weights()[i].var().unwrap().clone();
        let g = grads
            .get(&var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (k, &gk) in g.iter().enumerate() {
            let eps = 1e-6;
            let at = |d: f64| {
                let mut v = base.clone();
                v[k] += d;
                let mut c = b.clone();
                *c.weights_mut()[i] = Weight::Frozen(
                    Tensor::from_vec(v, var.as_tensor().dims(), &Device::Cpu).unwrap(),
                );
                loss(&c)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!((fd - gk).abs() < 1e-6, "weight {i}[{k}]: fd {fd} vs {gk}");
        }
    }
}

#[test]
fn stored_bottlenecks_are_rebuilt_from_tensors() {
    let mut m = model();
    add_bottleneck(&mut m, &[0, 1], &BottleneckConfig::default(), 5).unwrap();
    perturb_up(&mut m);
    let tensors = m.to_tensor_map(std::path::Path::new("plugged")).unwrap();
    let mut back = Model::from_tensors(m.config(), &tensors, None).unwrap();
    assert_eq!(attach_stored_bottlenecks(&mut back, &tensors).unwrap(), 4);
    assert_eq!(
        m.forward(&ids()).unwrap().to_vec3::<f32>().unwrap(),
        back.forward(&ids()).unwrap().to_vec3::<f32>().unwrap()
    );
    // A misshapen adapter tensor is an error that names it.
    let mut bad = crate::model::TensorMap::new("bad");
    for (name, t) in tensors.iter() {
        let t = if name == "model.layers.1.mlp.down_proj.adapter.up.bias" {
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()
        } else {
            t.clone()
        };
        bad.insert(name, t, std::path::Path::new("bad"));
    }
    let mut fresh = Model::from_tensors(m.config(), &bad, None).unwrap();
    let err = attach_stored_bottlenecks(&mut fresh, &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter.up.bias"), "{err}");
}

#[test]
fn methods_train_what_they_say() {
    let name = "model.layers.0.self_attn.o_proj";
    let lora = Method::Lora(LoraConfig::default());
    let adapter = Method::Adapter(BottleneckConfig::default());
    assert!(Method::Full.trains(&format!("{name}.weight"), 2));
    assert!(!Method::Full.trains(&format!("{name}.lora_A.weight"), 2));
    assert!(lora.trains(&format!("{name}.lora_B.weight"), 2));
    assert!(!lora.trains(&format!("{name}.weight"), 2));
    assert!(adapter.trains(&format!("{name}.adapter.down.bias"), 1));
    assert!(!adapter.trains("model.layers.0.input_layernorm.weight", 1));
    assert!(Method::BitFit.trains("model.layers.0.input_layernorm.weight", 1));
    assert!(!Method::BitFit.trains(&format!("{name}.weight"), 2));
    assert!(!Method::BitFit.trains(&format!("{name}.adapter.up.bias"), 1));
}
