//! The emulator package: one safetensors file holding the embeddings, final norm, LM head, the
//! adapter layers and the kept emulator layers (never a dropped layer), with JSON metadata:
//! format version, model config, tokenizer, the layer map, the options and fingerprints.

use super::fingerprint::fingerprint;
use super::make::compress::{Encoded, Encoding, MASK_SUFFIX};
use super::make::distill::DistillRecord;
pub use super::make::options::EmulatorOptions;
use super::make::plan::Split;
use super::make::strategy::{self, Calibration, ChoiceRecord};
use crate::io::offsite_file::{self, Seal, PACKAGE_FORMAT};
use crate::io::tokenizer::Tokenizer;
use crate::model::{Model, ModelConfig, QuantType, QuantizeReport, TensorMap};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Current package format version: 2 when it holds matrices in GGUF block formats (written so
/// that an older offsite refuses it instead of misreading the blocks), else 1.
pub const PACKAGE_VERSION: u32 = 2;

/// A matrix stored in a GGUF block format: its blocks' bytes are the file's `U8` tensor of
/// the same name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantizedRecord {
    /// The block format, as llama.cpp names it (`q4_k`, `q5_0`, …).
    pub format: String,
    /// The matrix's shape (`[out, in]`).
    pub shape: Vec<usize>,
}

/// A tokenizer as its two HF files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer_json: String,
    /// `tokenizer_config.json`.
    pub tokenizer_config: serde_json::Value,
}

impl TokenizerFiles {
    /// The files of `tok`.
    pub fn of(tok: &Tokenizer, path: &Path) -> Result<Self> {
        let (tokenizer_json, tokenizer_config) = tok.to_parts(path)?;
        Ok(TokenizerFiles {
            tokenizer_json,
            tokenizer_config,
        })
    }

    /// The tokenizer they describe (`path` names the file they came from).
    pub fn tokenizer(&self, path: &Path) -> Result<Tokenizer> {
        Tokenizer::from_parts(
            self.tokenizer_json.as_bytes(),
            Some(self.tokenizer_config.clone()),
            None,
            path,
            path,
        )
    }
}

/// The package's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackageMeta {
    /// Always [`PACKAGE_FORMAT`].
    pub format: String,
    /// [`PACKAGE_VERSION`] when written.
    pub format_version: u32,
    /// The full model's configuration.
    pub config: ModelConfig,
    /// Which original layers are adapter and which the emulator keeps.
    pub split: Split,
    /// The options used.
    pub options: EmulatorOptions,
    /// Fingerprint of the full model's weights.
    pub source_fingerprint: String,
    /// Parameters of the full model.
    pub source_parameters: usize,
    /// Fingerprint of this package's weights.
    pub package_fingerprint: String,
    /// The tokenizer, when the model has one.
    pub tokenizer: Option<TokenizerFiles>,
    /// The program that wrote it.
    pub created_by: String,
    /// How the emulator layers were distilled, when they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<DistillRecord>,
    /// How a data-driven strategy chose the layers, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<ChoiceRecord>,
    /// The tensors stored compressed (pruned and/or quantized emulator weights), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub encodings: BTreeMap<String, Encoding>,
    /// The matrices stored in a GGUF block format (`--frozen-quantized`), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quantized: BTreeMap<String, QuantizedRecord>,
}

impl PackageMeta {
    /// The metadata of the package at `path`, from its header alone (not checked against the
    /// seal: for reading how a package was made before loading it; [`Package::load`] checks).
    pub fn peek(path: &Path) -> Result<Self> {
        offsite_file::peek(path, PACKAGE_FORMAT)
    }
}

/// An emulator package in memory.
#[derive(Debug)]
pub struct Package {
    /// Its metadata.
    pub meta: PackageMeta,
    /// Its tensors, HF names with original layer indices (compressed ones decoded to dense).
    pub tensors: TensorMap,
    /// The compact form of the compressed tensors, as written to disk.
    pub encoded: BTreeMap<String, Encoded>,
}

/// The fingerprint of a package's tensors: of their values, block-format ones dequantized (so
/// a package and the same values stored densely share it).
fn package_fingerprint(tensors: &TensorMap) -> Result<String> {
    if tensors.iter_quantized().next().is_none() {
        return Ok(fingerprint(tensors.iter())?);
    }
    let dense = tensors.dense_entries()?;
    Ok(fingerprint(dense.iter().map(|(n, t)| (n.as_str(), t)))?)
}

/// Names of the tensors the package holds for `split` (embeddings, norm, head, kept layers).
fn package_tensors(full: &Model, split: &Split) -> Result<Vec<(String, Tensor)>> {
    let keep: std::collections::HashSet<usize> = split.layer_order().into_iter().collect();
    Ok(full
        .dense_weights()?
        .into_iter()
        .filter(|(name, _)| match layer_index(name) {
            Some(i) => keep.contains(&i),
            None => true,
        })
        .collect())
}

