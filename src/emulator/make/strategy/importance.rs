//! Forward-only greedy search by fidelity: the layers whose removal hurts the emulator most are
//! kept. With sharing allowed, a removed layer's place may instead be taken by the stored
//! layer next to it (the move CRaSh makes by similarity, chosen here by measurement).

use crate::emulator::make::fidelity::MiddleProbe;
use crate::Result;
use serde::{Deserialize, Serialize};

/// One step of the search: a stored layer taken out, who stands in for it, and the emulator's
/// mean relative error afterwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    /// The original layer removed.
    pub layer: usize,
    /// The stored layer that now runs in its place (`None`: its place is dropped).
    pub replaced_by: Option<usize>,
    /// Mean relative error at the top adapter's input after this step.
    pub rel_l2: f64,
}

/// Starting from every middle layer of `probe`, repeatedly removes the stored layer whose
/// removal leaves the lowest mean relative error at the top adapter's input, until `keep`
/// distinct layers remain. A removed layer's positions are dropped, or, when `share` is set,
/// possibly run by the neighbouring stored layer below or above instead, whichever measures
/// best. Returns the emulator's layer list and the steps. Ties go to the earlier candidate
/// (lower layer; drop before left before right), so the result is deterministic.
pub fn greedy(probe: &MiddleProbe, keep: usize, share: bool) -> Result<(Vec<usize>, Vec<Removal>)> {
    let mut map: Vec<usize> = probe.middle().collect();
    if keep == 0 || keep > map.len() {
        return Err(crate::Error::Invalid(format!(
            "cannot keep {keep} of {} middle layers",
            map.len()
        )));
    }
    let mut steps = Vec::new();
    loop {
        let mut stored = map.clone();
        stored.dedup();
        if stored.len() <= keep {
            break;
        }
        // States before each position of the current map: a candidate that changes positions
        // from j on only reruns the layers from there.
        let states = probe.prefix_states(&map)?;
        let mut best: Option<(Vec<usize>, Removal)> = None;
        for (s, &layer) in stored.iter().enumerate() {
            let first = map.iter().position(|&l| l == layer).expect("stored");
            let mut stand_ins = vec![None];
            if share {
                stand_ins.extend(s.checked_sub(1).map(|p| Some(stored[p])));
                stand_ins.extend(stored.get(s + 1).map(|&n| Some(n)));
            }
            for by in stand_ins {
                let candidate: Vec<usize> = match by {
                    None => map.iter().copied().filter(|&l| l != layer).collect(),
                    Some(b) => map
                        .iter()
                        .map(|&l| if l == layer { b } else { l })
                        .collect(),
                };
                let starts: Vec<_> = states.iter().map(|st| &st[first]).collect();
                let err = probe.fidelity_from(&starts, &candidate[first..])?.rel_l2;
                if best.as_ref().is_none_or(|(_, r)| err < r.rel_l2) {
                    let removal = Removal {
                        layer,
                        replaced_by: by,
                        rel_l2: err,
                    };
                    best = Some((candidate, removal));
                }
            }
        }
        let (next, removal) = best.expect("at least one stored layer");
        eprintln!(
            "importance: removed layer {}{} (mean relative error {:.4}), {} stored",
            removal.layer,
            removal
                .replaced_by
                .map_or(String::new(), |b| format!(", layer {b} runs in its place")),
            removal.rel_l2,
            stored.len() - 1
        );
        map = next;
        steps.push(removal);
    }
    Ok((map, steps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Batch, Sequence};
    use crate::model::{Model, ModelConfig};
    use candle_core::{DType, Device, Tensor};

    /// A random 6-layer model whose layer 3 is made the identity (its output maps zeroed): it
    /// is the one layer whose removal changes nothing.
    fn model_with_a_dead_layer() -> Model {
        let config = ModelConfig {
            num_layers: 6,
            ..ModelConfig::tiny()
        };
        let mut m = crate::model::model::random_tensors(&config, 5, DType::F32).unwrap();
        for name in ["self_attn.o_proj.weight", "mlp.down_proj.weight"] {
            let name = format!("model.layers.3.{name}");
            let t = m.remove(&name).unwrap_or_else(|| panic!("{name}"));
            m.insert(
                name,
                Tensor::zeros_like(&t).unwrap(),
                std::path::Path::new("t"),
            );
        }
        Model::from_tensors(&config, &m, None).unwrap()
    }

    fn probe_of(full: &Model) -> MiddleProbe<'_> {
        let seq = Sequence {
            ids: (0..12).map(|i| (i * 5 % 29 + 1) as u32).collect(),
            loss_from: 1,
        };
        let batch = Batch::new(&[&seq], 0, &Device::Cpu).unwrap();
        MiddleProbe::new(full, 1, 1, &[batch]).unwrap()
    }

    #[test]
    fn drops_the_layer_that_does_nothing_first_and_is_deterministic() {
        let full = model_with_a_dead_layer();
        let probe = probe_of(&full);
        let (kept, steps) = greedy(&probe, 2, false).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(
            (steps[0].layer, steps[0].replaced_by),
            (3, None),
            "{steps:?}"
        );
        assert!(steps[0].rel_l2 < 1e-6, "{steps:?}");
        assert_eq!(kept.len(), 2);
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        // Every middle layer is either kept or removed, once.
        let mut all: Vec<usize> = kept
            .iter()
            .copied()
            .chain(steps.iter().map(|d| d.layer))
            .collect();
        all.sort();
        assert_eq!(all, [1, 2, 3, 4]);
        // The same inputs give the same choice, and the last step's error is the result's.
        assert_eq!(
            greedy(&probe, 2, false).unwrap(),
            (kept.clone(), steps.clone())
        );
        assert_eq!(probe.fidelity(&kept).unwrap().rel_l2, steps[1].rel_l2);
        assert!(greedy(&probe, 5, false).is_err());
        assert!(greedy(&probe, 0, false).is_err());
    }

    #[test]
    fn sharing_keeps_the_map_ordered_and_stands_in_with_stored_neighbours() {
        let full = model_with_a_dead_layer();
        let probe = probe_of(&full);
        let (map, steps) = greedy(&probe, 2, true).unwrap();
        let mut stored = map.clone();
        stored.dedup();
        assert_eq!(stored.len(), 2);
        assert!(map.windows(2).all(|w| w[0] <= w[1]));
        // Each step's candidates include the drop, so the first step (the dead layer, which
        // costs nothing to drop) can only tie it.
        assert!(steps[0].rel_l2 < 1e-6, "{steps:?}");
        // A stand-in is always a layer still stored at that point, next to the removed one.
        for (i, s) in steps.iter().enumerate() {
            if let Some(b) = s.replaced_by {
                assert!(steps[..i].iter().all(|p| p.layer != b), "{steps:?}");
            }
        }
        assert_eq!(probe.fidelity(&map).unwrap().rel_l2, steps[1].rel_l2);
    }
}
