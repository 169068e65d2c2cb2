//! CRaSh's cluster–remove–share (Zhang et al., EMNLP 2023): layers whose representations are
//! alike are clustered into runs of consecutive layers, one layer of each run is stored, and it
//! runs once for every member of its run.

use crate::emulator::make::fidelity::MiddleProbe;
use crate::{Error, Result};
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

/// Consecutive runs of middle layers and the layer stored for each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Clusters {
    /// Original layer indices of each run, in order.
    pub members: Vec<Vec<usize>>,
    /// The layer stored (and run for every member) of each run.
    pub stored: Vec<usize>,
}

impl Clusters {
    /// The emulator's layer list: each run's stored layer, once per member.
    pub fn layer_map(&self) -> Vec<usize> {
        self.members
            .iter()
            .zip(&self.stored)
            .flat_map(|(m, &s)| std::iter::repeat_n(s, m.len()))
            .collect()
    }
}

/// The output of every middle layer on the calibration text, each token scaled to unit length
/// (a massive activation then weighs as one token) and centred over tokens: `[tokens, hidden]`.
fn layer_representations(probe: &MiddleProbe) -> Result<Vec<Tensor>> {
    let middle: Vec<usize> = probe.middle().collect();
    let mut per_layer: Vec<Vec<Tensor>> = vec![Vec::new(); middle.len()];
    for (b, (input, lens)) in probe.inputs().enumerate() {
        let mut h = input.clone();
        for (slot, &layer) in middle.iter().enumerate() {
            h = probe.run(b, h, &[layer])?;
            for (row, &len) in lens.iter().enumerate() {
                let x = h
                    .get(row)?
                    .narrow(0, 0, len)?
                    .to_dtype(candle_core::DType::F32)?;
                let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
                per_layer[slot].push(x.broadcast_div(&norm)?);
            }
        }
    }
    per_layer
        .into_iter()
        .map(|parts| {
            let x = Tensor::cat(&parts, 0)?;
            Ok(x.broadcast_sub(&x.mean_keepdim(0)?)?)
        })
        .collect()
}

/// Linear CKA between the middle layers' outputs on the probe's calibration text (`[m][m]`,
/// symmetric, 1 on the diagonal): `‖XᵢᵀXⱼ‖² / (‖XᵢᵀXᵢ‖ ‖XⱼᵀXⱼ‖)` over centred, per-token
/// normalised representations.
pub fn cka_matrix(probe: &MiddleProbe) -> Result<Vec<Vec<f64>>> {
    let reps = layer_representations(probe)?;
    let cross = |a: &Tensor, b: &Tensor| -> Result<f64> {
        let c = a.t()?.matmul(b)?;
        Ok(c.sqr()?.sum_all()?.to_scalar::<f32>()? as f64)
    };
    let self_norms: Vec<f64> = reps
        .iter()
        .map(|x| cross(x, x).map(f64::sqrt))
        .collect::<Result<_>>()?;
    let m = reps.len();
    let mut sim = vec![vec![0.0; m]; m];
    for i in 0..m {
        for j in i..m {
            let s =
                cross(&reps[i], &reps[j])? / (self_norms[i] * self_norms[j]).max(f64::MIN_POSITIVE);
            sim[i][j] = s;
            sim[j][i] = s;
        }
    }
    Ok(sim)
}

/// The member of `a..b` most like the others (highest summed similarity; ties to the lower)
/// and the run's cost `Σ (1 − sim(i, rep))`.
fn medoid(sim: &[Vec<f64>], a: usize, b: usize) -> (usize, f64) {
    let mut best = (a, f64::INFINITY);
    for r in a..b {
        let cost: f64 = sim[a..b].iter().map(|row| 1.0 - row[r]).sum();
        if cost < best.1 {
            best = (r, cost);
        }
    }
    best
}