/// The original layer index of an HF weight name (`model.layers.N.…`, `transformer.h.N.…`, …,
/// whatever the family), or `None` for embeddings, final norm and head; and whether a name
/// belongs to one of a set of layers.
pub use crate::model::families::{in_layers, layer_index};

impl Package {
    /// Builds the package of `full` (which must hold all its layers).
    pub fn build(
        full: &Model,
        tokenizer: Option<&Tokenizer>,
        options: EmulatorOptions,
        origin: &Path,
    ) -> Result<Self> {
        Self::build_with(full, tokenizer, options, None, origin)
    }

    /// [`Package::build`] with distilled emulator-layer weights in place of the full model's
    /// (then compressed, if the options say so).
    pub fn build_with(
        full: &Model,
        tokenizer: Option<&Tokenizer>,
        options: EmulatorOptions,
        distilled: Option<(&BTreeMap<String, Tensor>, DistillRecord)>,
        origin: &Path,
    ) -> Result<Self> {
        options.validate()?;
        let choice = Self::choose(full, tokenizer, &options)?;
        Self::assemble(full, tokenizer, options, choice, distilled, origin)
    }

    /// The split `options` ask for (measured on their calibration text for data-driven
    /// strategies) and how it was chosen.
    pub fn choose(
        full: &Model,
        tokenizer: Option<&Tokenizer>,
        options: &EmulatorOptions,
    ) -> Result<(Split, Option<ChoiceRecord>)> {
        let calibration = match (&options.calibration, options.strategy.needs_calibration()) {
            (Some(path), true) => {
                let tok = tokenizer.ok_or_else(|| {
                    Error::Invalid("calibration text needs the model's tokenizer".into())
                })?;
                let cal = Calibration::load(path, tok, options.calibration_tokens, full.device())?;
                Some((cal, path.as_path()))
            }
            _ => None,
        };
        let (b, t, k) = (options.bottom, options.top, options.keep);
        let cal = calibration.as_ref().map(|(c, p)| (c, *p));
        strategy::choose(full, options.strategy, b, t, k, cal)
    }

    /// [`Package::build_with`] on a split already chosen by [`Package::choose`] (distillation
    /// reuses its starting package's).
    pub fn assemble(
        full: &Model,
        tokenizer: Option<&Tokenizer>,
        options: EmulatorOptions,
        (split, choice): (Split, Option<ChoiceRecord>),
        distilled: Option<(&BTreeMap<String, Tensor>, DistillRecord)>,
        origin: &Path,
    ) -> Result<Self> {
        options.validate()?;
        let config = full.config().clone();
        let source_fingerprint =
            fingerprint(full.dense_weights()?.iter().map(|(n, t)| (n.as_str(), t)))?;
        let mut tensors = TensorMap::new(origin);
        let mut encoded = BTreeMap::new();
        let (distilled, distillation) = match distilled {
            Some((w, record)) => (Some(w), Some(record)),
            None => (None, None),
        };
        if let Some(bad) = distilled.and_then(|w| w.keys().find(|n| !in_layers(n, &split.emulator)))
        {
            return Err(Error::Invalid(format!(
                "`{bad}` is not a weight of an emulator layer"
            )));
        }
        for (name, t) in package_tensors(full, &split)? {
            let t = match distilled.and_then(|w| w.get(&name)) {
                Some(d) => d.clone(),
                None => t,
            };
            // Only the emulator's weight matrices are compressed: the adapter is what the data
            // owner trains, and norms are tiny.
            let compress =
                options.compresses() && t.rank() == 2 && in_layers(&name, &split.emulator);
            if compress {
                let values = t
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?;
                let e = Encoded::compress(
                    values,
                    t.dims(),
                    options.prune,
                    options.low_rank,
                    options.quant_bits,
                );
                let dense =
                    Tensor::from_vec(e.decode(), t.dims(), t.device())?.to_dtype(t.dtype())?;
                tensors.insert(name.clone(), dense, origin);
                encoded.insert(name, e);
            } else {
                tensors.insert(name, t, origin);
            }
        }
        if let Some(format) = options.frozen_quantized {
            let emulator = split.emulator.clone();
            let report = tensors.quantize(format, |n| {
                n.ends_with(".weight") && in_layers(n, &emulator)
            })?;
            eprintln!("emulator: {report}");
        }
        let quantized: BTreeMap<String, QuantizedRecord> = tensors
            .iter_quantized()
            .map(|(n, q)| {
                let record = QuantizedRecord {
                    format: crate::model::quantize::type_name(q.dtype()),
                    shape: q.shape().dims().to_vec(),
                };
                (n.to_string(), record)
            })
            .collect();
        let package_fingerprint = package_fingerprint(&tensors)?;
        let tokenizer = tokenizer
            .map(|t| TokenizerFiles::of(t, origin))
            .transpose()?;
        Ok(Package {
            meta: PackageMeta {
                format: PACKAGE_FORMAT.into(),
                format_version: if quantized.is_empty() { 1 } else { 2 },
                config,
                split,
                options,
                source_fingerprint,
                source_parameters: full.num_parameters(),
                package_fingerprint,
                tokenizer,
                created_by: format!("offsite {}", env!("CARGO_PKG_VERSION")),
                distillation,
                choice,
                encodings: encoded
                    .iter()
                    .map(|(n, e): (&String, &Encoded)| (n.clone(), e.encoding.metadata()))
                    .collect(),
                quantized,
            },
            tensors,
            encoded,
        })
    }

