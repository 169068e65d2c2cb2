//! How the processes of a data-parallel run combine their work (one data owner with a lot of
//! data, several processes or nodes): every rank takes its slice of each global batch, and the
//! trainer sums token counts, losses and gradients over the ranks before clipping and AdamW, so
//! that N ranks take the same steps as one process with the whole batch.
//!
//! [`Single`] is the one-process run (nothing to combine). With the cargo feature `mpi`, a
//! binary started by `mpiexec -n N` joins MPI's world communicator (rsmpi); NCCL could slot in
//! here later for GPUs. The trainer stays one code path either way.

use crate::Result;
use std::sync::{Arc, OnceLock};

/// The group of processes a training run is spread over.
pub trait Collective: Send + Sync {
    /// This process's index, 0 ..< [`Collective::size`].
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Element-wise sum over every rank, in place: every rank ends with the same sums.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()>;
    /// [`Collective::all_reduce_sum`] in f64 (token counts, losses).
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Overwrites `values` on every rank with rank 0's.
    fn broadcast(&self, values: &mut [f32]) -> Result<()>;
    /// What this is, for messages ("1 process", "MPI rank 1 of 4").
    fn describe(&self) -> String;
    /// Whether this process writes logs, checkpoints and outputs (rank 0).
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// One process: nothing to combine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "1 process".into()
    }
}

static WORLD: OnceLock<Arc<dyn Collective>> = OnceLock::new();

/// The group this process was started in: MPI's world when [`init`] found an `mpiexec` launch,
/// else [`Single`].
pub fn world() -> Arc<dyn Collective> {
    WORLD.get_or_init(|| Arc::new(Single)).clone()
}

/// Keeps MPI initialised while alive (finalised on drop); `()` where there is nothing to keep.
pub type Guard = Option<Box<dyn std::any::Any>>;

/// Joins MPI's world when this process was started by `mpiexec` (its PMI / Open MPI variables
/// are set) and the binary has the `mpi` feature; call once, first thing in `main`, and keep
/// the guard until the end. Without the feature, a launch by `mpiexec` is an error rather than N
/// processes each training alone on the whole data.
pub fn init() -> Result<Guard> {
    let launched = ["PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok());
    let Some(size) = launched else {
        return Ok(None);
    };
    #[cfg(feature = "mpi")]
    {
        let _ = size;
        let (guard, world) = mpi_world::join()?;
        let _ = WORLD.set(world);
        Ok(Some(guard))
    }
    #[cfg(not(feature = "mpi"))]
    {
        if size.trim() == "1" {
            return Ok(None);
        }
        Err(crate::Error::Invalid(format!(
            "started by mpiexec with {size} processes, but this offsite was built without MPI: \
             build it with `cargo build --release --features mpi`"
        )))
    }
}

#[cfg(feature = "mpi")]
mod mpi_world {
    //! MPI's world communicator (rsmpi over the system's MPI library, e.g. MPICH).

    use super::Collective;
    use crate::{Error, Result};
    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use std::sync::{Arc, Mutex};

    /// The world communicator. MPI is initialised single-threaded and only the training loop's
    /// thread calls it; the mutex keeps it that way.
    struct World {
        comm: Mutex<SimpleCommunicator>,
        rank: usize,
        size: usize,
    }

    // SAFETY: the communicator is a handle into the MPI library, used behind the mutex from
    // one thread at a time, as MPI_THREAD_SINGLE allows when calls are not concurrent.
    unsafe impl Send for World {}
    unsafe impl Sync for World {}

    /// The universe (finalises MPI on drop), carried as the guard.
    struct Universe(#[allow(dead_code)] mpi::environment::Universe);

    pub fn join() -> Result<(Box<dyn std::any::Any>, Arc<dyn Collective>)> {
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Invalid("MPI was already initialised in this process".into()))?;
        let comm = universe.world();
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        let world = World {
            comm: Mutex::new(comm),
            rank,
            size,
        };
        Ok((Box::new(Universe(universe)), Arc::new(world)))
    }

    impl World {
        fn comm(&self) -> std::sync::MutexGuard<'_, SimpleCommunicator> {
            self.comm.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl Collective for World {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
            let send = values.to_vec();
            self.comm()
                .all_reduce_into(&send[..], values, SystemOperation::sum());
            Ok(())
        }
        fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
            let send = values.to_vec();
            self.comm()
                .all_reduce_into(&send[..], values, SystemOperation::sum());
            Ok(())
        }
        fn broadcast(&self, values: &mut [f32]) -> Result<()> {
            let comm = self.comm();
            comm.process_at_rank(0).broadcast_into(values);
            Ok(())
        }
        fn describe(&self) -> String {
            format!("MPI rank {} of {}", self.rank, self.size)
        }
    }
}

