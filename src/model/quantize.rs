//! Block formats a frozen weight may be kept in (`--frozen-quantized TYPE`), and the rule that
//! picks a format a matrix's rows can be cut into.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// A GGUF block format for frozen weight matrices, as llama.cpp names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QuantType(pub GgmlDType);

/// The formats offered, by name (8-bit, the 32-value legacy formats and the k-quants).
const NAMES: [(&str, GgmlDType); 10] = [
    ("q8_0", GgmlDType::Q8_0),
    ("q5_1", GgmlDType::Q5_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q4_1", GgmlDType::Q4_1),
    ("q4_0", GgmlDType::Q4_0),
    ("q6_k", GgmlDType::Q6K),
    ("q5_k", GgmlDType::Q5K),
    ("q4_k", GgmlDType::Q4K),
    ("q3_k", GgmlDType::Q3K),
    ("q2_k", GgmlDType::Q2K),
];

impl QuantType {
    /// The format a matrix with `columns` values per row is stored in: this one when its blocks
    /// tile a row, else llama.cpp's substitute of a 32-value block (q6_k → q8_0, q5_k → q5_1,
    /// q4_k → q5_0, q3_k and q2_k → q4_0); `None` when not even that tiles it.
    pub fn for_columns(self, columns: usize) -> Option<GgmlDType> {
        let fits = |t: GgmlDType| columns > 0 && columns.is_multiple_of(t.block_size());
        let t = self.0;
        if fits(t) {
            return Some(t);
        }
        let substitute = match t {
            GgmlDType::Q6K => GgmlDType::Q8_0,
            GgmlDType::Q5K => GgmlDType::Q5_1,
            GgmlDType::Q4K => GgmlDType::Q5_0,
            GgmlDType::Q3K | GgmlDType::Q2K => GgmlDType::Q4_0,
            _ => return None,
        };
        fits(substitute).then_some(substitute)
    }

    /// `w` (`[out, in]`) in this format (or its substitute for `in`, see
    /// [`QuantType::for_columns`]); `None` when no block format tiles its rows.
    pub fn quantize(self, w: &Tensor) -> Result<Option<Arc<QTensor>>> {
        let &[_, columns] = w.dims() else {
            candle_core::bail!("only a matrix is quantized, not shape {:?}", w.dims());
        };
        let Some(t) = self.for_columns(columns) else {
            return Ok(None);
        };
        QTensor::quantize(w, t).map(|q| Some(Arc::new(q)))
    }
}

/// The name of a block format (`q4_k`).
pub fn type_name(t: GgmlDType) -> String {
    NAMES
        .iter()
        .find(|(_, d)| *d == t)
        .map_or_else(|| format!("{t:?}").to_lowercase(), |(n, _)| n.to_string())
}

impl std::str::FromStr for QuantType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        NAMES
            .iter()
            .find(|(n, _)| *n == lower)
            .map(|&(_, t)| QuantType(t))
            .ok_or_else(|| {
                let names: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown block format {s:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&type_name(self.0))
    }
}

impl TryFrom<String> for QuantType {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<QuantType> for String {
    fn from(q: QuantType) -> String {
        q.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for (name, t) in NAMES {
            let q: QuantType = name.parse().unwrap();
            assert_eq!(q.0, t);
            assert_eq!(q.to_string(), name);
        }
        assert_eq!("Q4_K".parse::<QuantType>().unwrap().0, GgmlDType::Q4K);
        let e = "q4".parse::<QuantType>().unwrap_err();
        assert!(e.contains("q8_0") && e.contains("q4_k"), "{e}");
    }

    /// llama.cpp's substitutes where a k-quant's 256-value blocks do not tile a row (SmolLM2's
    /// 576 and Gemma 3 270M's 640 columns).
    #[test]
    fn k_quants_fall_back_to_a_32_value_block_where_rows_do_not_tile() {
        let q4k = QuantType(GgmlDType::Q4K);
        assert_eq!(q4k.for_columns(1536), Some(GgmlDType::Q4K));
        assert_eq!(q4k.for_columns(640), Some(GgmlDType::Q5_0));
        assert_eq!(
            QuantType(GgmlDType::Q6K).for_columns(576),
            Some(GgmlDType::Q8_0)
        );
        assert_eq!(
            QuantType(GgmlDType::Q2K).for_columns(576),
            Some(GgmlDType::Q4_0)
        );
        assert_eq!(QuantType(GgmlDType::Q8_0).for_columns(48), None);
        assert_eq!(q4k.for_columns(48), None);
    }

    #[test]
    fn quantizes_matrices_only() -> Result<()> {
        let w = crate::ops::testing::rand_tensor(&[4, 64], candle_core::DType::F32, 3)?;
        let q = QuantType(GgmlDType::Q8_0)
            .quantize(&w)?
            .expect("64 columns tile");
        assert_eq!(q.shape().dims(), &[4, 64]);
        let odd = crate::ops::testing::rand_tensor(&[4, 40], candle_core::DType::F32, 3)?;
        assert!(QuantType(GgmlDType::Q8_0).quantize(&odd)?.is_none());
        let v = crate::ops::testing::rand_tensor(&[64], candle_core::DType::F32, 3)?;
        assert!(QuantType(GgmlDType::Q8_0).quantize(&v).is_err());
        Ok(())
    }
}
