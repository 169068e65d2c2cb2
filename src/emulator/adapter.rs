//! The tuned adapter the data owner sends back: the adapter layers' weights only, with the
//! fingerprints of the emulator package (and its source model) they were tuned through, the
//! training options and the final metrics.

use super::fingerprint::short;
use super::package::{in_layers, Package};
use crate::io::offsite_file::{self, Seal, ADAPTER_FORMAT, PEFT_WEIGHTS};
use crate::model::{Model, TensorMap};
use crate::peft::{is_bottleneck_weight, is_lora_weight, BottleneckConfig, LoraConfig, Method};
use crate::train::{TrainOptions, TrainSummary};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Current adapter format version.
pub const ADAPTER_VERSION: u32 = 1;

/// The adapter's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    /// Always [`ADAPTER_FORMAT`].
    pub format: String,
    /// [`ADAPTER_VERSION`] when written.
    pub format_version: u32,
    /// Fingerprint of the emulator package it was tuned through.
    pub package_fingerprint: String,
    /// Fingerprint of the full model that package was made from.
    pub source_fingerprint: String,
    /// Original indices of the adapter layers.
    pub adapter_layers: Vec<usize>,
    /// How it was trained (absent for an untrained adapter).
    pub training: Option<TrainOptions>,
    /// How training went.
    pub metrics: Option<TrainSummary>,
    /// For a LoRA adapter, its configuration (the tensors are then the LoRA `A`/`B` matrices,
    /// saved in Hugging Face PEFT's layout).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// For a bottleneck adapter, its configuration (the tensors are then the adapters' weights,
    /// `…o_proj.adapter.down.weight` etc.; they cannot be merged into the model's weights).
    #[serde(default)]
    pub bottleneck: Option<BottleneckConfig>,
    /// For an adapter the model owner aligned after plugging it in (`offsite align`): how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment: Option<Box<super::align::AlignRecord>>,
    /// Where the weights came from when not from one tuning run (`offsite adapter --arrays`:
    /// e.g. a federated average), as its writer described it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// PEFT's key prefix for a causal LM's weights.
const PEFT_PREFIX: &str = "base_model.model.";

/// A tuned adapter in memory.
#[derive(Debug)]
pub struct Adapter {
    /// Its metadata.
    pub meta: AdapterMeta,
    /// Its weights, by HF name (original layer indices).
    pub tensors: TensorMap,
}

impl Adapter {
    /// The adapter of `package` with the given trained weights (or the package's own adapter
    /// weights for those not given).
    pub fn from_weights(
        package: &Package,
        weights: &BTreeMap<String, Tensor>,
        training: Option<TrainOptions>,
        metrics: Option<TrainSummary>,
    ) -> Result<Self> {
        Self::with_weights(package, weights, training, metrics, true)
    }

    /// A BitFit adapter: only the trained 1-D parameters (norm weights, biases) of the adapter
    /// layers; plug-in replaces just those.
    pub fn bitfit(
        package: &Package,
        weights: &BTreeMap<String, Tensor>,
        training: Option<TrainOptions>,
        metrics: Option<TrainSummary>,
    ) -> Result<Self> {
        if let Some((name, _)) = weights.iter().find(|(_, t)| t.rank() != 1) {
            return Err(Error::Invalid(format!("`{name}` is not a 1-D parameter")));
        }
        Self::with_weights(package, weights, training, metrics, false)
    }

    fn with_weights(
        package: &Package,
        weights: &BTreeMap<String, Tensor>,
        training: Option<TrainOptions>,
        metrics: Option<TrainSummary>,
        complete: bool,
    ) -> Result<Self> {
        let adapter_layers = package.meta.split.adapter();
        let origin = Path::new("<adapter>");
        let mut tensors = TensorMap::new(origin);
        for (name, t) in package.tensors.iter() {
            if in_layers(name, &adapter_layers) {
                match weights.get(name) {
                    Some(trained) => tensors.insert(name, trained.clone(), origin),
                    None if complete => tensors.insert(name, t.clone(), origin),
                    None => {}
                }
            }
        }
        if let Some(extra) = weights.keys().find(|n| !tensors.contains(n)) {
            return Err(Error::Invalid(format!(
                "`{extra}` is not an adapter weight"
            )));
        }
        Ok(Adapter {
            meta: Self::meta(package, adapter_layers, training, metrics),
            tensors,
        })
    }