/// A group of ranks in one process, one thread per rank: the data-parallel arithmetic tested
/// without MPI (each rank's calls meet at a barrier).
#[cfg(test)]
pub mod threads {
    use super::Collective;
    use crate::Result;
    use std::sync::{Arc, Barrier, Mutex};

    /// What the ranks of one group share.
    pub struct Shared {
        barrier: Barrier,
        sums: Mutex<Vec<f64>>,
        size: usize,
    }

    /// One rank of the group.
    pub struct Rank {
        shared: Arc<Shared>,
        rank: usize,
    }

    /// `size` ranks that reduce among themselves.
    pub fn group(size: usize) -> Vec<Rank> {
        let shared = Arc::new(Shared {
            barrier: Barrier::new(size),
            sums: Mutex::new(Vec::new()),
            size,
        });
        (0..size)
            .map(|rank| Rank {
                shared: shared.clone(),
                rank,
            })
            .collect()
    }

    impl Rank {
        /// Every rank adds `values` (rank 0's alone when `root_only`) into the shared buffer;
        /// after the barrier every rank reads the total.
        fn exchange(&self, values: &mut [f64], root_only: bool) {
            let s = &self.shared;
            if self.rank == 0 {
                *s.sums.lock().unwrap() = vec![0.0; values.len()];
            }
            s.barrier.wait();
            if !root_only || self.rank == 0 {
                let mut sums = s.sums.lock().unwrap();
                for (a, v) in sums.iter_mut().zip(values.iter()) {
                    *a += v;
                }
            }
            s.barrier.wait();
            values.copy_from_slice(&s.sums.lock().unwrap());
            s.barrier.wait();
        }
    }

    impl Collective for Rank {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.shared.size
        }
        fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
            let mut wide: Vec<f64> = values.iter().map(|&v| v as f64).collect();
            self.exchange(&mut wide, false);
            for (v, w) in values.iter_mut().zip(wide) {
                *v = w as f32;
            }
            Ok(())
        }
        fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
            self.exchange(values, false);
            Ok(())
        }
        fn broadcast(&self, values: &mut [f32]) -> Result<()> {
            let mut wide: Vec<f64> = values.iter().map(|&v| v as f64).collect();
            self.exchange(&mut wide, true);
            for (v, w) in values.iter_mut().zip(wide) {
                *v = w as f32;
            }
            Ok(())
        }
        fn describe(&self) -> String {
            format!("thread rank {} of {}", self.rank, self.shared.size)
        }
    }
}

/// Rank `rank`'s part of a batch's sequence indices: `size` contiguous, nearly equal parts in
/// rank order (the last batch of an epoch may leave a rank none).
pub fn slice(idx: &[usize], rank: usize, size: usize) -> &[usize] {
    &idx[rank * idx.len() / size..(rank + 1) * idx.len() / size]
}

/// Sets every rank's parameters to rank 0's.
pub fn broadcast_params(group: &dyn Collective, params: &[super::Param]) -> Result<()> {
    for p in params {
        let t = p.var.as_tensor();
        let mut values = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        group.broadcast(&mut values)?;
        let shared = candle_core::Tensor::from_vec(values, t.dims(), t.device())?;
        p.var.set(&shared.to_dtype(t.dtype())?)?;
    }
    Ok(())
}