/// Cuts `sim`'s `m` layers (original indices `first..first+m`) into `k` runs of consecutive
/// layers that minimise `Σ_runs Σ_members (1 − sim(member, medoid))` (exact, by dynamic
/// programming; ties go to the earlier cut), storing each run's medoid.
pub fn cluster(sim: &[Vec<f64>], first: usize, k: usize) -> Result<Clusters> {
    let m = sim.len();
    if k == 0 || k > m {
        return Err(Error::Invalid(format!(
            "cannot cluster {m} middle layers into {k} shared layers"
        )));
    }
    // best[c][j]: the cheapest cut of layers 0..j into c runs, and where its last run starts.
    let mut best = vec![vec![(f64::INFINITY, 0usize); m + 1]; k + 1];
    best[0][0] = (0.0, 0);
    for c in 1..=k {
        for j in c..=m {
            for s in c - 1..j {
                let prev = best[c - 1][s].0;
                if prev.is_finite() {
                    let total = prev + medoid(sim, s, j).1;
                    if total < best[c][j].0 {
                        best[c][j] = (total, s);
                    }
                }
            }
        }
    }
    let mut bounds = vec![m];
    let (mut c, mut j) = (k, m);
    while c > 0 {
        j = best[c][j].1;
        bounds.push(j);
        c -= 1;
    }
    bounds.reverse();
    let (mut members, mut stored) = (Vec::new(), Vec::new());
    for w in bounds.windows(2) {
        members.push((w[0]..w[1]).map(|i| i + first).collect());
        stored.push(medoid(sim, w[0], w[1]).0 + first);
    }
    Ok(Clusters { members, stored })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two blocks of alike layers, {0, 1} and {2, 3, 4}, where layer 3 is the most central.
    fn blocks() -> Vec<Vec<f64>> {
        let mut s = vec![vec![0.1; 5]; 5];
        for (i, row) in s.iter_mut().enumerate() {
            row[i] = 1.0;
        }
        let mut set = |i: usize, j: usize, v: f64| {
            s[i][j] = v;
            s[j][i] = v;
        };
        set(0, 1, 0.9);
        set(2, 3, 0.9);
        set(3, 4, 0.9);
        set(2, 4, 0.7);
        s
    }

    #[test]
    fn clusters_by_hand() {
        let c = cluster(&blocks(), 2, 2).unwrap();
        assert_eq!(c.members, [vec![2, 3], vec![4, 5, 6]]);
        // {0,1}: both medoids cost 0.1, the lower wins; {2,3,4}: 3 costs 0.2 against 0.4.
        assert_eq!(c.stored, [2, 5]);
        assert_eq!(c.layer_map(), [2, 2, 5, 5, 5]);
        // One run per layer stores every layer; one run shares the medoid everywhere.
        let all = cluster(&blocks(), 0, 5).unwrap();
        assert_eq!(all.layer_map(), [0, 1, 2, 3, 4]);
        assert_eq!(
            cluster(&blocks(), 0, 1).unwrap().members,
            [vec![0, 1, 2, 3, 4]]
        );
        assert!(cluster(&blocks(), 0, 0).is_err());
        assert!(cluster(&blocks(), 0, 6).is_err());
    }

    #[test]
    fn cka_is_one_on_the_diagonal_symmetric_and_bounded() {
        use crate::data::{Batch, Sequence};
        use crate::model::{Model, ModelConfig};
        let config = ModelConfig {
            num_layers: 5,
            ..ModelConfig::tiny()
        };
        let full = Model::random(&config, 8, candle_core::DType::F32).unwrap();
        let seqs: Vec<Sequence> = (0..3)
            .map(|r| Sequence {
                ids: (0..10 - r).map(|i| ((i * 3 + r) % 29 + 1) as u32).collect(),
                loss_from: 1,
            })
            .collect();
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let batch = Batch::new(&refs, 0, &candle_core::Device::Cpu).unwrap();
        let probe = MiddleProbe::new(&full, 1, 1, &[batch]).unwrap();
        let sim = cka_matrix(&probe).unwrap();
        assert_eq!(sim.len(), 3);
        for i in 0..3 {
            assert!((sim[i][i] - 1.0).abs() < 1e-5, "{sim:?}");
            for j in 0..3 {
                assert_eq!(sim[i][j], sim[j][i]);
                assert!(sim[i][j] > 0.0 && sim[i][j] <= 1.0 + 1e-5, "{sim:?}");
            }
        }
    }
}