    /// The adapter of `package` that `method` trains, from its trained `weights` (as
    /// [`Adapter::from_weights`], [`Adapter::from_lora`], [`Adapter::from_bottleneck`] or
    /// [`Adapter::bitfit`]).
    pub fn of_method(
        package: &Package,
        method: &Method,
        weights: &BTreeMap<String, Tensor>,
        training: Option<TrainOptions>,
        metrics: Option<TrainSummary>,
    ) -> Result<Self> {
        match method {
            Method::Full => Self::from_weights(package, weights, training, metrics),
            Method::Lora(config) => Self::from_lora(package, config, weights, training, metrics),
            Method::Adapter(config) => {
                Self::from_bottleneck(package, config, weights, training, metrics)
            }
            Method::BitFit => Self::bitfit(package, weights, training, metrics),
        }
    }

    /// This adapter with its tensors replaced by `arrays` (e.g. a federated coordinator's
    /// average of several data owners' adapters of this kind), which must hold exactly this
    /// adapter's tensor names (ours, or PEFT's `base_model.model.` ones) with the same shapes.
    /// `origin` says where they came from; it is recorded in the metadata.
    pub fn with_arrays(mut self, arrays: &TensorMap, origin: Option<String>) -> Result<Self> {
        let file = arrays.origin().to_path_buf();
        let mut replaced = TensorMap::new(&file);
        for (name, t) in arrays.iter() {
            let ours = name.strip_prefix(PEFT_PREFIX).unwrap_or(name);
            let Some(own) = self.tensors.dims(ours) else {
                return Err(Error::format(
                    &file,
                    format!("`{name}` is not a weight of this {} adapter", self.kind()),
                ));
            };
            if own != t.dims() {
                return Err(Error::format(
                    &file,
                    format!(
                        "`{name}` has shape {:?}, the adapter's is {own:?}",
                        t.dims()
                    ),
                ));
            }
            replaced.insert(ours, t.to_dtype(candle_core::DType::F32)?, &file);
        }
        if let Some(missing) = self.tensors.names().find(|n| !replaced.contains(n)) {
            return Err(Error::format(
                &file,
                format!(
                    "`{missing}` is missing (the adapter has {} tensors)",
                    self.tensors.len()
                ),
            ));
        }
        replaced.check_finite()?;
        self.tensors = replaced;
        self.meta.training = None;
        self.meta.metrics = None;
        self.meta.origin = origin;
        Ok(self)
    }

    /// A LoRA adapter of `package`: the trained LoRA matrices (`…lora_A.weight`,
    /// `…lora_B.weight` of the adapter layers) and their configuration.
    pub fn from_lora(
        package: &Package,
        config: &LoraConfig,
        weights: &BTreeMap<String, Tensor>,
        training: Option<TrainOptions>,
        metrics: Option<TrainSummary>,
    ) -> Result<Self> {
        let mut adapter = Self::from_peft(package, weights, training, metrics, is_lora_weight)?;
        adapter.meta.lora = Some(config.clone());
        Ok(adapter)
    }

    /// A bottleneck adapter of `package`: the trained adapters' weights (`…adapter.down.weight`
    /// etc. of the adapter layers) and their configuration.
    pub fn from_bottleneck(
        package: &Package,
        config: &BottleneckConfig,
        weights: &BTreeMap<String, Tensor>,
        training: Option<TrainOptions>,
        metrics: Option<TrainSummary>,
    ) -> Result<Self> {
        let mut adapter =
            Self::from_peft(package, weights, training, metrics, is_bottleneck_weight)?;
        adapter.meta.bottleneck = Some(config.clone());
        Ok(adapter)
    }

