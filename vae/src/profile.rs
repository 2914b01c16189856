//! Where a decode's time goes, for `vdit bench vae --parts`: while [`record`] runs a closure on
//! this thread, each instrumented operation synchronises its device before and after itself and
//! adds its wall time (and, for convolutions, its arithmetic) under its label. Outside
//! [`record`] the instrumentation costs one thread-local check per operation.

use candle_core::{Device, Result};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

/// The accumulated cost of the operations under one label.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Part {
    /// How many times an operation under this label ran.
    pub calls: usize,
    /// Their total wall time, device synchronised.
    pub seconds: f64,
    /// Their total floating-point operations (multiply and add counted apart; 0 where not
    /// counted).
    pub flops: f64,
}

thread_local! {
    static PARTS: RefCell<Option<BTreeMap<String, Part>>> = const { RefCell::new(None) };
}

/// Runs `f` with profiling on; returns its result and the parts by label.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, BTreeMap<String, Part>) {
    PARTS.with_borrow_mut(|parts| *parts = Some(BTreeMap::new()));
    let out = f();
    let parts = PARTS.with_borrow_mut(Option::take).unwrap_or_default();
    (out, parts)
}

/// Runs `op`; while profiling, timed and added under `label()` with `flops`.
pub(crate) fn timed<R>(
    device: &Device,
    label: impl FnOnce() -> String,
    flops: f64,
    op: impl FnOnce() -> Result<R>,
) -> Result<R> {
    if !PARTS.with_borrow(Option::is_some) {
        return op();
    }
    device.synchronize()?;
    let started = Instant::now();
    let out = op()?;
    device.synchronize()?;
    let seconds = started.elapsed().as_secs_f64();
    PARTS.with_borrow_mut(|parts| {
        if let Some(parts) = parts {
            let part = parts.entry(label()).or_default();
            part.calls += 1;
            part.seconds += seconds;
            part.flops += flops;
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operations add up under their labels only while recording.
    #[test]
    fn records_only_inside() -> Result<()> {
        let dev = &Device::Cpu;
        timed(dev, || "outside".into(), 1.0, || Ok(()))?;
        let ((), parts) = record(|| {
            for _ in 0..3 {
                timed(dev, || "op".into(), 2.0, || Ok(())).unwrap();
            }
        });
        assert_eq!(parts.len(), 1);
        let op = parts["op"];
        assert_eq!((op.calls, op.flops), (3, 6.0));
        let ((), empty) = record(|| ());
        assert!(empty.is_empty());
        Ok(())
    }
}
