//! Alignment on tiny random models: nothing to align when A' = A, only the named weights
//! move, the KL to the target falls, templates end at the answer position, and a killed
//! alignment resumes bit-identically.

use super::*;
use crate::emulator::make::distill::logit_kl;
use crate::emulator::package::in_layers;
use crate::emulator::EmulatorOptions;
use crate::io::checkpoint::CheckpointFormat;
use crate::model::model::random_tensors;
use crate::model::ModelConfig;
use candle_core::{DType, Device};

fn config() -> ModelConfig {
    ModelConfig {
        num_layers: 6,
        ..ModelConfig::tiny()
    }
}

/// A random full model as a checkpoint, its package (1 + 2 + 1 layers) and a returned adapter:
/// the package's own (A' = A) or one whose matrices were scaled (A' ≠ A).
fn setup(changed: bool) -> (Checkpoint, Package, Adapter) {
    let config = config();
    let ckpt = Checkpoint {
        path: "tiny".into(),
        format: CheckpointFormat::HfDir,
        config: config.clone(),
        tensors: random_tensors(&config, 5, DType::F32).unwrap(),
        tokenizer: None,
        stored_dtypes: Default::default(),
    };
    let full = ckpt.model().unwrap();
    let options = EmulatorOptions::layer_drop(1, 2, 1);
    let pkg = Package::build(&full, None, options, Path::new("p.offsite")).unwrap();
    let mut trained = BTreeMap::new();
    if changed {
        for (name, t) in pkg.tensors.iter() {
            let adapter_layer = in_layers(name, &pkg.meta.split.adapter());
            if adapter_layer && t.rank() == 2 {
                trained.insert(name.to_string(), (t * 1.3).unwrap());
            }
        }
    }
    let adapter = Adapter::from_weights(&pkg, &trained, None, None).unwrap();
    (ckpt, pkg, adapter)
}

fn data() -> Vec<Sequence> {
    (0..8)
        .map(|i| Sequence {
            ids: (0..10).map(|j| ((i * 5 + j * 7) % 31 + 1) as u32).collect(),
            loss_from: 1,
        })
        .collect()
}

fn training() -> TrainOptions {
    TrainOptions {
        max_steps: Some(6),
        batch_size: 4,
        lr: 1e-2,
        eval_every: 3,
        save_every: 2,
        ..TrainOptions::default()
    }
}

fn options(params: AlignParams) -> AlignOptions {
    AlignOptions {
        target: AlignTarget::Proxy,
        positions: AlignPositions::All,
        params,
        alpha: 1.0,
        pull: 0.0,
        template: None,
        lora_r: None,
    }
}

fn run(
    (ckpt, pkg, adapter): &(Checkpoint, Package, Adapter),
    opts: &AlignOptions,
    out: &Path,
    stop_at: Option<usize>,
    training: &TrainOptions,
) -> Result<Adapter> {
    let d = data();
    let run = AlignRun {
        ckpt,
        package: pkg,
        adapter,
        data: &d,
        val: Some(&d[..2]),
        corpus: ("public.jsonl", "00"),
        options: opts,
        training,
        pad: 0,
        output: out,
    };
    align_until(&run, stop_at)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    crate::ops::testing::max_abs_diff(a, b).unwrap()
}