    /// The PEFT weights (`kind` says which names are) of the adapter layers.
    fn from_peft(
        package: &Package,
        weights: &BTreeMap<String, Tensor>,
        training: Option<TrainOptions>,
        metrics: Option<TrainSummary>,
        kind: fn(&str) -> bool,
    ) -> Result<Self> {
        let adapter_layers = package.meta.split.adapter();
        let origin = Path::new("<adapter>");
        let mut tensors = TensorMap::new(origin);
        for (name, t) in weights {
            if !kind(name) || !in_layers(name, &adapter_layers) {
                return Err(Error::Invalid(format!(
                    "`{name}` is not a PEFT weight of an adapter layer"
                )));
            }
            tensors.insert(name.clone(), t.clone(), origin);
        }
        Ok(Adapter {
            meta: Self::meta(package, adapter_layers, training, metrics),
            tensors,
        })
    }

    fn meta(
        package: &Package,
        adapter_layers: Vec<usize>,
        training: Option<TrainOptions>,
        metrics: Option<TrainSummary>,
    ) -> AdapterMeta {
        AdapterMeta {
            format: ADAPTER_FORMAT.into(),
            format_version: ADAPTER_VERSION,
            package_fingerprint: package.meta.package_fingerprint.clone(),
            source_fingerprint: package.meta.source_fingerprint.clone(),
            adapter_layers,
            training,
            metrics,
            lora: None,
            bottleneck: None,
            alignment: None,
            origin: None,
        }
    }

