//! The text table of a [`Report`], for people.

use std::fmt::Write as _;

use super::{Change, Failure, Report, Verdict};

const HEADER: [&str; 8] = [
    "EVENT", "VER", "CHANGE", "FIELD", "MODE", "VERDICT", "CHECKS", "MESSAGE",
];

impl Report {
    /// An aligned table, one change a line in report order, then a summary line.
    ///
    /// `VERDICT` is `compatible`, `breaking, new version` (allowed) or `BREAKING` (fails the
    /// diff); `CHECKS` lists the failed reader checks (`forward vs v1`; `old v2` is the
    /// previous shape of a version changed in place).
    pub fn render_text(&self) -> String {
        let mut rows = vec![HEADER.map(str::to_owned)];
        rows.extend(self.changes.iter().map(row));
        let mut out = table(&rows);
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    fn summary(&self) -> String {
        let total = self.changes.len();
        let breaking = self
            .changes
            .iter()
            .filter(|c| c.verdict == Verdict::Breaking)
            .count();
        let failing = self.changes.iter().filter(|c| c.is_failure()).count();
        let outcome = if failing == 0 { "ok" } else { "FAIL" };
        format!(
            "{total} change(s), {breaking} breaking, {failing} breaking without a new version: {outcome}"
        )
    }
}

fn row(change: &Change) -> [String; 8] {
    let verdict = match (change.verdict, change.new_version) {
        (Verdict::Compatible, _) => "compatible",
        (Verdict::Breaking, true) => "breaking, new version",
        (Verdict::Breaking, false) => "BREAKING",
    };
    [
        change.event.clone(),
        format!("v{}", change.version),
        change.kind.as_str().to_owned(),
        change.field.clone().unwrap_or_else(|| "-".to_owned()),
        change.mode.to_string(),
        verdict.to_owned(),
        checks(change),
        change.message.clone(),
    ]
}

fn checks(change: &Change) -> String {
    if change.failures.is_empty() {
        return "-".to_owned();
    }
    let label = |f: &Failure| {
        let old = f.against == change.version && !change.new_version;
        let old = if old { "old " } else { "" };
        format!("{} vs {old}v{}", direction(f), f.against)
    };
    change
        .failures
        .iter()
        .map(label)
        .collect::<Vec<_>>()
        .join("; ")
}

fn direction(failure: &Failure) -> &'static str {
    match failure.direction {
        super::Direction::Backward => "backward",
        super::Direction::Forward => "forward",
    }
}

/// Left-aligned columns separated by two spaces, no trailing spaces.
fn table(rows: &[[String; 8]]) -> String {
    let mut widths = [0usize; 8];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
