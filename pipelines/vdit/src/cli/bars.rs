//! Progress bars on stderr for loading, each denoising step and decoding; hidden with
//! `--quiet` or when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipelines::t2v::{Progress, Stage};
use std::io::IsTerminal;

/// One bar per stage, labelled with an optional prefix (a batch job's name).
pub struct Bars {
    shown: bool,
    prefix: String,
    bar: Option<ProgressBar>,
}

impl Bars {
    /// Bars that show unless `quiet` or stderr is not a terminal.
    pub fn new(quiet: bool) -> Self {
        Self {
            shown: !quiet && std::io::stderr().is_terminal(),
            prefix: String::new(),
            bar: None,
        }
    }

    /// Labels the following bars with `prefix`.
    pub fn set_prefix(&mut self, prefix: &str) {
        self.prefix = prefix.to_string();
    }
}

impl Progress for Bars {
    fn begin(&mut self, stage: Stage, total: usize) {
        if !self.shown {
            return;
        }
        let (bar, template) = if total == 0 {
            (
                ProgressBar::new_spinner(),
                "{prefix}{msg:>10} {spinner} {elapsed}",
            )
        } else {
            (
                ProgressBar::new(total as u64),
                "{prefix}{msg:>10} [{bar:32}] {pos}/{len} {elapsed} (eta {eta})",
            )
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(style);
        bar.set_prefix(if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{} ", self.prefix)
        });
        bar.set_message(stage.to_string());
        if total == 0 {
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        self.bar = Some(bar);
    }

    fn advance(&mut self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    fn stop_requested(&self) -> bool {
        crate::interrupt::requested()
    }
}