    /// Keeps the emulator layers' weight matrices in `format` from now on (the data owner's
    /// `--frozen-quantized`: the emulator is frozen, so its products may run on blocks, as
    /// QLoRA's do; see [`TensorMap::quantize`]). The package's identity is unchanged — adapters
    /// tuned through it name the package as received —, so it can no longer be saved.
    pub fn quantize_emulator(&mut self, format: QuantType) -> Result<QuantizeReport> {
        if let Some(shipped) = self.meta.options.frozen_quantized {
            return Err(Error::format(
                self.tensors.origin(),
                format!(
                    "--frozen-quantized {format}: the package already holds its emulator in \
                     {shipped} blocks (drop the flag)"
                ),
            ));
        }
        let emulator = self.meta.split.emulator.clone();
        let report = self.tensors.quantize(format, |n| {
            n.ends_with(".weight") && in_layers(n, &emulator)
        })?;
        if report.matrices == 0 {
            let why = match report.kept_dense.first() {
                Some(name) => format!(
                    "no {format} block tiles the rows of its emulator matrices (e.g. `{name}`, \
                     {:?})",
                    self.tensors.dims(name).unwrap_or_default()
                ),
                None => "it has no emulator layers".into(),
            };
            return Err(Error::format(
                self.tensors.origin(),
                format!("--frozen-quantized {format}: {why}"),
            ));
        }
        Ok(report)
    }

