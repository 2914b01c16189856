//! Where a generation's decoded frames go: a video writer, a preview, a test's buffer.

use candle_core::Tensor;

/// An error of a sink, kept whole through the pipeline's [`crate::Error::Sink`].
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Receives decoded video chunk by chunk, as the VAE produces it.
pub trait FrameSink {
    /// Takes the next chunk: `[1, 3, T, H, W]` in [-1, 1], in the VAE's dtype and on its device.
    fn push(&mut self, chunk: &Tensor) -> Result<(), SinkError>;
}