    /// Writes the adapter atomically: one safetensors file, or for LoRA a directory in Hugging
    /// Face PEFT's layout (`adapter_config.json`, `adapter_model.safetensors` with PEFT's key
    /// names; our metadata rides in the safetensors header).
    pub fn save(&self, path: &Path) -> Result<()> {
        let Some(lora) = &self.meta.lora else {
            return offsite_file::write(path, &self.tensors, &self.meta);
        };
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let mut peft = TensorMap::new(path);
        for (name, t) in self.tensors.iter() {
            peft.insert(format!("{PEFT_PREFIX}{name}"), t.clone(), path);
        }
        offsite_file::write(&path.join(PEFT_WEIGHTS), &peft, &self.meta)?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "target_modules": lora.targets,
            "layers_to_transform": self.meta.adapter_layers,
            "layers_pattern": null,
            "base_model_name_or_path": self.meta.source_fingerprint,
            "bias": "none",
            "fan_in_fan_out": lora.fan_in_fan_out,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "revision": null,
        });
        crate::io::atomic::write_json(&path.join("adapter_config.json"), &config)
    }

    /// Reads an adapter file, or a LoRA adapter directory.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Ok(Self::load_checked(path, device)?.0)
    }

    /// [`Adapter::load`], also saying how the contents were checked for damage.
    pub fn load_checked(path: &Path, device: &Device) -> Result<(Self, Seal)> {
        if path.is_dir() {
            let file = path.join(PEFT_WEIGHTS);
            let (meta, peft, seal): (AdapterMeta, TensorMap, _) =
                offsite_file::read(&file, ADAPTER_FORMAT, device)?;
            if meta.lora.is_none() {
                return Err(Error::format(
                    &file,
                    "an adapter directory must hold a LoRA adapter",
                ));
            }
            let mut tensors = TensorMap::new(&file);
            for (name, t) in peft.iter() {
                let Some(ours) = name.strip_prefix(PEFT_PREFIX) else {
                    return Err(Error::format(&file, format!("`{name}` is not a PEFT key")));
                };
                tensors.insert(ours, t.clone(), &file);
            }
            return Ok((Self::checked(meta, tensors, &file)?, seal));
        }
        let (meta, tensors, seal): (AdapterMeta, TensorMap, _) =
            offsite_file::read(path, ADAPTER_FORMAT, device)?;
        Ok((Self::checked(meta, tensors, path)?, seal))
    }

    fn checked(meta: AdapterMeta, tensors: TensorMap, path: &Path) -> Result<Self> {
        if meta.format_version > ADAPTER_VERSION {
            return Err(Error::format(
                path,
                format!(
                    "adapter format version {} is newer than this offsite understands",
                    meta.format_version
                ),
            ));
        }
        if let Some(bad) = tensors
            .names()
            .find(|n| !in_layers(n, &meta.adapter_layers))
        {
            return Err(Error::format(
                path,
                format!("tensor `{bad}` is not an adapter-layer weight"),
            ));
        }
        Ok(Adapter { meta, tensors })
    }

    /// Replaces `model`'s adapter-layer weights with this adapter's (LoRA merged into them,
    /// bottleneck adapters added as modules). Every adapter tensor must match a weight of the
    /// model in name and shape.
    pub fn apply(&self, model: &mut Model) -> Result<()> {
        if let Some(lora) = &self.meta.lora {
            // Recreate the LoRA modules, load the trained matrices, and fold them in.
            crate::peft::add_lora(model, &self.meta.adapter_layers, lora, 0)?;
            self.replace_weights(model)?;
            return crate::peft::merge_lora(model);
        }
        if let Some(bottleneck) = &self.meta.bottleneck {
            // Recreate the adapters and load the trained weights; they stay separate modules.
            crate::peft::add_bottleneck(model, &self.meta.adapter_layers, bottleneck, 0)?;
        }
        self.replace_weights(model)
    }

    fn replace_weights(&self, model: &mut Model) -> Result<()> {
        let origin = self.tensors.origin().to_path_buf();
        let mut weights = model.named_weights_mut();
        for (name, t) in self.tensors.iter() {
            let Some((_, w)) = weights.iter_mut().find(|(n, _)| n == name) else {
                return Err(Error::format(
                    &origin,
                    format!("the model has no weight `{name}`"),
                ));
            };
            if w.dims() != t.dims() {
                return Err(Error::TensorShape {
                    path: origin.clone(),
                    name: name.to_string(),
                    expected: w.dims().to_vec(),
                    actual: t.dims().to_vec(),
                });
            }
            **w = crate::model::Weight::Frozen(t.to_dtype(w.dtype())?);
        }
        Ok(())
    }

    /// The tuning method it holds: `full` (adapter-layer weights), `lora`, `adapter` or
    /// `bitfit` (1-D parameters only).
    pub fn kind(&self) -> &'static str {
        if self.meta.lora.is_some() {
            "lora"
        } else if self.meta.bottleneck.is_some() {
            "adapter"
        } else if self.tensors.iter().all(|(_, t)| t.rank() == 1) && !self.tensors.is_empty() {
            "bitfit"
        } else {
            "full"
        }
    }

    /// Checks that the adapter was tuned through `package`.
    pub fn check_package(&self, package: &Package) -> Result<()> {
        if self.meta.package_fingerprint != package.meta.package_fingerprint {
            return Err(Error::format(
                self.tensors.origin(),
                format!(
                    "this adapter was tuned through another emulator package ({}…), not {} ({}…)",
                    short(&self.meta.package_fingerprint),
                    package.tensors.origin().display(),
                    short(&package.meta.package_fingerprint)
                ),
            ));
        }
        Ok(())
    }

    /// Checks that the adapter's chain of fingerprints leads to the model whose fingerprint is
    /// `model_fingerprint` (read from `model_path`).
    pub fn check_source(&self, model_fingerprint: &str, model_path: &Path) -> Result<()> {
        if self.meta.source_fingerprint != model_fingerprint {
            return Err(Error::format(
                self.tensors.origin(),
                format!(
                    "this adapter belongs to another model: it was tuned through an emulator of model {}…, \
                     but {} is model {}…",
                    short(&self.meta.source_fingerprint),
                    model_path.display(),
                    short(model_fingerprint)
                ),
            ));
        }
        Ok(())
    }
}
