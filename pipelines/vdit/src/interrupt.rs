//! Ctrl-C and SIGTERM. The first asks the running command to stop at the next safe point (after
//! a denoising step, a decoded frame, an encoded prompt, or between batch jobs): the command then
//! unwinds, which removes its temporary files and releases its claims, and prints what was
//! finished. A second ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};

/// Exit code of a command stopped by a signal (128 + SIGINT, as shells report it).
pub const EXIT_CODE: u8 = 130;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler; harmless to call twice (the second install is refused and ignored).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_CODE));
        }
        eprintln!("\ninterrupted: stopping after the current step (again to quit at once)");
    });
}

/// True once Ctrl-C or SIGTERM arrived.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The error of a command that stopped because it was asked to.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// True when `error` comes from a stop that was asked for.
pub fn caused(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<Interrupted>()
            || cause
                .downcast_ref::<pipelines::Error>()
                .is_some_and(pipelines::Error::is_interrupted)
    })
}
