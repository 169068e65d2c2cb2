//! safetensors files as offsite writes and reads them. Written canonical (sorted header, so equal
//! content gives byte-identical files) and *sealed*: the header's metadata carries a SHA-256 of
//! every tensor (dtype, shape, bytes) and one of the other metadata entries. Read back, the seal
//! is checked before any tensor is used, so a file damaged on disk or in transit is refused with
//! the name of what changed instead of silently computing with it (a single flipped bit in a
//! 360 MB emulator package otherwise runs and gives perplexity 7e9).
//!
//! The seal detects damage, not tampering: whoever can change the file can recompute it. Files
//! without one (written by other tools, or by offsite before seals) are read as they are; the
//! caller learns which it was ([`Seal`]).

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use safetensors::tensor::View;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Key of the seal in the header's `__metadata__`: a JSON object mapping each tensor's name to
/// its SHA-256 (hex), and [`METADATA_ENTRY`] to that of the other metadata entries.
pub const SEAL_KEY: &str = "offsite.sha256";
/// The seal's entry for the metadata (a name no tensor can have in a safetensors file).
pub const METADATA_ENTRY: &str = "__metadata__";

/// Whether a file's contents were checked against a seal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seal {
    /// Every tensor and the metadata match the SHA-256 recorded when the file was written.
    Verified {
        /// Tensors checked.
        tensors: usize,
        /// Bytes of tensor data hashed.
        bytes: u64,
    },
    /// The file carries no seal (written by another tool or an older offsite): not checked.
    Absent,
}

impl std::fmt::Display for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seal::Verified { tensors, bytes } => write!(
                f,
                "verified: {tensors} tensors ({:.1} MB) and the metadata match their SHA-256",
                *bytes as f64 / 1e6
            ),
            Seal::Absent => write!(
                f,
                "not recorded in this file: its contents cannot be checked"
            ),
        }
    }
}

/// SHA-256 of one tensor as stored: dtype, shape and little-endian bytes.
fn tensor_digest(dtype: safetensors::Dtype, shape: &[usize], data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(format!("{dtype:?}").as_bytes());
    h.update((shape.len() as u64).to_le_bytes());
    for d in shape {
        h.update((*d as u64).to_le_bytes());
    }
    h.update(data);
    hex::encode(h.finalize())
}

