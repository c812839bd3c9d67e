//! Compiles `catalog/*.toml` into Rust types, the way `prost-build` compiles `.proto` files.
//!
//! A catalog that does not load is a build error listing every problem as `file:line:column`.

use std::path::{Path, PathBuf};
use std::{env, fs};

use edubus_catalog::emit::rust::{HEADER, generate};
use edubus_catalog::parse::{load_sources, read_dir};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dir = manifest.join("../../catalog");
    println!("cargo:rerun-if-changed={}", dir.display());
    let dir = dir.canonicalize().unwrap_or(dir);
    let files = read_dir(&dir).unwrap_or_else(|d| fail(&d));
    for (path, _) in &files {
        println!("cargo:rerun-if-changed={path}");
    }
    let catalog = load_sources(&files).unwrap_or_else(|d| fail(&d));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    write_if_changed(&out.join("events.rs"), &generate(&catalog));
    write_if_changed(&out.join("sources.rs"), &sources_rs(&files));
}

/// Prints every diagnostic as a cargo warning, then fails the build with all of them.
fn fail(diagnostics: &edubus_catalog::Diagnostics) -> ! {
    for d in &diagnostics.0 {
        println!("cargo:warning={}", d.to_string().replace(['\n', '\r'], " "));
    }
    panic!("the event catalog does not load: {diagnostics}");
}

/// `CATALOG_SOURCES`: every catalog file name with its text, embedded with `include_str!`.
fn sources_rs(files: &[(String, String)]) -> String {
    let mut out = format!("{HEADER}\n\n");
    out.push_str("/// Every catalog file as `(file name, TOML text)`, sorted by name.\n");
    out.push_str("pub(crate) const CATALOG_SOURCES: &[(&str, &str)] = &[\n");
    for (path, _) in files {
        let name = Path::new(path).file_name().map(|n| n.to_string_lossy());
        let name = name.unwrap_or_default();
        out.push_str(&format!("    ({name:?}, include_str!({path:?})),\n"));
    }
    out.push_str("];\n");
    out
}

/// Writes `content` unless the file already holds it, so unchanged output keeps its mtime.
fn write_if_changed(path: &Path, content: &str) {
    if fs::read_to_string(path).is_ok_and(|old| old == content) {
        return;
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
