//! The threads behind a [`super::VideoWriter`]: workers that prepare frames in parallel (colour
//! conversion, compression: the work that does not depend on other frames) and one writer that
//! appends them to the output in order.
//!
//! Frames are dealt to the workers in turn, frame `i` to worker `i % workers`, each through a
//! short queue, and the writer takes prepared frames from the workers in the same turn, so
//! frames stay in order without a reordering buffer and the frames in flight are bounded by the
//! queues. The first error stops the writer; the workers then find their results unwanted and
//! stop too, and the error comes back from the next push or from `finish`.

use super::output::FrameSink;
use super::{Frame, VideoError};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Frames waiting in each worker's queue, and prepared frames waiting for the writer.
const QUEUED_PER_WORKER: usize = 2;
/// Workers at most: beyond this the writer, not preparation, limits every format.
const MAX_WORKERS: usize = 16;

/// Completes the output once the writer has appended every frame; returns its encoding.
pub(crate) type Finish = Box<dyn FnOnce() -> Result<String, VideoError> + Send>;

/// The running threads of one video.
pub(crate) struct Encoder {
    /// One queue per worker; frame `i` goes to `queues[i % len]`.
    queues: Vec<SyncSender<Frame>>,
    workers: Vec<JoinHandle<()>>,
    /// Gives back how to complete the output and the frames written, or the first error (the
    /// sink then dropped, which removes its partial output).
    writer: JoinHandle<Result<(Finish, usize), VideoError>>,
    /// Frames handed over so far.
    pushed: usize,
}

impl Encoder {
    /// Starts a worker per core (at most [`MAX_WORKERS`]) and the writer for `sink`.
    pub(crate) fn start<S: FrameSink>(sink: S) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::start_with(sink, cores.clamp(1, MAX_WORKERS))
    }

    /// Starts `count` workers (at least one) and the writer for `sink`.
    fn start_with<S: FrameSink>(mut sink: S, count: usize) -> Self {
        let count = count.max(1);
        let mut queues = Vec::with_capacity(count);
        let mut workers = Vec::with_capacity(count);
        let mut results: Vec<Receiver<Result<S::Prepared, VideoError>>> = Vec::with_capacity(count);
        for _ in 0..count {
            let (queue, frames) = sync_channel::<Frame>(QUEUED_PER_WORKER);
            let (done, prepared) = sync_channel(QUEUED_PER_WORKER);
            let prepare = sink.preparer();
            workers.push(std::thread::spawn(move || {
                for frame in frames {
                    if done.send(prepare(frame)).is_err() {
                        return; // the writer stopped
                    }
                }
            }));
            queues.push(queue);
            results.push(prepared);
        }
        let writer = std::thread::spawn(move || {
            // Worker `i % count` holds frame `i`; the first worker to close its results has no
            // frame `i`, and so there is none after it either.
            let mut written = 0;
            for turn in (0..count).cycle() {
                match results[turn].recv() {
                    Ok(prepared) => sink.write(prepared?)?,
                    Err(_) => break,
                }
                written += 1;
            }
            Ok((Box::new(move || sink.finish()) as Finish, written))
        });
        Self {
            queues,
            workers,
            writer,
            pushed: 0,
        }
    }

    /// Hands a frame over; `false` when the threads have stopped on an error, which
    /// [`Encoder::drain`] then returns.
    pub(crate) fn send(&mut self, frame: Frame) -> bool {
        let turn = self.pushed % self.queues.len();
        if self.queues[turn].send(frame).is_err() {
            return false;
        }
        self.pushed += 1;
        true
    }

    /// Closes the queues, waits for every frame to be written (into `path`) and gives back how
    /// to complete the output, or the first error.
    pub(crate) fn drain(self, path: &Path) -> Result<Finish, VideoError> {
        drop(self.queues);
        let workers_panicked = self
            .workers
            .into_iter()
            .any(|worker| worker.join().is_err());
        let (finish, written) = self
            .writer
            .join()
            .unwrap_or_else(|_| Err(VideoError::write(path, "the encoding thread panicked")))?;
        if workers_panicked || written != self.pushed {
            return Err(VideoError::write(
                path,
                format!(
                    "an encoding thread failed after {written} of {} frames",
                    self.pushed
                ),
            ));
        }
        Ok(finish)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the first byte of each frame it is given, in order; frames whose first byte is
    /// `fail_on` fail to prepare and `panic_on` panic.
    struct Recorder {
        seen: Arc<Mutex<Vec<u8>>>,
        fail_on: u8,
        panic_on: u8,
    }

    impl FrameSink for Recorder {
        type Prepared = u8;

        fn preparer(&self) -> impl Fn(Frame) -> Result<u8, VideoError> + Send + 'static {
            let (fail_on, panic_on) = (self.fail_on, self.panic_on);
            move |frame| match frame.rgb()[0] {
                v if v == fail_on => Err(VideoError::write(Path::new("x"), "refused")),
                v if v == panic_on => panic!("preparing frame {v}"),
                v => Ok(v),
            }
        }

        fn write(&mut self, value: u8) -> Result<(), VideoError> {
            self.seen.lock().unwrap().push(value);
            Ok(())
        }

        fn finish(self) -> Result<String, VideoError> {
            Ok("done".to_string())
        }
    }

    fn frame(value: u8) -> Frame {
        Frame::new(1, 1, vec![value; 3]).unwrap()
    }

    /// Pushes frames 0..count through `workers` workers; the frames the sink saw and the
    /// outcome.
    fn run(
        workers: usize,
        count: u8,
        fail_on: u8,
        panic_on: u8,
    ) -> (Vec<u8>, Result<String, VideoError>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Recorder {
            seen: seen.clone(),
            fail_on,
            panic_on,
        };
        let mut encoder = Encoder::start_with(sink, workers);
        let mut pushed_all = true;
        for value in 0..count {
            if !encoder.send(frame(value)) {
                pushed_all = false;
                break;
            }
        }
        let outcome = encoder.drain(Path::new("x")).and_then(|finish| finish());
        assert!(
            pushed_all || outcome.is_err(),
            "a refused push must end in an error"
        );
        let seen = seen.lock().unwrap().clone();
        (seen, outcome)
    }

    #[test]
    fn frames_are_written_in_order_whatever_the_worker_count() {
        for workers in [1, 2, 3, 5, 16] {
            let (seen, outcome) = run(workers, 23, u8::MAX, u8::MAX);
            assert_eq!(outcome.unwrap(), "done");
            assert_eq!(seen, (0..23).collect::<Vec<u8>>(), "{workers} workers");
        }
    }

    #[test]
    fn a_failed_frame_stops_the_writer_with_its_error() {
        let (seen, outcome) = run(3, 40, 7, u8::MAX);
        assert!(outcome.unwrap_err().to_string().contains("refused"));
        assert_eq!(seen, (0..7).collect::<Vec<u8>>());
    }

    #[test]
    fn a_panicking_worker_is_an_error_not_a_short_video() {
        let (seen, outcome) = run(4, 12, u8::MAX, 9);
        let message = outcome.unwrap_err().to_string();
        assert!(message.contains("encoding thread"), "{message}");
        assert!(seen.len() < 12);
    }
}
