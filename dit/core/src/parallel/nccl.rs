//! A group of GPUs exchanging tensors through NCCL, one communicator per GPU, each driven by
//! the thread that runs that GPU's rank. Collectives run on the device's candle stream, so they
//! are ordered with the kernels around them, and the rank's thread goes on enqueueing work
//! behind them; a watchdog thread per rank follows them and, when one is not done within the
//! timeout or the group has failed, marks the group failed and aborts the communicator, which
//! ends the waiting kernel so that nothing hangs.

use super::collective::{Collective, GroupHealth};
use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaSlice, DeviceRepr};
use candle_core::cuda_backend::cudarc::nccl::safe::{group_end, group_start, Comm, NcclType};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Result, Storage, Tensor};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An NCCL communicator handed to the thread of its rank (`None` once aborted).
struct Communicator(Option<Comm>);

// SAFETY: an NCCL communicator may be used from any host thread as long as no two threads use
// it at once; `NcclGroup` and its watchdog keep it behind a mutex.
unsafe impl Send for Communicator {}

/// A collective enqueued and not yet seen complete.
struct Pending {
    done: CudaEvent,
    enqueued: Instant,
    what: &'static str,
}

/// What a rank and its watchdog share.
struct Watched {
    comm: Mutex<Communicator>,
    pending: Mutex<VecDeque<Pending>>,
    stop: AtomicBool,
    health: GroupHealth,
    rank: usize,
    size: usize,
    timeout: Duration,
}

impl Watched {
    /// Drops the communicator: NCCL aborts its unfinished operations.
    fn abort(&self) {
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner()).0.take();
        drop(comm);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// One look at the oldest pending collectives: pops those done; fails the group when one
    /// is overdue or erred; aborts when the group has failed with work pending.
    fn look(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(front) = pending.front() {
            match front.done.try_is_complete() {
                Ok(true) => {
                    pending.pop_front();
                }
                Ok(false) if front.enqueued.elapsed() < self.timeout => break,
                outcome => {
                    let reason = match outcome {
                        Err(e) => format!(
                            "rank {}: {} failed on the GPU: {e:?}",
                            self.rank, front.what
                        ),
                        _ => format!(
                            "rank {} waited {:.0} s in {}: another of the {} GPUs never joined",
                            self.rank,
                            front.enqueued.elapsed().as_secs_f64(),
                            front.what,
                            self.size
                        ),
                    };
                    self.health.fail(&reason);
                    break;
                }
            }
        }
        let stuck = !pending.is_empty() && self.health.failure().is_some();
        drop(pending);
        if stuck {
            self.abort();
        }
    }
}

