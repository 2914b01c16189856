//! A group of ranks that are threads of one process, exchanging tensors through shared memory:
//! what the tests split a model with (CPU threads, or threads sharing one GPU), and the
//! fallback for devices without NCCL.

use super::collective::{Collective, GroupHealth};
use candle_core::{Result, Tensor};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The tensors of one exchange: every rank posts one, then every rank reads all of them.
#[derive(Default)]
struct Exchange {
    posted: Vec<Option<Tensor>>,
    /// Ranks that have posted in the current round.
    arrived: usize,
    /// Ranks still to read the current round (posting waits until it is 0).
    readers: usize,
    /// Rounds completed.
    round: u64,
    /// Ranks whose handle was dropped.
    left: Vec<bool>,
}

struct Shared {
    exchange: Mutex<Exchange>,
    changed: Condvar,
    health: GroupHealth,
    timeout: Duration,
}

/// One rank of a [`LocalGroup`].
pub struct LocalGroup {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

impl LocalGroup {
    /// `size` ranks sharing `health`; a collective waits at most `timeout` for the others.
    pub fn new(size: usize, timeout: Duration, health: GroupHealth) -> Vec<Self> {
        let shared = Arc::new(Shared {
            exchange: Mutex::new(Exchange {
                posted: vec![None; size],
                left: vec![false; size],
                ..Default::default()
            }),
            changed: Condvar::new(),
            health,
            timeout,
        });
        (0..size)
            .map(|rank| Self {
                rank,
                size,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    /// Waits until `done` holds, the group fails, a rank leaves, or the timeout passes.
    fn wait<'a>(
        &self,
        mut guard: MutexGuard<'a, Exchange>,
        started: Instant,
        what: &str,
        done: impl Fn(&Exchange) -> bool,
    ) -> Result<MutexGuard<'a, Exchange>> {
        loop {
            if done(&guard) {
                return Ok(guard);
            }
            self.shared.health.check(self.rank)?;
            if let Some(gone) = guard.left.iter().position(|&left| left) {
                let reason = format!("rank {gone} left the group during {what}");
                self.shared.health.fail(&reason);
                candle_core::bail!("rank {} stopped: {reason}", self.rank)
            }
            let waited = started.elapsed();
            if waited >= self.shared.timeout {
                let missing: Vec<String> = (0..self.size)
                    .filter(|&r| guard.posted[r].is_none())
                    .map(|r| r.to_string())
                    .collect();
                let reason = format!(
                    "rank {} waited {:.0} s in {what} for rank(s) {} of {}",
                    self.rank,
                    waited.as_secs_f64(),
                    missing.join(", "),
                    self.size
                );
                self.shared.health.fail(&reason);
                candle_core::bail!("{reason}")
            }
            let left = self.shared.timeout - waited;
            let slice = left.min(Duration::from_millis(100));
            guard = self
                .shared
                .changed
                .wait_timeout(guard, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Posts `x` and returns every rank's tensor, in rank order.
    fn exchange(&self, x: &Tensor, what: &str) -> Result<Vec<Tensor>> {
        // Ranks on one GPU run on streams of their own: `x` must be complete before another
        // rank reads it.
        x.device().synchronize()?;
        let started = Instant::now();
        let guard = self
            .shared
            .exchange
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut guard = self.wait(guard, started, what, |e| e.readers == 0)?;
        guard.posted[self.rank] = Some(x.clone());
        guard.arrived += 1;
        let round = guard.round;
        if guard.arrived == self.size {
            guard.arrived = 0;
            guard.readers = self.size;
            guard.round += 1;
            self.shared.changed.notify_all();
        }
        let mut guard = self.wait(guard, started, what, |e| e.round > round)?;
        let all = guard.posted.iter().flatten().cloned().collect::<Vec<_>>();
        guard.readers -= 1;
        if guard.readers == 0 {
            guard.posted.iter_mut().for_each(|p| *p = None);
            self.shared.changed.notify_all();
        }
        Ok(all)
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_to_all(&self, x: &Tensor) -> Result<Tensor> {
        let all = self.exchange(x, "all-to-all")?;
        let mine = all
            .iter()
            .map(|t| t.get(self.rank)?.to_device(x.device()))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&mine, 0)
    }

    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        let all = self.exchange(x, "all-gather")?;
        let all = all
            .iter()
            .map(|t| t.to_device(x.device()))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&all, 0)
    }

    fn abort(&self, reason: &str) {
        self.shared.health.fail(reason);
        self.shared.changed.notify_all();
    }
}

impl Drop for LocalGroup {
    fn drop(&mut self) {
        let mut guard = self
            .shared
            .exchange
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        guard.left[self.rank] = true;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::thread;

    fn run<T: Send>(size: usize, timeout: Duration, f: impl Fn(LocalGroup) -> T + Sync) -> Vec<T> {
        let ranks = LocalGroup::new(size, timeout, GroupHealth::new());
        thread::scope(|s| {
            let handles: Vec<_> = ranks.into_iter().map(|r| s.spawn(|| f(r))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_to_all_transposes_rank_and_slice() {
        // rank r sends value 10 r + j to rank j; rank j must receive 10 r + j from each r.
        let out = run(3, Duration::from_secs(10), |g| {
            let r = g.rank() as f32;
            let x = Tensor::new(&[[10. * r], [10. * r + 1.], [10. * r + 2.]], &Device::Cpu)?;
            // twice, so that rounds follow each other
            g.all_to_all(&x)?;
            g.all_to_all(&x)?.flatten_all()?.to_vec1::<f32>()
        });
        for (j, got) in out.into_iter().enumerate() {
            let j = j as f32;
            assert_eq!(got.unwrap(), vec![j, 10. + j, 20. + j]);
        }
    }

    #[test]
    fn all_gather_stacks_in_rank_order() {
        let out = run(2, Duration::from_secs(10), |g| {
            let x = Tensor::new(&[g.rank() as u32, 7], &Device::Cpu)?;
            g.all_gather(&x)?.to_vec2::<u32>()
        });
        for got in out {
            assert_eq!(got.unwrap(), vec![vec![0, 7], vec![1, 7]]);
        }
    }

    #[test]
    fn a_rank_that_never_joins_times_out_naming_it() {
        let out = run(2, Duration::from_millis(300), |g| {
            if g.rank() == 1 {
                thread::sleep(Duration::from_millis(1500));
                return Ok(());
            }
            g.all_gather(&Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu)?)
                .map(|_| ())
        });
        let error = out[0].as_ref().unwrap_err().to_string();
        assert!(error.contains("for rank(s) 1 of 2"), "{error}");
    }

    #[test]
    fn an_aborted_group_stops_every_waiting_rank() {
        let out = run(3, Duration::from_secs(30), |g| {
            if g.rank() == 2 {
                g.abort("rank 2 failed: out of memory");
                thread::sleep(Duration::from_millis(200));
                return Ok(());
            }
            g.all_gather(&Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)?)
                .map(|_| ())
        });
        for r in [0, 1] {
            let error = out[r].as_ref().unwrap_err().to_string();
            assert!(error.contains("rank 2 failed: out of memory"), "{error}");
        }
    }
}