/// SHA-256 of the metadata entries other than the seal, in key order.
fn metadata_digest<'a>(entries: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let sorted: BTreeMap<&String, &String> = entries
        .into_iter()
        .filter(|(k, _)| *k != SEAL_KEY)
        .collect();
    let mut h = Sha256::new();
    for (k, v) in sorted {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Serializes named tensors as sealed safetensors bytes, with HF's `format: pt` and `extra`
/// entries in the header's metadata (other tools ignore the seal's entry).
pub fn safetensors_bytes(
    tensors: &BTreeMap<String, Tensor>,
    extra: &[(&str, &str)],
    path: &Path,
) -> Result<Vec<u8>> {
    let mut metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    metadata.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let contiguous = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut seal = BTreeMap::from([(METADATA_ENTRY.to_string(), metadata_digest(&metadata))]);
    for (name, t) in &contiguous {
        seal.insert(
            name.clone(),
            tensor_digest(View::dtype(t), View::shape(t), &View::data(t)),
        );
    }
    let seal = serde_json::to_string(&seal).map_err(|e| Error::format(path, e))?;
    metadata.insert(SEAL_KEY.to_string(), seal);
    let mut bytes =
        safetensors::serialize(contiguous, Some(metadata)).map_err(|e| Error::format(path, e))?;
    canonicalize_header(&mut bytes).map_err(|e| Error::format(path, e))?;
    Ok(bytes)
}

/// Rewrites the JSON header of safetensors `bytes` with sorted keys. The library writes the
/// metadata map in hash order, so the same tensors and metadata could give different files;
/// sorted, equal content gives byte-identical files (reproducible runs, comparable hashes).
fn canonicalize_header(bytes: &mut [u8]) -> std::result::Result<(), String> {
    let len = u64::from_le_bytes(bytes[..8].try_into().map_err(|_| "short file")?) as usize;
    let header = &bytes[8..8 + len];
    // serde_json's map is a BTreeMap: parsing and printing sorts every object's keys.
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let mut sorted = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    if sorted.len() > len {
        return Err("canonical header is longer than the original".into());
    }
    sorted.resize(len, b' ');
    bytes[8..8 + len].copy_from_slice(&sorted);
    Ok(())
}

/// A safetensors file read and checked.
#[derive(Debug)]
pub struct TensorFile {
    /// The header's metadata (the seal's entry removed).
    pub metadata: BTreeMap<String, String>,
    /// The tensors in their stored dtype, in name order.
    pub tensors: Vec<(String, Tensor)>,
    /// Whether the contents were checked.
    pub seal: Seal,
}

/// Checks safetensors `bytes` (the contents of `path`) against their seal, touching no tensor
/// before the whole file is known to be intact. Returns the metadata without the seal.
pub fn verify(bytes: &[u8], path: &Path) -> Result<(BTreeMap<String, String>, Seal)> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a readable safetensors file ({e})")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::format(path, format!("not a readable safetensors file ({e})")))?;
    let mut metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let damaged = |what: String| {
        Error::format(
            path,
            format!("damaged: {what} (the file changed after offsite wrote it; ask its sender for a new copy)"),
        )
    };
    let Some(seal) = metadata.remove(SEAL_KEY) else {
        // A seal under a damaged key would make the file look unsealed: recognise it by its
        // value (a JSON object with the metadata entry).
        if let Some((key, _)) = metadata.iter().find(|(_, v)| {
            serde_json::from_str::<BTreeMap<String, String>>(v)
                .is_ok_and(|m| m.contains_key(METADATA_ENTRY))
        }) {
            return Err(damaged(format!(
                "its checksum record is under the damaged key `{}`",
                key.escape_debug()
            )));
        }
        return Ok((metadata, Seal::Absent));
    };
    let mut seal: BTreeMap<String, String> = serde_json::from_str(&seal)
        .map_err(|e| damaged(format!("its checksum record is unreadable ({e})")))?;
    let recorded = seal
        .remove(METADATA_ENTRY)
        .ok_or_else(|| damaged("its checksum record has no entry for the metadata".into()))?;
    if recorded != metadata_digest(&metadata) {
        return Err(damaged(
            "its metadata does not match the SHA-256 recorded with it".into(),
        ));
    }
    let mut bytes_hashed = 0u64;
    let mut names = file.names();
    names.sort();
    for name in &names {
        let view = file
            .tensor(name)
            .map_err(|e| damaged(format!("tensor `{name}` is unreadable ({e})")))?;
        let Some(want) = seal.remove(*name) else {
            return Err(damaged(format!(
                "tensor `{name}` is not in its checksum record"
            )));
        };
        if want != tensor_digest(view.dtype(), view.shape(), view.data()) {
            return Err(damaged(format!(
                "tensor `{name}` does not match the SHA-256 recorded with it"
            )));
        }
        bytes_hashed += view.data().len() as u64;
    }
    if let Some(missing) = seal.keys().next() {
        return Err(damaged(format!("tensor `{missing}` is missing")));
    }
    Ok((
        metadata,
        Seal::Verified {
            tensors: names.len(),
            bytes: bytes_hashed,
        },
    ))
}

/// Reads the safetensors file at `path` onto `device`, checked against its seal first.
pub fn read(path: &Path, device: &Device) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (metadata, seal) = verify(&bytes, path)?;
    let loaded = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
        Error::format(
            path,
            format!("unreadable tensors ({})", crate::error::candle_message(&e)),
        )
    })?;
    let mut tensors: Vec<(String, Tensor)> = loaded.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(TensorFile {
        metadata,
        tensors,
        seal,
    })
}

