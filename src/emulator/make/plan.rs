//! The one place that decides which layers form the adapter and which middle layers the
//! emulator keeps. Building, tuning, plug-in and evaluation all call [`plan`].

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The paper's uniform choice of `k` of `m` middle layers (relative indices): stride
/// `(m-1)/(k-1)`, index `round(i·stride)` with Python's round-half-to-even, as in the
/// original implementation (`6 · 25/12 = 12.5` must round to 12, not 13).
pub fn uniform_choice(m: usize, k: usize) -> Result<Vec<usize>> {
    if k > m {
        return Err(Error::Invalid(format!(
            "cannot keep {k} of {m} middle layers"
        )));
    }
    Ok(match k {
        0 => Vec::new(),
        // The formula divides by k-1; one kept layer is the middle one.
        1 => vec![((m - 1) as f64 / 2.0).round_ties_even() as usize],
        _ => {
            let stride = (m - 1) as f64 / (k - 1) as f64;
            (0..k)
                .map(|i| (i as f64 * stride).round_ties_even() as usize)
                .collect()
        }
    })
}

/// Which original layers are adapter (bottom, top) and which the emulator keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Number of layers of the full model.
    pub num_layers: usize,
    /// Trainable adapter layers below the emulator, `0..bottom`.
    pub bottom: Vec<usize>,
    /// Middle layers kept (frozen) in the emulator, ascending.
    pub emulator: Vec<usize>,
    /// Trainable adapter layers above the emulator, `n-top..n`.
    pub top: Vec<usize>,
}

impl Split {
    /// Adapter layers, bottom then top.
    pub fn adapter(&self) -> Vec<usize> {
        self.bottom.iter().chain(&self.top).copied().collect()
    }

    /// Every layer the emulator package runs, in order: bottom, emulator, top.
    pub fn layer_order(&self) -> Vec<usize> {
        self.bottom
            .iter()
            .chain(&self.emulator)
            .chain(&self.top)
            .copied()
            .collect()
    }

    /// Whether original layer `i` is an adapter layer.
    pub fn is_adapter(&self, i: usize) -> bool {
        self.bottom.contains(&i) || self.top.contains(&i)
    }
}

impl Split {
    /// An `n`-layer model with adapter `[0, bottom)` and `[n-top, n)` whose emulator runs the
    /// original middle layers `emulator` in that order. An entry may repeat (a layer shared in
    /// place of its neighbours), but the list never goes back: layer `i` cannot run after a
    /// layer above it.
    pub fn new(n: usize, bottom: usize, top: usize, emulator: Vec<usize>) -> Result<Self> {
        if bottom + top > n {
            return Err(Error::Invalid(format!(
                "an adapter of {bottom} bottom + {top} top layers does not fit a {n}-layer model"
            )));
        }
        let middle = bottom..n - top;
        if let Some(bad) = emulator.iter().find(|i| !middle.contains(i)) {
            return Err(Error::Invalid(format!(
                "emulator layer {bad} is not a middle layer ({}..{})",
                middle.start, middle.end
            )));
        }
        if emulator.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::Invalid(format!(
                "emulator layers {emulator:?} go back: they must not decrease"
            )));
        }
        Ok(Split {
            num_layers: n,
            bottom: (0..bottom).collect(),
            emulator,
            top: (n - top..n).collect(),
        })
    }

    /// The distinct middle layers the emulator stores (its weights), ascending.
    pub fn stored(&self) -> Vec<usize> {
        let mut v = self.emulator.clone();
        v.dedup();
        v
    }

    /// Number of middle layers of the full model.
    pub fn num_middle(&self) -> usize {
        self.num_layers - self.bottom.len() - self.top.len()
    }

    /// Whether some stored layer runs more than once.
    pub fn shares(&self) -> bool {
        self.stored().len() != self.emulator.len()
    }
}

/// Splits an `n`-layer model: adapter `[0, bottom)` and `[n-top, n)`, and `keep` of the
/// `n - bottom - top` middle layers chosen by [`uniform_choice`] (the paper's plan; the
/// data-driven strategies of [`super::strategy`] build their [`Split`] with [`Split::new`]).
pub fn plan(n: usize, bottom: usize, top: usize, keep: usize) -> Result<Split> {
    let m = n.checked_sub(bottom + top).ok_or_else(|| {
        Error::Invalid(format!(
            "an adapter of {bottom} bottom + {top} top layers does not fit a {n}-layer model"
        ))
    })?;
    let emulator = uniform_choice(m, keep)?
        .into_iter()
        .map(|i| i + bottom)
        .collect();
    Split::new(n, bottom, top, emulator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_reference_choices() {
        // Computed with Python's round(), the original repository's formula.
        type Case = ((usize, usize, usize, usize), &'static [usize]);
        let cases: [Case; 9] = [
            (
                (30, 2, 2, 13),
                &[2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27],
            ),
            (
                (30, 2, 2, 20),
                &[
                    2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 26, 27,
                ],
            ),
            ((30, 2, 2, 6), &[2, 7, 12, 17, 22, 27]),
            ((30, 0, 2, 10), &[0, 3, 6, 9, 12, 15, 18, 21, 24, 27]),
            ((30, 2, 0, 10), &[2, 5, 8, 11, 14, 17, 20, 23, 26, 29]),
            ((24, 1, 1, 7), &[1, 5, 8, 11, 15, 19, 22]),
            ((12, 2, 2, 5), &[2, 4, 6, 7, 9]),
            (
                (48, 2, 2, 18),
                &[
                    2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27, 30, 32, 35, 37, 40, 42, 45,
                ],
            ),
            ((30, 2, 2, 2), &[2, 27]),
        ];
        for ((n, b, t, k), want) in cases {
            let split = plan(n, b, t, k).unwrap();
            assert_eq!(split.emulator, want, "{n}-{b}-{t} keep {k}");
            assert_eq!(split.bottom, (0..b).collect::<Vec<_>>());
            assert_eq!(split.top, (n - t..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn smollm2_sandwich_layer_order() {
        let s = plan(30, 2, 2, 13).unwrap();
        assert_eq!(
            s.layer_order(),
            [0, 1, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 28, 29]
        );
        assert_eq!(s.adapter(), [0, 1, 28, 29]);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(plan(10, 2, 2, 0).unwrap().emulator, Vec::<usize>::new());
        assert_eq!(plan(10, 2, 2, 6).unwrap().emulator, [2, 3, 4, 5, 6, 7]);
        assert_eq!(plan(10, 2, 2, 1).unwrap().emulator, [4]);
        assert!(plan(10, 2, 2, 7).is_err());
        assert!(plan(3, 2, 2, 0).is_err());
    }

    #[test]
    fn shared_splits_store_each_layer_once_and_never_go_back() {
        let s = Split::new(10, 2, 2, vec![2, 2, 4, 4, 4, 7]).unwrap();
        assert_eq!(s.stored(), [2, 4, 7]);
        assert!(s.shares());
        assert_eq!(s.num_middle(), 6);
        assert_eq!(s.layer_order(), [0, 1, 2, 2, 4, 4, 4, 7, 8, 9]);
        assert!(!plan(10, 2, 2, 3).unwrap().shares());
        assert!(Split::new(10, 2, 2, vec![4, 3]).is_err());
        assert!(Split::new(10, 2, 2, vec![1]).is_err());
        assert!(Split::new(10, 2, 2, vec![8]).is_err());
    }
}
