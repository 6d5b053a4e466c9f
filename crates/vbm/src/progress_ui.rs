//! Progress on the terminal: one bar per disk (or file) and a line per phase message, drawn on
//! stderr when it is a terminal; otherwise only warnings and errors, as log lines.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vbm_engine::{Level, ProgressEvent, ProgressSink};

/// Renders engine progress events for a person.
pub(crate) struct TerminalProgress {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl std::fmt::Debug for TerminalProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalProgress")
            .field("interactive", &self.multi.is_some())
            .finish()
    }
}

impl TerminalProgress {
    /// Bars when stderr is a terminal and `quiet` is off; log lines otherwise.
    pub(crate) fn new(quiet: bool) -> Self {
        let interactive = !quiet && std::io::stderr().is_terminal();
        let multi =
            interactive.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self {
            multi,
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Finishes every bar (call before printing the result).
    pub(crate) fn finish(&self) {
        if let Ok(bars) = self.bars.lock() {
            for bar in bars.values() {
                bar.finish();
            }
        }
    }

    fn bar(&self, multi: &MultiProgress, key: &str, total: u64) -> ProgressBar {
        let Ok(mut bars) = self.bars.lock() else {
            return ProgressBar::hidden();
        };
        bars.entry(key.to_owned())
            .or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(total));
                let style = ProgressStyle::with_template(
                    "{prefix:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(shorten(key, 24));
                bar
            })
            .clone()
    }
}

impl ProgressSink for TerminalProgress {
    fn event(&self, event: &ProgressEvent) {
        let Some(multi) = &self.multi else {
            // Not a terminal: quiet, except what an administrator must see.
            if let Some(message) = &event.message {
                match event.level {
                    Level::Warning => tracing::warn!(vm = %event.vm, "{message}"),
                    // The command prints its error itself when it ends.
                    Level::Error => tracing::debug!(vm = %event.vm, "{message}"),
                    Level::Info => {
                        tracing::info!(vm = %event.vm, phase = ?event.phase, "{message}")
                    }
                }
            }
            return;
        };
        if let Some(message) = &event.message {
            match event.level {
                Level::Info => {
                    let _ = multi.println(message);
                }
                Level::Warning => {
                    let _ = multi.println(format!("warning: {message}"));
                }
                // The command prints its error itself when it ends.
                Level::Error => {}
            }
        }
        if let Some(disk) = &event.disk
            && event.bytes_total > 0
        {
            let bar = self.bar(multi, disk, event.bytes_total);
            bar.set_length(event.bytes_total);
            bar.set_position(event.bytes_done);
        }
    }
}

fn shorten(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(count - (max - 1)).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_labels_keep_their_end() {
        assert_eq!(shorten("Hard disk 1", 24), "Hard disk 1");
        let short = shorten("web01/very-long-name-of-a-disk-flat.vmdk", 10);
        assert_eq!(short, "…flat.vmdk");
        assert_eq!(short.chars().count(), 10, "the ellipsis counts");
    }
}