/// Checks the file at `path` against its seal without building its tensors.
pub fn check(path: &Path) -> Result<Seal> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(verify(&bytes, path)?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BTreeMap<String, Tensor> {
        let cpu = &Device::Cpu;
        BTreeMap::from([
            (
                "a.weight".to_string(),
                Tensor::arange(0f32, 12.0, cpu)
                    .unwrap()
                    .reshape((3, 4))
                    .unwrap(),
            ),
            (
                "b.bias".to_string(),
                Tensor::new(&[1f32, -2.0], cpu).unwrap(),
            ),
        ])
    }

    fn write(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
        let path = dir.join("t.safetensors");
        let bytes = safetensors_bytes(&sample(), &[("offsite", "{\"x\":1}")], &path).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }

    #[test]
    fn round_trip_is_verified_and_canonical() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = write(dir.path());
        let file = read(&path, &Device::Cpu).unwrap();
        assert_eq!(
            file.seal,
            Seal::Verified {
                tensors: 2,
                bytes: 56
            }
        );
        assert_eq!(file.metadata.get("offsite").unwrap(), "{\"x\":1}");
        assert!(!file.metadata.contains_key(SEAL_KEY));
        assert_eq!(file.tensors[0].0, "a.weight");
        // Same content, same bytes.
        let again = safetensors_bytes(&sample(), &[("offsite", "{\"x\":1}")], &path).unwrap();
        assert_eq!(bytes, again);
    }

    #[test]
    fn every_flipped_bit_of_the_data_is_caught_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = write(dir.path());
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 8;
        for i in header..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << (i % 8);
            let err = verify(&bad, &path).unwrap_err().to_string();
            assert!(
                err.contains("t.safetensors") && err.contains("damaged"),
                "{err}"
            );
            // b.bias's 8 bytes come first in the data (safetensors orders by dtype, then name).
            assert!(err.contains("a.weight") || err.contains("b.bias"), "{err}");
        }
    }

    #[test]
    fn header_damage_is_refused_without_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = write(dir.path());
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 8;
        let mut accepted = Vec::new();
        for i in 0..header {
            for bit in [0, 3, 6] {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                if let Ok((_, seal)) = verify(&bad, &path) {
                    // Only a change the seal cannot see may pass: JSON whitespace padding.
                    accepted.push((i, bad[i] as char, seal));
                }
            }
        }
        for (i, c, seal) in &accepted {
            assert!(
                c.is_ascii_whitespace() || bytes[*i] == b' ',
                "byte {i} changed to {c:?} passed ({seal:?})"
            );
        }
    }

    #[test]
    fn removed_metadata_changed_value_and_missing_tensor_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let sealed = safetensors_bytes(&sample(), &[("offsite", "{\"x\":1}")], &path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&sealed).unwrap();
        let seal = header.metadata().as_ref().unwrap()[SEAL_KEY].clone();
        // The same seal on other contents: a changed metadata value, a dropped tensor.
        let reseal = |tensors: &BTreeMap<String, Tensor>, meta: &str| {
            let contiguous: Vec<(String, Tensor)> = tensors
                .iter()
                .map(|(k, t)| (k.clone(), t.clone()))
                .collect();
            let md = std::collections::HashMap::from([
                ("format".to_string(), "pt".to_string()),
                ("offsite".to_string(), meta.to_string()),
                (SEAL_KEY.to_string(), seal.clone()),
            ]);
            safetensors::serialize(contiguous, Some(md)).unwrap()
        };
        let err = verify(&reseal(&sample(), "{\"x\":2}"), &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata does not match"), "{err}");
        let mut fewer = sample();
        fewer.remove("b.bias");
        let err = verify(&reseal(&fewer, "{\"x\":1}"), &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`b.bias` is missing"), "{err}");
        let mut more = sample();
        more.insert("c".into(), Tensor::new(&[0f32], &Device::Cpu).unwrap());
        let err = verify(&reseal(&more, "{\"x\":1}"), &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`c` is not in its checksum record"), "{err}");
    }

    #[test]
    fn a_file_without_a_seal_reads_as_unchecked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.safetensors");
        let contiguous: Vec<(String, Tensor)> = sample().into_iter().collect();
        std::fs::write(&path, safetensors::serialize(contiguous, None).unwrap()).unwrap();
        let file = read(&path, &Device::Cpu).unwrap();
        assert_eq!(file.seal, Seal::Absent);
        assert_eq!(file.tensors.len(), 2);
    }
}
