//! Distillation on tiny random models: the KD and output-KL losses against hand computations,
//! what trains, that the losses fall (also under a returned adapter), and a bit-identical resume.

use super::*;
use crate::emulator::package::layer_index;
use crate::emulator::EmulatorOptions;
use crate::model::ModelConfig;
use candle_core::{DType, Device};

#[test]
fn kd_loss_matches_a_hand_computation() {
    // Two positions of width 2; the second is padding and must not count.
    let t = Tensor::new(&[[[1.0f32, 2.0], [9.0, 9.0]]], &Device::Cpu).unwrap();
    let s = Tensor::new(&[[[0.0f32, 4.0], [0.0, 0.0]]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1.0f32, 0.0]], &Device::Cpu).unwrap();
    let kd = kd_loss(&t, &s, &mask).unwrap().to_scalar::<f32>().unwrap();
    // mean((1-0)², (2-4)²) / mean(1², 2²) = 2.5 / 2.5 = 1.
    assert!((kd - 1.0).abs() < 1e-7, "{kd}");
    let same = kd_loss(&t, &t, &mask).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(same, 0.0);
    // Per token: position 0's ‖(1, −2)‖² / ‖(1, 2)‖² = 1, and a second real position with
    // t = (10, 0), s = (9, 0) adds 1/100: the mean is 0.505, where the block loss would
    // give (5 + 1) / (5 + 100).
    let t = Tensor::new(&[[[1.0f32, 2.0], [10.0, 0.0], [3.0, 3.0]]], &Device::Cpu).unwrap();
    let s = Tensor::new(&[[[0.0f32, 4.0], [9.0, 0.0], [0.0, 0.0]]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1.0f32, 1.0, 0.0]], &Device::Cpu).unwrap();
    let kd = kd_loss_per_token(&t, &s, &mask)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((kd - 0.505).abs() < 1e-6, "{kd}");
    let block = kd_loss(&t, &s, &mask).unwrap().to_scalar::<f32>().unwrap();
    assert!((block - 6.0 / 105.0).abs() < 1e-6, "{block}");
}

#[test]
fn logit_kl_matches_a_hand_computation() {
    // Position 0: teacher p = softmax(0, ln 3) = (1/4, 3/4), student q = (1/2, 1/2):
    // KL = 1/4 ln(1/2) + 3/4 ln(3/2). Position 1 is masked; identical logits give 0.
    let t = Tensor::new(&[[[0.0f32, 3f32.ln()], [5.0, 0.0]]], &Device::Cpu).unwrap();
    let s = Tensor::new(&[[[1.0f32, 1.0], [0.0, 5.0]]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1.0f32, 0.0]], &Device::Cpu).unwrap();
    let kl = logit_kl(&t, &s, &mask).unwrap().to_scalar::<f32>().unwrap();
    let want = 0.25 * 0.5f32.ln() + 0.75 * 1.5f32.ln();
    assert!((kl - want).abs() < 1e-6, "{kl} vs {want}");
    let same = logit_kl(
        &t,
        &t,
        &Tensor::new(&[[1.0f32, 1.0]], &Device::Cpu).unwrap(),
    )
    .unwrap()
    .to_scalar::<f32>()
    .unwrap();
    assert!(same.abs() < 1e-6, "{same}");
}

