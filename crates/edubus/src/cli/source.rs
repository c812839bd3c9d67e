//! Where catalogs come from: the one built into the binary, a directory, or a git ref.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use edubus_catalog::{Catalog, parse};

/// The catalog in `dir`, or the one this binary was built with.
pub fn load(dir: Option<&Path>) -> anyhow::Result<Catalog> {
    match dir {
        Some(dir) => load_spec(&dir.display().to_string()),
        None => Ok(edubus_events::catalog().clone()),
    }
}

/// A catalog named on the command line: a directory, or `git:REF` / `git:REF:DIR` for the
/// catalog directory (`catalog` by default) at a git revision of the current repository.
pub fn load_spec(spec: &str) -> anyhow::Result<Catalog> {
    let files = match spec.strip_prefix("git:") {
        Some(rest) => git_files(rest)?,
        None => parse::read_dir(Path::new(spec)).map_err(|d| anyhow::anyhow!("{d}"))?,
    };
    parse::load_sources(&files).map_err(|d| anyhow::anyhow!("{spec}: {d}"))
}

fn git_files(rest: &str) -> anyhow::Result<Vec<(String, String)>> {
    let (rev, dir) = rest.split_once(':').unwrap_or((rest, "catalog"));
    let dir = dir.trim_end_matches('/');
    let listing = git(&["ls-tree", "--name-only", &format!("{rev}:{dir}")])
        .with_context(|| format!("cannot list `{dir}` at git revision `{rev}`"))?;
    let mut files = Vec::new();
    for name in listing.lines().filter(|n| n.ends_with(".toml")) {
        let text = git(&["show", &format!("{rev}:{dir}/{name}")])?;
        files.push((format!("git:{rev}:{dir}/{name}"), text));
    }
    if files.is_empty() {
        bail!("`{dir}` at git revision `{rev}` holds no *.toml file");
    }
    Ok(files)
}

fn git(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
