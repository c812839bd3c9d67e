//! Progress bars for long work, shown only when standard output is a terminal (on stderr, so
//! piped or `--json` output stays clean).

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

const BAR: &str = "{msg:>12} [{elapsed_precise}] [{wide_bar}] {human_pos}/{human_len} (eta {eta})";
const SPINNER: &str = "{spinner} {msg} [{elapsed_precise}]";

/// Whether progress may be drawn: standard output is a terminal.
pub fn enabled() -> bool {
    std::io::stdout().is_terminal()
}

/// A bar counting to `len`, labelled `what`; hidden when [`enabled`] is false.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(BAR)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::new(len)
        .with_style(style)
        .with_message(what.to_owned())
}

/// A spinner for work of unknown length; hidden when [`enabled`] is false.
pub fn spinner(what: &str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let style =
        ProgressStyle::with_template(SPINNER).unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bar = ProgressBar::new_spinner()
        .with_style(style)
        .with_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