    /// Writes the package atomically, compressed tensors in their compact form.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut stored = TensorMap::new(path);
        for (name, q) in self.tensors.iter_quantized() {
            if !self.meta.quantized.contains_key(name) {
                return Err(Error::Invalid(format!(
                    "{}: the package's emulator was quantized after loading; save the package \
                     as received instead",
                    path.display()
                )));
            }
            let bytes = q.data()?.into_owned();
            let n = bytes.len();
            stored.insert(name, Tensor::from_vec(bytes, n, &Device::Cpu)?, path);
        }
        for (name, t) in self.tensors.iter() {
            let Some(e) = self.encoded.get(name) else {
                stored.insert(name, t.clone(), path);
                continue;
            };
            let cpu = &Device::Cpu;
            let payload = match &e.encoding.quant {
                Some(q) => Tensor::from_vec(q.packed.clone(), q.packed.len(), cpu)?,
                None => Tensor::from_vec(e.values.clone(), e.values.len(), cpu)?,
            };
            stored.insert(name, payload, path);
            if let Some(mask) = &e.mask {
                let mask = Tensor::from_vec(mask.clone(), mask.len(), cpu)?;
                stored.insert(format!("{name}{MASK_SUFFIX}"), mask, path);
            }
        }
        offsite_file::write(path, &stored, &self.meta)
    }

    /// Turns the block bytes of a package read from `path` back into block-format matrices,
    /// checking each one's format and size against its record.
    fn decode_quantized(&mut self, path: &Path) -> Result<()> {
        for (name, record) in &self.meta.quantized {
            let bad =
                |msg: String| Error::format(path, format!("quantized tensor `{name}`: {msg}"));
            let format: QuantType = record.format.parse().map_err(bad)?;
            let payload = self
                .tensors
                .remove(name)
                .ok_or_else(|| bad("missing".into()))?;
            if payload.dtype() != candle_core::DType::U8 || payload.rank() != 1 {
                return Err(bad(format!(
                    "stored as {:?} {:?}, not as block bytes",
                    payload.dtype(),
                    payload.dims()
                )));
            }
            let t = format.0;
            let values: usize = record.shape.iter().product();
            let expected = values
                .is_multiple_of(t.block_size())
                .then(|| values / t.block_size() * t.type_size());
            if record.shape.len() != 2 || expected != Some(payload.elem_count()) {
                return Err(bad(format!(
                    "{} bytes do not hold a {} matrix of shape {:?}",
                    payload.elem_count(),
                    record.format,
                    record.shape
                )));
            }
            let bytes: Vec<u8> = payload.to_vec1()?;
            let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                t,
                &bytes,
                record.shape.clone(),
                &self.device(),
            )?;
            self.tensors
                .insert_quantized(name, std::sync::Arc::new(q), path);
        }
        Ok(())
    }

    /// Decodes the compressed tensors of a package read from `path` in place.
    fn decode_stored(&mut self, path: &Path) -> Result<()> {
        for (name, encoding) in &self.meta.encodings {
            let bad =
                |msg: String| Error::format(path, format!("compressed tensor `{name}`: {msg}"));
            let payload = self
                .tensors
                .remove(name)
                .ok_or_else(|| bad("missing".into()))?;
            let bytes = |t: Tensor| -> Result<Vec<u8>> {
                Ok(t.flatten_all()?
                    .to_dtype(candle_core::DType::U8)?
                    .to_vec1()?)
            };
            let mask = match encoding.sparse {
                true => Some(bytes(
                    self.tensors
                        .remove(&format!("{name}{MASK_SUFFIX}"))
                        .ok_or_else(|| bad("its mask is missing".into()))?,
                )?),
                false => None,
            };
            let mut e = Encoded {
                encoding: encoding.clone(),
                mask,
                values: Vec::new(),
            };
            match &mut e.encoding.quant {
                Some(q) => q.packed = bytes(payload)?,
                None => e.values = payload.flatten_all()?.to_vec1()?,
            }
            e.check().map_err(bad)?;
            let dense = Tensor::from_vec(e.decode(), encoding.shape.as_slice(), &Device::Cpu)?;
            self.tensors
                .insert(name, dense.to_device(&self.device())?, path);
            self.encoded.insert(name.clone(), e);
        }
        Ok(())
    }

    fn device(&self) -> Device {
        self.tensors
            .iter()
            .next()
            .map_or(Device::Cpu, |(_, t)| t.device().clone())
    }

    /// Reads a package, checking its format, version and that it holds exactly the tensors its
    /// layer map promises.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Ok(Self::load_checked(path, device)?.0)
    }

    /// [`Package::load`], also saying how the contents were checked for damage. A package
    /// without a seal (written before seals) is checked against its recorded package
    /// fingerprint instead, so a damaged older package is refused too.
    pub fn load_checked(path: &Path, device: &Device) -> Result<(Self, Seal)> {
        let (meta, tensors, seal): (PackageMeta, _, _) =
            offsite_file::read(path, PACKAGE_FORMAT, device)?;
        if meta.format_version > PACKAGE_VERSION {
            return Err(Error::format(
                path,
                format!(
                    "package format version {} is newer than this offsite understands ({PACKAGE_VERSION})",
                    meta.format_version
                ),
            ));
        }
        let mut pkg = Package {
            meta,
            tensors,
            encoded: BTreeMap::new(),
        };
        pkg.decode_stored(path)?;
        pkg.decode_quantized(path)?;
        let kept: std::collections::HashSet<usize> =
            pkg.meta.split.layer_order().into_iter().collect();
        if let Some(extra) = pkg
            .tensors
            .names()
            .find(|n| layer_index(n).is_some_and(|i| !kept.contains(&i)))
        {
            return Err(Error::format(
                path,
                format!("tensor `{extra}` belongs to a layer the package does not run"),
            ));
        }
        if seal == Seal::Absent
            && package_fingerprint(&pkg.tensors)? != pkg.meta.package_fingerprint
        {
            return Err(Error::format(
                path,
                "damaged: its weights do not match the package fingerprint recorded in it",
            ));
        }
        // Building the model checks every expected tensor and shape.
        pkg.model()?;
        Ok((pkg, seal))
    }

    /// The emulator model: adapter and emulator layers in order, all frozen.
    pub fn model(&self) -> Result<Model> {
        Model::from_tensors(
            &self.meta.config,
            &self.tensors,
            Some(&self.meta.split.layer_order()),
        )
    }

    /// The packaged tokenizer.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match &self.meta.tokenizer {
            Some(t) => t.tokenizer(self.tensors.origin()),
            None => Err(Error::format(
                self.tensors.origin(),
                "the package has no tokenizer",
            )),
        }
    }

    /// Parameters the package stores: a compressed tensor counts what its encoding keeps
    /// (low-rank factors, unpruned values), not its dense size.
    pub fn num_parameters(&self) -> usize {
        let dense: usize = self
            .tensors
            .iter()
            .map(|(name, t)| {
                self.encoded
                    .get(name)
                    .map_or(t.elem_count(), Encoded::stored_values)
            })
            .sum();
        let quantized: usize = self
            .tensors
            .iter_quantized()
            .map(|(_, q)| q.shape().elem_count())
            .sum();
        dense + quantized
    }
}
