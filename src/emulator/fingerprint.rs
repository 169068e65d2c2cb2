//! Fingerprints: a SHA-256 over named weights, so each file can say which model it came from.
//! The package carries the full model's fingerprint; the adapter carries the package's and the
//! model's; plug-in checks the chain before it touches a weight.

use candle_core::{DType, Result, Tensor};
use sha2::{Digest, Sha256};

/// Hashes `(name, shape, f32 values)` of every tensor, in name order. The same weights give the
/// same fingerprint whatever file format they were read from.
pub fn fingerprint<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<String> {
    let mut items: Vec<(&str, &Tensor)> = tensors.into_iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, t) in items {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        for d in t.dims() {
            h.update((*d as u64).to_le_bytes());
        }
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        // Hash in bounded chunks so a large tensor is never duplicated as bytes.
        for chunk in values.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            h.update(&bytes);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The first 12 hex digits, for messages.
pub fn short(fingerprint: &str) -> &str {
    // By characters: a damaged file's fingerprint need not be ASCII.
    fingerprint
        .char_indices()
        .nth(12)
        .map_or(fingerprint, |(i, _)| &fingerprint[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn order_independent_and_value_sensitive() -> Result<()> {
        let a = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
        let b = Tensor::new(&[3f32], &Device::Cpu)?;
        let f1 = fingerprint([("a", &a), ("b", &b)])?;
        let f2 = fingerprint([("b", &b), ("a", &a)])?;
        assert_eq!(f1, f2);
        let c = Tensor::new(&[1f32, 2.5], &Device::Cpu)?;
        assert_ne!(f1, fingerprint([("a", &c), ("b", &b)])?);
        assert_ne!(f1, fingerprint([("x", &a), ("b", &b)])?);
        Ok(())
    }
}