/// Runs one all-to-all and one all-gather of a few bytes on every communicator at once. NCCL
/// connects peers lazily, at their first exchange, in a handshake that blocks the host until
/// the peer takes part: connected now, while every rank is here and memory is free, a rank's
/// later exchanges only enqueue work, which the watchdog can abort.
fn connect(comms: &[Comm]) -> Result<()> {
    let size = comms.len();
    let buffers = comms
        .iter()
        .map(|c| {
            let stream = c.stream();
            let zeros = |n| {
                stream
                    .alloc_zeros::<f32>(n)
                    .map_err(|e| nccl_error("buffer", e))
            };
            Ok((zeros(size)?, zeros(size)?, zeros(size)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut buffers = buffers;
    group_start().map_err(|e| nccl_error("group", e))?;
    for (comm, (send, recv, _)) in comms.iter().zip(buffers.iter_mut()) {
        for peer in 0..size {
            comm.send(&send.slice(peer..peer + 1), peer as i32)
                .map_err(|e| nccl_error("send", e))?;
            comm.recv(&mut recv.slice_mut(peer..peer + 1), peer as i32)
                .map_err(|e| nccl_error("receive", e))?;
        }
    }
    group_end().map_err(|e| nccl_error("group", e))?;
    group_start().map_err(|e| nccl_error("group", e))?;
    for (comm, (send, _, gathered)) in comms.iter().zip(buffers.iter_mut()) {
        comm.all_gather(&send.slice(0..1), gathered)
            .map_err(|e| nccl_error("all-gather", e))?;
    }
    group_end().map_err(|e| nccl_error("group", e))?;
    for comm in comms {
        comm.stream()
            .synchronize()
            .map_err(|e| nccl_error("connection", e))?;
    }
    Ok(())
}

/// One rank of a group of GPUs.
pub struct NcclGroup {
    watched: Arc<Watched>,
    watchdog: Option<JoinHandle<()>>,
    device: CudaDevice,
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("NCCL {what} failed: {e:?}"))
}

impl NcclGroup {
    /// One rank per device, in the order given (rank `i` on `devices[i]`), sharing `health`.
    /// Each collective waits at most `timeout` for the others.
    pub fn new(devices: &[Device], timeout: Duration, health: GroupHealth) -> Result<Vec<Self>> {
        let cuda = devices
            .iter()
            .map(|d| match d {
                Device::Cuda(c) => Ok(c.clone()),
                other => candle_core::bail!("NCCL groups need CUDA devices, got {other:?}"),
            })
            .collect::<Result<Vec<_>>>()?;
        let streams = cuda.iter().map(|c| c.cuda_stream()).collect();
        let comms = Comm::from_devices(streams).map_err(|e| nccl_error("initialisation", e))?;
        connect(&comms)?;
        let size = cuda.len();
        Ok(comms
            .into_iter()
            .zip(cuda)
            .enumerate()
            .map(|(rank, (comm, device))| {
                let watched = Arc::new(Watched {
                    comm: Mutex::new(Communicator(Some(comm))),
                    pending: Mutex::new(VecDeque::new()),
                    stop: AtomicBool::new(false),
                    health: health.clone(),
                    rank,
                    size,
                    timeout,
                });
                let watching = Arc::clone(&watched);
                let watchdog = std::thread::spawn(move || {
                    while !watching.stop.load(Ordering::Relaxed) {
                        watching.look();
                        std::thread::sleep(Duration::from_millis(5));
                    }
                });
                Self {
                    watched,
                    watchdog: Some(watchdog),
                    device,
                }
            })
            .collect())
    }

    /// Runs `enqueue` on the communicator and hands the collective to the watchdog; fails at
    /// once when the group has failed.
    fn collective(
        &self,
        what: &'static str,
        enqueue: impl FnOnce(&Comm) -> Result<()>,
    ) -> Result<()> {
        let w = &self.watched;
        w.health.check(w.rank)?;
        {
            let comm = w.comm.lock().unwrap_or_else(|e| e.into_inner());
            let Some(comm) = &comm.0 else {
                candle_core::bail!("rank {}: the NCCL communicator was aborted", w.rank)
            };
            enqueue(comm)?;
        }
        let done = self
            .device
            .cuda_stream()
            .record_event(None)
            .map_err(|e| nccl_error("event", e))?;
        w.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Pending {
                done,
                enqueued: Instant::now(),
                what,
            });
        Ok(())
    }

    fn all_to_all_as<T: NcclType + DeviceRepr + CudaDType>(&self, x: &Tensor) -> Result<Tensor> {
        let chunk = x.elem_count() / self.watched.size;
        let out = self.same_shape::<T>(x.elem_count())?;
        self.collective("all-to-all", |comm| {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cuda(storage) = &*storage else {
                candle_core::bail!("all-to-all of a tensor not on the GPU")
            };
            let src = storage.as_cuda_slice::<T>()?;
            let start = layout.start_offset();
            let mut dst = out.lock().unwrap_or_else(|e| e.into_inner());
            group_start().map_err(|e| nccl_error("group", e))?;
            for peer in 0..self.watched.size {
                let send = src.slice(start + peer * chunk..start + (peer + 1) * chunk);
                comm.send(&send, peer as i32)
                    .map_err(|e| nccl_error("send", e))?;
                let mut recv = dst.slice_mut(peer * chunk..(peer + 1) * chunk);
                comm.recv(&mut recv, peer as i32)
                    .map_err(|e| nccl_error("receive", e))?;
            }
            group_end().map_err(|e| nccl_error("group", e))?;
            Ok(())
        })?;
        self.tensor(out, x.dims())
    }

    fn all_gather_as<T: NcclType + DeviceRepr + CudaDType>(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.elem_count();
        let out = self.same_shape::<T>(n * self.watched.size)?;
        self.collective("all-gather", |comm| {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cuda(storage) = &*storage else {
                candle_core::bail!("all-gather of a tensor not on the GPU")
            };
            let start = layout.start_offset();
            let send = storage.as_cuda_slice::<T>()?.slice(start..start + n);
            let mut dst = out.lock().unwrap_or_else(|e| e.into_inner());
            comm.all_gather(&send, &mut *dst)
                .map_err(|e| nccl_error("all-gather", e))?;
            Ok(())
        })?;
        let mut dims = vec![self.watched.size];
        dims.extend_from_slice(x.dims());
        self.tensor(out, &dims)
    }

    /// An uninitialised buffer of `n` elements that the collective fills.
    fn same_shape<T: DeviceRepr>(&self, n: usize) -> Result<Mutex<CudaSlice<T>>> {
        // SAFETY: the collective writes every element before the tensor is read.
        Ok(Mutex::new(unsafe { self.device.alloc::<T>(n)? }))
    }

    fn tensor<T: CudaDType>(&self, out: Mutex<CudaSlice<T>>, dims: &[usize]) -> Result<Tensor> {
        let slice = out.into_inner().unwrap_or_else(|e| e.into_inner());
        let storage = CudaStorage::wrap_cuda_slice(slice, self.device.clone());
        Ok(crate::cuda::untracked_tensor(storage, dims))
    }

    fn check(&self, x: &Tensor, what: &str) -> Result<Tensor> {
        if !x.device().same_device(&Device::Cuda(self.device.clone())) {
            candle_core::bail!(
                "{what} on rank {}: the tensor is on another device",
                self.watched.rank
            )
        }
        x.contiguous()
    }
}

impl Drop for NcclGroup {
    fn drop(&mut self) {
        self.watched.stop.store(true, Ordering::Relaxed);
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.watched.rank
    }

    fn size(&self) -> usize {
        self.watched.size
    }

    fn all_to_all(&self, x: &Tensor) -> Result<Tensor> {
        let size = self.watched.size;
        if x.dims().first() != Some(&size) {
            candle_core::bail!("all-to-all needs [{size}, ...], got {:?}", x.dims())
        }
        let x = self.check(x, "all-to-all")?;
        match x.dtype() {
            DType::BF16 => self.all_to_all_as::<half::bf16>(&x),
            DType::F16 => self.all_to_all_as::<half::f16>(&x),
            DType::F32 => self.all_to_all_as::<f32>(&x),
            other => candle_core::bail!("all-to-all of {other:?} tensors is not supported"),
        }
    }

    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.check(x, "all-gather")?;
        match x.dtype() {
            DType::BF16 => self.all_gather_as::<half::bf16>(&x),
            DType::F16 => self.all_gather_as::<half::f16>(&x),
            DType::F32 => self.all_gather_as::<f32>(&x),
            other => candle_core::bail!("all-gather of {other:?} tensors is not supported"),
        }
    }

    fn abort(&self, reason: &str) {
        self.watched.health.fail(reason);
    }
}
