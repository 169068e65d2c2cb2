//! Named tensors as loaded from a checkpoint, remembering which file each came from so that a
//! missing or misshapen tensor is reported against the right file.

use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Tensors by Hugging Face parameter name (`model.layers.3.self_attn.q_proj.weight`).
#[derive(Clone, Debug, Default)]
pub struct TensorMap {
    tensors: BTreeMap<String, (Tensor, PathBuf)>,
    /// Where a tensor that is absent would have been (the checkpoint as a whole).
    origin: PathBuf,
}

impl TensorMap {
    /// An empty map for tensors of the checkpoint at `origin`.
    pub fn new(origin: impl Into<PathBuf>) -> Self {
        TensorMap {
            tensors: BTreeMap::new(),
            origin: origin.into(),
        }
    }

    /// Adds a tensor read from `file`.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor, file: &Path) {
        self.tensors
            .insert(name.into(), (tensor, file.to_path_buf()));
    }

    /// The tensor called `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (tensor, file) = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.origin.clone(),
            name: name.to_string(),
        })?;
        if tensor.dims() != shape {
            return Err(Error::TensorShape {
                path: file.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: tensor.dims().to_vec(),
            });
        }
        Ok(tensor.clone())
    }

    /// Takes `name` out of the map.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name).map(|(t, _)| t)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The shape of `name`, when present.
    pub fn dims(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|(t, _)| t.dims())
    }

    /// All names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Name, tensor pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, (t, _))| (k.as_str(), t))
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

    /// Name, tensor and source file of every entry, by value, sorted by name.
    pub fn into_entries(self) -> impl Iterator<Item = (String, Tensor, PathBuf)> {
        self.tensors.into_iter().map(|(k, (t, f))| (k, t, f))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
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