/// Sums tensors element-wise over the ranks (one reduction for all of them).
pub fn all_reduce_tensors(
    group: &dyn Collective,
    tensors: &[candle_core::Tensor],
) -> Result<Vec<candle_core::Tensor>> {
    let mut flat = Vec::with_capacity(tensors.iter().map(|t| t.elem_count()).sum());
    for t in tensors {
        flat.extend(
            t.flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?,
        );
    }
    group.all_reduce_sum(&mut flat)?;
    let mut out = Vec::with_capacity(tensors.len());
    let mut at = 0;
    for t in tensors {
        let n = t.elem_count();
        let part = candle_core::Tensor::from_slice(&flat[at..at + n], t.dims(), t.device())?;
        out.push(part.to_dtype(t.dtype())?);
        at += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Sequence;
    use crate::model::{Model, ModelConfig};
    use crate::train::{loss::lm_loss, train, trainable_params, TrainJob, TrainOptions};
    use candle_core::{DType, Tensor};
    use std::collections::BTreeMap;

    /// Trains a tiny model (every weight) for 3 steps with `group` as the run's collective, on
    /// sequences of different lengths (so the ranks' target counts differ); returns rank 0's
    /// parameters and the summary's tokens and loss.
    fn run(
        group: Arc<dyn Collective>,
        data: &[Sequence],
    ) -> (BTreeMap<String, Tensor>, usize, f64) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::random(&ModelConfig::tiny(), 9, DType::F32).unwrap();
        let params = trainable_params(&mut model, |_| true).unwrap();
        let options = TrainOptions {
            max_steps: Some(3),
            batch_size: 4,
            // AdamW moves a weight by ~lr whatever its gradient's size, so float sums in
            // another order show at ~lr·1e-3 on weights whose gradients are near zero.
            lr: 1e-3,
            clip: 0.5,
            save_every: 2,
            ..TrainOptions::default()
        };
        let mut job = TrainJob::beside(
            &dir.path().join(format!("out{}", group.rank())),
            "test",
            params,
            data,
            Some(&data[..3]),
            0,
            &options,
            1,
        );
        job.collective = group;
        let out = train(job, &|b, s| lm_loss(&model, b, s)).unwrap();
        let s = out.summary;
        (out.params, s.tokens, s.best_val_loss.unwrap())
    }

    #[test]
    fn ranks_sharing_each_batch_take_the_steps_of_one_process_with_the_whole_batch() {
        let data: Vec<Sequence> = (0..9)
            .map(|i| Sequence {
                ids: (0..(5 + 3 * (i % 4)))
                    .map(|j| ((7 * i + 3 * j) % 30) as u32)
                    .collect(),
                loss_from: 1 + i % 3,
            })
            .collect();
        let (single, tokens, val) = run(Arc::new(Single), &data);
        for size in [2, 4] {
            let results: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = threads::group(size)
                    .into_iter()
                    .map(|rank| {
                        let data = &data;
                        scope.spawn(move || run(Arc::new(rank), data))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (params, t, v) in &results {
                assert_eq!(*t, tokens, "{size} ranks count every token once");
                assert!(
                    (v - val).abs() < 1e-5,
                    "{size} ranks: validation {v} vs {val}"
                );
                for (name, w) in &single {
                    let d = (w - &params[name])
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(d < 1e-5, "{size} ranks: {name} differs by {d}");
                }
            }
        }
    }

    #[test]
    fn slices_cover_the_batch_once_in_rank_order() {
        let idx: Vec<usize> = (10..17).collect();
        for size in 1..=8 {
            let parts: Vec<usize> = (0..size)
                .flat_map(|r| slice(&idx, r, size).to_vec())
                .collect();
            assert_eq!(parts, idx);
        }
    }

    #[test]
    fn a_group_larger_than_the_batch_is_refused() {
        let data = vec![
            Sequence {
                ids: vec![1, 2, 3],
                loss_from: 1
            };
            4
        ];
        let err = std::thread::scope(|scope| {
            let handles: Vec<_> = threads::group(2)
                .into_iter()
                .map(|rank| {
                    let data = &data;
                    scope.spawn(move || {
                        let w = candle_core::Var::new(&[1f32], &candle_core::Device::Cpu).unwrap();
                        let options = TrainOptions {
                            batch_size: 1,
                            max_steps: Some(1),
                            ..TrainOptions::default()
                        };
                        let dir = tempfile::tempdir().unwrap();
                        let mut job = TrainJob::beside(
                            &dir.path().join("o"),
                            "test",
                            vec![crate::train::Param::new("w", w.clone())],
                            data,
                            None,
                            0,
                            &options,
                            1,
                        );
                        job.collective = Arc::new(rank);
                        train(job, &|_, _| w.as_tensor().sum_all())
                            .unwrap_err()
                            .to_string()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert!(
            err[0].contains("--batch-size 1") && err[0].contains("2 processes"),
            "{err:?}"
        );
    }
}