#[test]
fn with_an_unchanged_adapter_the_loss_and_gradient_are_zero_and_nothing_moves() {
    let parts = setup(false);
    let (ckpt, pkg, adapter) = &parts;
    // The loss and its gradient on one batch, by hand through `Alignment`.
    let proxy = Proxy::new(ckpt, pkg, adapter, 1.0).unwrap();
    let mut student = plug(ckpt, adapter).unwrap();
    let params =
        trainable_params(&mut student, |n| in_layers(n, &pkg.meta.split.adapter())).unwrap();
    let opts = AlignOptions {
        pull: 10.0,
        ..options(AlignParams::All)
    };
    let alignment = Alignment {
        student: &student,
        proxy: &proxy,
        options: &opts,
        pull: Pull::new(&params, opts.pull).unwrap(),
    };
    let d = data();
    let rows: Vec<&Sequence> = d.iter().take(4).collect();
    let batch = Batch::new(&rows, 0, &Device::Cpu).unwrap();
    let loss = alignment.loss(&batch, None).unwrap();
    assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
    // The written-out gradient is the KL's: against autograd through log-softmax, on logits
    // that differ.
    let t = Tensor::new(&[[[0.3f32, -1.0, 2.0], [1.0, 0.0, 0.5]]], &Device::Cpu).unwrap();
    let s = candle_core::Var::new(&[[[1.0f32, 0.2, -0.4], [0.1, 0.9, 0.0]]], &Device::Cpu).unwrap();
    let m = Tensor::new(&[[1.0f32, 1.0]], &Device::Cpu).unwrap();
    let ours = kl_with_exact_gradient(&t, s.as_tensor(), &m).unwrap();
    let auto = logit_kl(&t, s.as_tensor(), &m).unwrap();
    let v = |x: &Tensor| x.to_scalar::<f32>().unwrap();
    assert!((v(&ours) - v(&auto)).abs() < 1e-6);
    let (g1, g2) = (ours.backward().unwrap(), auto.backward().unwrap());
    let (g1, g2) = (
        g1.get(s.as_tensor()).unwrap(),
        g2.get(s.as_tensor()).unwrap(),
    );
    assert!(max_diff(g1, g2) < 1e-6);
    let grads = loss.backward().unwrap();
    for p in &params {
        let g = grads.get(p.var.as_tensor()).expect("a gradient");
        let zero = g.zeros_like().unwrap();
        assert_eq!(max_diff(g, &zero), 0.0, "{}", p.name);
    }
    // A whole alignment run leaves every weight as it was, bit for bit.
    for params in [AlignParams::Norms, AlignParams::All] {
        let dir = tempfile::tempdir().unwrap();
        let aligned = run(
            &parts,
            &options(params),
            &dir.path().join("a"),
            None,
            &training(),
        )
        .unwrap();
        for (name, t) in adapter.tensors.iter() {
            let got = aligned.tensors.get(name, t.dims()).unwrap();
            assert_eq!(max_diff(t, &got), 0.0, "{params:?}: {name} moved");
        }
    }
}

#[test]
fn only_the_named_weights_change_and_the_kl_to_the_proxy_falls() {
    let parts = setup(true);
    let (ckpt, pkg, adapter) = &parts;
    let dir = tempfile::tempdir().unwrap();
    let training = TrainOptions {
        max_steps: Some(15),
        lr: 3e-3,
        ..training()
    };
    let aligned = run(
        &parts,
        &options(AlignParams::Top),
        &dir.path().join("a"),
        None,
        &training,
    )
    .unwrap();
    let record = aligned.meta.alignment.as_ref().expect("recorded");
    let top = &pkg.meta.split.top;
    assert!(!record.trained.is_empty());
    for (name, t) in adapter.tensors.iter() {
        let got = aligned.tensors.get(name, t.dims()).unwrap();
        let in_top = in_layers(name, top);
        assert_eq!(record.trained.iter().any(|n| n == name), in_top, "{name}");
        assert_eq!(max_diff(t, &got) > 0.0, in_top, "{name}");
    }
    assert_eq!(record.metrics.steps, 15);
    // The held-out KL is measured before and falls.
    let (before, best) = (
        record.val_loss_before.unwrap(),
        record.metrics.best_val_loss.unwrap(),
    );
    assert!(best < before, "held-out KL {before} -> {best}");
    assert_eq!(record.corpus_sha256, "00");
    // The fingerprint chain is kept: the aligned adapter plugs into the same model.
    assert_eq!(
        aligned.meta.package_fingerprint,
        adapter.meta.package_fingerprint
    );
    // KL(proxy ‖ plugged) on the data, before and after.
    let proxy = Proxy::new(ckpt, pkg, adapter, 1.0).unwrap();
    let d = data();
    let rows: Vec<&Sequence> = d.iter().collect();
    let batch = Batch::new(&rows, 0, &Device::Cpu).unwrap();
    let mask = loss_mask(&batch, AlignPositions::All).unwrap();
    let target = proxy.logits(&batch.inputs, false).unwrap();
    let kl = |a: &Adapter| {
        let m = plug(ckpt, a).unwrap();
        let s = m.forward(&batch.inputs).unwrap();
        logit_kl(&target, &s, &mask)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (before, after) = (kl(adapter), kl(&aligned));
    assert!(after < 0.7 * before, "KL {before} -> {after}");
    // It saves, loads and shows how it was aligned; it cannot be aligned twice.
    let path = dir.path().join("aligned.safetensors");
    aligned.save(&path).unwrap();
    let back = Adapter::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.meta, aligned.meta);
    let (d, top) = (data(), options(AlignParams::Top));
    let again = align(&AlignRun {
        ckpt,
        package: pkg,
        adapter: &back,
        data: &d,
        val: None,
        corpus: ("public.jsonl", "00"),
        options: &top,
        training: &training,
        pad: 0,
        output: &dir.path().join("b"),
    });
    assert!(again.unwrap_err().to_string().contains("already aligned"));
}