#[test]
fn the_output_term_alone_trains_the_emulator_towards_the_full_models_distribution() {
    let (full, pkg, data) = setup();
    let weights = DistillWeights {
        kd_weight: 0.0,
        lm_weight: 0.0,
        kd_norm: KdNorm::Token,
        logit_weight: 1.0,
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d.offsite");
    let options = TrainOptions {
        max_steps: Some(12),
        lr: 2e-3,
        ..opts()
    };
    let (trained, _) =
        distill(&full, &pkg, None, &data, None, &options, &weights, 0, &out).unwrap();
    let mut student = pkg.model().unwrap();
    let before = kl_of(&full, &student, &data);
    for (name, w) in student.named_weights_mut() {
        if let Some(t) = trained.get(&name) {
            *w = crate::model::Weight::Frozen(t.clone());
        }
    }
    let after = kl_of(&full, &student, &data);
    assert!(after < 0.8 * before, "KL {before} -> {after}");
}

#[test]
fn distilling_under_a_returned_adapter_lowers_the_kd_under_it() {
    let (full, pkg, data) = setup();
    // A' changes the bottom adapter layer: the emulator must learn the middle's response
    // to A'_bottom's outputs.
    let mut changed = BTreeMap::new();
    for (name, t) in pkg.tensors.iter() {
        if layer_index(name) == Some(0) && t.rank() == 2 {
            changed.insert(name.to_string(), (t * 1.4).unwrap());
        }
    }
    let adapter = crate::emulator::Adapter::from_weights(&pkg, &changed, None, None).unwrap();
    let mut plugged = Model::random(&full.config().clone(), 12, DType::F32).unwrap();
    adapter.apply(&mut plugged).unwrap();
    let weights = DistillWeights {
        kd_weight: 1.0,
        lm_weight: 0.0,
        kd_norm: KdNorm::Token,
        logit_weight: 0.0,
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d.offsite");
    let options = TrainOptions {
        max_steps: Some(12),
        lr: 2e-3,
        ..opts()
    };
    let (trained, _) = distill(
        &plugged,
        &pkg,
        Some(&adapter),
        &data,
        None,
        &options,
        &weights,
        0,
        &out,
    )
    .unwrap();
    assert!(trained
        .keys()
        .all(|n| in_layers(n, &pkg.meta.split.emulator)));
    // The KD loss under A' went down.
    let rows: Vec<&Sequence> = data.iter().take(4).collect();
    let batch = Batch::new(&rows, 0, &Device::Cpu).unwrap();
    let kd = |student: &Model| {
        let pair = Pair {
            student,
            teacher: &plugged,
            bottom: 2,
            emulator: 2,
            middle: 2..7,
            weights: &weights,
        };
        pair.loss(&batch, None).unwrap().to_scalar::<f32>().unwrap()
    };
    let mut before = pkg.model().unwrap();
    adapter.apply(&mut before).unwrap();
    let mut after = pkg.model().unwrap();
    adapter.apply(&mut after).unwrap();
    for (name, w) in after.named_weights_mut() {
        if let Some(t) = trained.get(&name) {
            *w = crate::model::Weight::Frozen(t.clone());
        }
    }
    let (b, a) = (kd(&before), kd(&after));
    assert!(a < 0.8 * b, "KD under A' {b} -> {a}");
    // An adapter tuned through another package is refused.
    let other = Package::build(
        &full,
        None,
        EmulatorOptions::layer_drop(2, 2, 2),
        Path::new("o.offsite"),
    )
    .unwrap();
    let foreign =
        crate::emulator::Adapter::from_weights(&other, &BTreeMap::new(), None, None).unwrap();
    let err = distill(
        &plugged,
        &pkg,
        Some(&foreign),
        &data,
        None,
        &options,
        &weights,
        0,
        &out,
    );
    assert!(err.is_err());
}

/// Mean KL(full ‖ student) of the next-token distributions over `data`.
fn kl_of(full: &Model, student: &Model, data: &[Sequence]) -> f32 {
    let rows: Vec<&Sequence> = data.iter().collect();
    let batch = Batch::new(&rows, 0, &Device::Cpu).unwrap();
    let mask = position_mask(&batch).unwrap();
    let t = full.forward(&batch.inputs).unwrap();
    let s = student.forward(&batch.inputs).unwrap();
    logit_kl(&t, &s, &mask).unwrap().to_scalar::<f32>().unwrap()
}

fn setup() -> (Model, Package, Vec<Sequence>) {
    let config = ModelConfig {
        num_layers: 8,
        ..ModelConfig::tiny()
    };
    let full = Model::random(&config, 12, DType::F32).unwrap();
    let options = EmulatorOptions::layer_drop(2, 2, 1);
    let pkg = Package::build(&full, None, options, Path::new("d.offsite")).unwrap();
    let data = (0..12)
        .map(|i| Sequence {
            ids: (0..10).map(|j| ((i * 5 + j * 7) % 31 + 1) as u32).collect(),
            loss_from: 1,
        })
        .collect();
    (full, pkg, data)
}

fn opts() -> TrainOptions {
    TrainOptions {
        max_steps: Some(6),
        batch_size: 3,
        lr: 1e-2,
        eval_every: 2,
        save_every: 2,
        ..TrainOptions::default()
    }
}

#[test]
fn distillation_trains_only_emulator_layers_and_lowers_the_kd_loss() {
    let (full, pkg, data) = setup();
    let dir = tempfile::tempdir().unwrap();
    let weights = DistillWeights {
        kd_weight: 1.0,
        lm_weight: 0.0,
        kd_norm: KdNorm::Block,
        logit_weight: 0.0,
    };
    let out = dir.path().join("d.offsite");
    let options = TrainOptions {
        max_steps: Some(12),
        lr: 2e-3,
        ..opts()
    };
    let val = Some(&data[..3]);
    let (trained, summary) =
        distill(&full, &pkg, None, &data, val, &options, &weights, 0, &out).unwrap();
    assert_eq!(summary.steps, 12);
    let emulator = &pkg.meta.split.emulator;
    assert!(!trained.is_empty());
    for name in trained.keys() {
        assert!(
            in_layers(name, emulator),
            "{name} is not an emulator weight"
        );
    }
    // Every emulator weight trained, each changed.
    let expected = pkg
        .tensors
        .names()
        .filter(|n| in_layers(n, emulator))
        .count();
    assert_eq!(trained.len(), expected);
    // The distilled package uses the trained weights and records how it was made.
    let record = DistillRecord {
        corpus: "c".into(),
        weights: weights.clone(),
        training: options,
        metrics: summary,
        previous: None,
        adapter: None,
    };
    let built = Package::build_with(
        &full,
        None,
        pkg.meta.options.clone(),
        Some((&trained, record.clone())),
        &out,
    )
    .unwrap();
    // The KD loss on held-out data went down.
    let val: Vec<&Sequence> = data[..3].iter().collect();
    let batch = Batch::new(&val, 0, &Device::Cpu).unwrap();
    let kd = |student: &Model| {
        let pair = Pair {
            student,
            teacher: &full,
            bottom: 2,
            emulator: 2,
            middle: 2..7,
            weights: &weights,
        };
        pair.loss(&batch, None).unwrap().to_scalar::<f32>().unwrap()
    };
    let (before, after) = (kd(&pkg.model().unwrap()), kd(&built.model().unwrap()));
    assert!(after < 0.8 * before, "KD {before} -> {after}");
    built.save(&out).unwrap();
    let back = Package::load(&out, &Device::Cpu).unwrap();
    assert_eq!(back.meta.distillation, Some(record));
    for (name, t) in back.tensors.iter() {
        let original = pkg.tensors.get(name, t.dims()).unwrap();
        let changed = crate::ops::testing::max_abs_diff(t, &original).unwrap() > 0.0;
        assert_eq!(changed, trained.contains_key(name), "{name}");
    }
}

#[test]
fn killed_and_resumed_distillation_is_bit_identical() {
    let (full, pkg, data) = setup();
    let weights = DistillWeights::default_for_tests();
    let d1 = tempfile::tempdir().unwrap();
    let out1 = d1.path().join("d.offsite");
    let (straight, _) = distill(
        &full,
        &pkg,
        None,
        &data,
        Some(&data[..3]),
        &opts(),
        &weights,
        0,
        &out1,
    )
    .unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let out2 = d2.path().join("d.offsite");
    let args = (&full, &pkg, &data, Some(&data[..3]));
    let err = distill_until(
        args.0,
        args.1,
        None,
        args.2,
        args.3,
        &opts(),
        &weights,
        0,
        &out2,
        Some(3),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Interrupted(3)), "{err}");
    let resume = TrainOptions {
        resume: true,
        ..opts()
    };
    let (resumed, _) = distill(
        args.0, args.1, None, args.2, args.3, &resume, &weights, 0, &out2,
    )
    .unwrap();
    for (name, t) in &straight {
        let d = crate::ops::testing::max_abs_diff(t, &resumed[name]).unwrap();
        assert!(d == 0.0, "{name} differs by {d:e}");
    }
}

impl DistillWeights {
    fn default_for_tests() -> Self {
        DistillWeights {
            kd_weight: 30.0,
            lm_weight: 1.0,
            kd_norm: KdNorm::Token,
            logit_weight: 0.5,
        }
    }
}
