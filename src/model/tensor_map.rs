//! Named tensors as loaded from a checkpoint, remembering which file each came from so that a
//! missing or misshapen tensor is reported against the right file.

use crate::{Error, Result};
use candle_core::quantized::QTensor;
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Tensors by Hugging Face parameter name (`model.layers.3.self_attn.q_proj.weight`). Weight
/// matrices may be held in a GGUF block format instead ([`TensorMap::quantize`]): a model built
/// from the map keeps those quantized; everything else sees their dequantized values.
#[derive(Clone, Debug, Default)]
pub struct TensorMap {
    tensors: BTreeMap<String, (Tensor, PathBuf)>,
    /// Matrices held in a block format, by name (never also in `tensors`).
    quantized: BTreeMap<String, (Arc<QTensor>, PathBuf)>,
    /// Where a tensor that is absent would have been (the checkpoint as a whole).
    origin: PathBuf,
}

impl TensorMap {
    /// An empty map for tensors of the checkpoint at `origin`.
    pub fn new(origin: impl Into<PathBuf>) -> Self {
        TensorMap {
            tensors: BTreeMap::new(),
            quantized: BTreeMap::new(),
            origin: origin.into(),
        }
    }

    /// Adds a tensor read from `file`.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor, file: &Path) {
        self.tensors
            .insert(name.into(), (tensor, file.to_path_buf()));
    }

    /// Adds a matrix held in a block format, read from `file`.
    pub fn insert_quantized(&mut self, name: impl Into<String>, q: Arc<QTensor>, file: &Path) {
        let name = name.into();
        self.tensors.remove(&name);
        self.quantized.insert(name, (q, file.to_path_buf()));
    }

    /// The tensor called `name`, checked to have `shape` (a quantized one dequantized).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(q) = self.get_quantized(name, shape)? {
            return Ok(q.dequantize(&q.device())?);
        }
        let (tensor, file) = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.origin.clone(),
            name: name.to_string(),
        })?;
        check_shape(file, name, shape, tensor.dims())?;
        Ok(tensor.clone())
    }

    /// The matrix `name` in its block format, checked to have `shape`; `None` when the map
    /// holds it dense or not at all.
    pub fn get_quantized(&self, name: &str, shape: &[usize]) -> Result<Option<Arc<QTensor>>> {
        let Some((q, file)) = self.quantized.get(name) else {
            return Ok(None);
        };
        check_shape(file, name, shape, q.shape().dims())?;
        Ok(Some(q.clone()))
    }

    /// Takes the dense tensor `name` out of the map (quantized entries stay).
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name).map(|(t, _)| t)
    }

    /// Whether `name` is present (dense or quantized).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.quantized.contains_key(name)
    }

    /// The shape of `name`, when present.
    pub fn dims(&self, name: &str) -> Option<&[usize]> {
        match self.tensors.get(name) {
            Some((t, _)) => Some(t.dims()),
            None => self.quantized.get(name).map(|(q, _)| q.shape().dims()),
        }
    }

    /// All names (dense and quantized), sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self
            .tensors
            .keys()
            .chain(self.quantized.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// Name, tensor pairs of the dense tensors, sorted by name (see
    /// [`TensorMap::iter_quantized`] for the rest).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, (t, _))| (k.as_str(), t))
    }

    /// Name, block-format tensor pairs, sorted by name.
    pub fn iter_quantized(&self) -> impl Iterator<Item = (&str, &Arc<QTensor>)> {
        self.quantized.iter().map(|(k, (q, _))| (k.as_str(), q))
    }

    /// Every tensor as dense values, quantized ones dequantized into fresh tensors, sorted by
    /// name: for the walks that read every value (fingerprints).
    pub fn dense_entries(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = self
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        for (n, q) in self.iter_quantized() {
            out.push((n.to_string(), q.dequantize(&q.device())?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Moves the dense matrices that `select` names into `format` (or llama.cpp's substitute
    /// where its blocks do not tile a row, see [`super::QuantType::for_columns`]); a matrix no
    /// block tiles stays dense. Returns what moved.
    pub fn quantize(
        &mut self,
        format: super::QuantType,
        select: impl Fn(&str) -> bool,
    ) -> Result<QuantizeReport> {
        let names: Vec<String> = self
            .tensors
            .iter()
            .filter(|(n, (t, _))| t.rank() == 2 && select(n))
            .map(|(n, _)| n.clone())
            .collect();
        let mut report = QuantizeReport::default();
        for name in names {
            let (t, file) = self.tensors.remove(&name).expect("listed above");
            let dense_bytes = t.elem_count() * t.dtype().size_in_bytes();
            match format
                .quantize(&t)
                .map_err(|e| Error::format(&file, format!("`{name}`: {e}")))?
            {
                Some(q) => {
                    report.matrices += 1;
                    report.dense_bytes += dense_bytes;
                    report.quantized_bytes += q.storage_size_in_bytes();
                    let kind = super::quantize::type_name(q.dtype());
                    *report.formats.entry(kind).or_default() += 1;
                    self.quantized.insert(name, (q, file));
                }
                None => {
                    report.kept_dense.push(name.clone());
                    self.tensors.insert(name, (t, file));
                }
            }
        }
        Ok(report)
    }

    /// Refuses a map holding a NaN or infinite value, naming the tensor and its file: weights
    /// like that are damage, and would only surface later as a NaN loss or a silent wrong score.
    pub fn check_finite(&self) -> Result<()> {
        for (name, (t, file)) in &self.tensors {
            if !t.dtype().is_float() {
                continue;
            }
            // x · 0 is 0 for every finite x and NaN otherwise; the sum cannot overflow.
            let bad = t
                .affine(0.0, 0.0)
                .and_then(|z| {
                    z.to_dtype(candle_core::DType::F32)?
                        .sum_all()?
                        .to_scalar::<f32>()
                })
                .map_err(|e| Error::format(file, format!("tensor `{name}`: {e}")))?;
            if !bad.is_finite() {
                return Err(Error::format(
                    file,
                    format!("tensor `{name}` holds NaN or infinite values"),
                ));
            }
        }
        Ok(())
    }

    /// The checkpoint these tensors came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Name, tensor and source file of every dense entry, by value, sorted by name.
    pub fn into_entries(self) -> impl Iterator<Item = (String, Tensor, PathBuf)> {
        self.tensors.into_iter().map(|(k, (t, f))| (k, t, f))
    }

    /// Number of tensors (dense and quantized).
    pub fn len(&self) -> usize {
        self.tensors.len() + self.quantized.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What [`TensorMap::quantize`] moved into a block format.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuantizeReport {
    /// Matrices now held quantized.
    pub matrices: usize,
    /// Their bytes before, dense.
    pub dense_bytes: usize,
    /// Their bytes now, in blocks.
    pub quantized_bytes: usize,
    /// How many matrices went into each block format (`q4_k`, and substitutes such as `q5_0`).
    pub formats: BTreeMap<String, usize>,
    /// Matrices selected that no block format tiles, kept dense.
    pub kept_dense: Vec<String>,
}

impl std::fmt::Display for QuantizeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let formats: Vec<String> = self
            .formats
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        write!(
            f,
            "{} frozen matrices quantized ({}): {:.1} MB → {:.1} MB",
            self.matrices,
            formats.join(", "),
            self.dense_bytes as f64 / 1e6,
            self.quantized_bytes as f64 / 1e6
        )?;
        if !self.kept_dense.is_empty() {
            write!(
                f,
                "; {} kept dense (no block tiles their rows)",
                self.kept_dense.len()
            )?;
        }
        Ok(())
    }
}

/// Refuses a tensor whose shape is not the expected one, naming it and its file.
fn check_shape(file: &Path, name: &str, expected: &[usize], actual: &[usize]) -> Result<()> {
    if actual != expected {
        return Err(Error::TensorShape {
            path: file.to_path_buf(),
            name: name.to_string(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn non_finite_weights_are_named() {
        let file = Path::new("w.safetensors");
        let mut map = TensorMap::new(file);
        map.insert(
            "ok",
            Tensor::new(&[1e30f32, -2.0], &Device::Cpu).unwrap(),
            file,
        );
        map.check_finite().unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            map.insert(
                "bad",
                Tensor::new(&[0f32, bad], &Device::Cpu).unwrap(),
                file,
            );
            let err = map.check_finite().unwrap_err().to_string();
            assert!(
                err.contains("w.safetensors") && err.contains("`bad`"),
                "{err}"
            );
        }
    }
}