#[test]
fn killed_and_resumed_alignment_is_bit_identical() {
    let parts = setup(true);
    let whole = AlignOptions {
        pull: 1.0,
        ..options(AlignParams::All)
    };
    for opts in [whole, options(AlignParams::LoraTop)] {
        let d1 = tempfile::tempdir().unwrap();
        let straight = run(&parts, &opts, &d1.path().join("a"), None, &training()).unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let out = d2.path().join("a");
        let err = run(&parts, &opts, &out, Some(3), &training()).unwrap_err();
        assert!(matches!(err, Error::Interrupted(3)), "{err}");
        let resume = TrainOptions {
            resume: true,
            ..training()
        };
        let resumed = run(&parts, &opts, &out, None, &resume).unwrap();
        let mut moved = 0;
        for (name, t) in straight.tensors.iter() {
            let got = resumed.tensors.get(name, t.dims()).unwrap();
            assert_eq!(max_diff(t, &got), 0.0, "{:?}: {name}", opts.params);
            let given = parts.2.tensors.get(name, t.dims()).unwrap();
            moved += (max_diff(t, &given) > 0.0) as usize;
        }
        assert!(moved > 0, "{:?}: nothing was aligned", opts.params);
    }
}

#[test]
fn templated_documents_end_at_the_answer_position() {
    let tok = Tokenizer::tiny_byte_level();
    let eos = tok.eos_id().unwrap();
    let docs = vec!["hello world".to_string(), "x".repeat(300)];
    let seqs = align_sequences(&tok, &docs, 16, Some("Q: {text}\nA:")).unwrap();
    assert_eq!(seqs.len(), 2);
    let suffix = tok.encode("\nA:").unwrap();
    for s in &seqs {
        // The last input is the template's last token; the appended EOS is only a target.
        assert_eq!(*s.ids.last().unwrap(), eos);
        let inputs = &s.ids[..s.ids.len() - 1];
        assert!(inputs.ends_with(&suffix[suffix.len() - 1..]));
        assert!(inputs.len() <= 16);
    }
    // The last-position mask marks exactly that input.
    let rows: Vec<&Sequence> = seqs.iter().collect();
    let batch = Batch::new(&rows, 0, &Device::Cpu).unwrap();
    let m = loss_mask(&batch, AlignPositions::Last)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (row, s) in m.iter().zip(&seqs) {
        assert_eq!(row.iter().sum::<f32>(), 1.0);
        assert_eq!(row[s.ids.len() - 2], 1.0);
    }
    let err = align_sequences(&tok, &docs, 16, Some("no slot")).unwrap_err();
    assert!(err.to_string().contains("{text}"), "{err}");
    // Without a template the documents are packed into blocks.
    let packed = align_sequences(&tok, &docs, 16, None).unwrap();
    assert!(packed.iter().all(|s| s.ids.len() <= 17));
}

#[test]
fn a_lora_alignment_changes_only_the_top_layers_maps_and_merges_into_a_full_adapter() {
    let lora = AlignOptions {
        lora_r: Some(2),
        ..options(AlignParams::LoraTop)
    };
    // A' = A: zero gradient, B stays zero, the merged weights are A's bit for bit.
    let same = setup(false);
    let dir = tempfile::tempdir().unwrap();
    let aligned = run(&same, &lora, &dir.path().join("a"), None, &training()).unwrap();
    for (name, t) in same.2.tensors.iter() {
        let got = aligned.tensors.get(name, t.dims()).unwrap();
        assert_eq!(max_diff(t, &got), 0.0, "{name} moved");
    }
    // A' ≠ A: exactly the top layers' linear maps move; the KL falls; the result is a full
    // adapter that plugs.
    let parts = setup(true);
    let (ckpt, pkg, adapter) = &parts;
    let training = TrainOptions {
        max_steps: Some(15),
        lr: 3e-3,
        ..training()
    };
    let aligned = run(&parts, &lora, &dir.path().join("b"), None, &training).unwrap();
    assert_eq!(aligned.kind(), "full");
    let record = aligned.meta.alignment.as_ref().expect("recorded");
    let top = &pkg.meta.split.top;
    let mut moved = 0;
    for (name, t) in adapter.tensors.iter() {
        let got = aligned.tensors.get(name, t.dims()).unwrap();
        let in_top = in_layers(name, top);
        let changed = max_diff(t, &got) > 0.0;
        assert_eq!(changed, record.trained.iter().any(|n| n == name), "{name}");
        assert!(!changed || (in_top && t.rank() == 2), "{name} moved");
        moved += changed as usize;
    }
    // The family's default LoRA maps: every linear map of the top layer (7 for LLaMA).
    assert_eq!(moved, 7 * top.len());
    assert_eq!(record.trained.len(), moved);
    let (before, best) = (
        record.val_loss_before.unwrap(),
        record.metrics.best_val_loss.unwrap(),
    );
    assert!(best < before, "held-out KL {before} -> {best}");
    // The update is low-rank: each moved map differs from A' by a matrix of rank ≤ 2.
    for name in &record.trained {
        let t = adapter
            .tensors
            .get(name, adapter.tensors.dims(name).unwrap())
            .unwrap();
        let d = (aligned.tensors.get(name, t.dims()).unwrap() - &t).unwrap();
        assert!(numerical_rank(&d) <= 2, "{name}");
    }
    let plugged = plug(ckpt, &aligned).unwrap();
    assert_eq!(
        plugged.num_parameters(),
        ckpt.model().unwrap().num_parameters()
    );
    // The rank is only for LoRA alignments.
    let wrong = AlignOptions {
        lora_r: Some(4),
        ..options(AlignParams::Norms)
    };
    let err = run(&parts, &wrong, &dir.path().join("c"), None, &training).unwrap_err();
    assert!(err.to_string().contains("lora-top"), "{err}");
}

/// The numerical rank of `m`: how many of its rows Gram–Schmidt keeps as new directions (a
/// remainder above 1e-3 of the longest row).
fn numerical_rank(m: &Tensor) -> usize {
    let rows = m.to_vec2::<f32>().unwrap();
    let mut basis: Vec<Vec<f64>> = Vec::new();
    let scale = rows
        .iter()
        .map(|r| r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt())
        .fold(0.0, f64::max);
    for r in &rows {
        let mut v: Vec<f64> = r.iter().map(|&x| x as f64).collect();
        for b in &basis {
            let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
            v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
        }
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n > 1e-3 * scale {
            basis.push(v.iter().map(|x| x / n).collect());
        }
    }
    basis.len()
}

/// Aligns the tiny setup's returned adapter with a rank-2 LoRA part `params` for 10 steps and
/// checks that exactly the weights `should(name, rank, split)` moved and were recorded; returns
/// how many moved.
fn check_lora_part(
    params: AlignParams,
    should: impl Fn(&str, usize, &crate::emulator::Split) -> bool,
) -> usize {
    let parts = setup(true);
    let (_, pkg, adapter) = &parts;
    let dir = tempfile::tempdir().unwrap();
    let training = TrainOptions {
        max_steps: Some(10),
        lr: 3e-3,
        ..training()
    };
    let opts = AlignOptions {
        lora_r: Some(2),
        ..options(params)
    };
    let aligned = run(&parts, &opts, &dir.path().join("a"), None, &training).unwrap();
    assert_eq!(aligned.kind(), "full");
    let record = aligned.meta.alignment.as_ref().expect("recorded");
    let mut moved = 0;
    for (name, t) in adapter.tensors.iter() {
        let got = aligned.tensors.get(name, t.dims()).unwrap();
        let should = should(name, t.rank(), &pkg.meta.split);
        assert_eq!(max_diff(t, &got) > 0.0, should, "{name}");
        assert_eq!(record.trained.iter().any(|n| n == name), should, "{name}");
        moved += should as usize;
    }
    moved
}

#[test]
fn lora_and_norm_gains_together_change_the_top_maps_and_every_adapter_norm() {
    check_lora_part(AlignParams::LoraTopNorms, |name, rank, split| {
        rank == 1 || in_layers(name, &split.top)
    });
    assert!(options(AlignParams::LoraTopNorms)
        .trained_part()
        .contains("norm gains"));
}

#[test]
fn lora_all_changes_every_adapter_layers_maps_and_nothing_else() {
    let both = |split: &crate::emulator::Split| [split.bottom.as_slice(), &split.top].concat();
    let moved = check_lora_part(AlignParams::LoraAll, |name, rank, split| {
        rank == 2 && in_layers(name, &both(split))
    });
    // Every linear map of every adapter layer (7 per LLaMA layer), bottom ones included.
    let split = &setup(true).1.meta.split;
    assert!(!split.bottom.is_empty());
    assert_eq!(moved, 7 * both(split).len());
    assert!(options(AlignParams::LoraAll)
        .trained_part()
        .contains("every adapter layer"));
}
