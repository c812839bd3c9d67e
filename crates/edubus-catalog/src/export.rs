//! `edubus catalog export`: every generated artifact of a catalog, as files.
//!
//! | path | content |
//! |---|---|
//! | `schemas/<name>.v<N>.json` | JSON Schema (Draft 2020-12) of one event version |
//! | `asyncapi.yaml` | AsyncAPI 3.0.0 document of the whole catalog |
//! | `docs/<context>.md` | Markdown page of one context |
//! | `docs/index.md` | Markdown index of the contexts |

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::emit::{asyncapi, json_schema, markdown};
use crate::ir::Catalog;

/// Every exported file as `(relative path, content)`, sorted by path; same catalog, same bytes.
pub fn files(catalog: &Catalog) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = catalog
        .events()
        .map(|e| {
            let schema = json_schema::event_schema(e);
            let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
            (format!("schemas/{}.json", e.id()), text + "\n")
        })
        .collect();
    files.push(("asyncapi.yaml".into(), asyncapi::document(catalog)));
    for context in &catalog.contexts {
        let doc = markdown::context_doc(catalog, context);
        files.push((format!("docs/{}.md", context.name), doc));
    }
    files.push(("docs/index.md".into(), markdown::index(catalog)));
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

/// Writes [`files`] under `out`, creating directories and rewriting only files whose content
/// changed; returns how many files were written. Files no longer exported are left alone.
pub fn write(catalog: &Catalog, out: &Path) -> io::Result<usize> {
    let files = files(catalog)
        .into_iter()
        .map(|(relative, content)| Ok((out.join(checked(&relative)?), content)))
        .collect::<io::Result<Vec<_>>>()?;
    let mut written = 0;
    for (path, content) in files {
        if std::fs::read(&path).is_ok_and(|old| old == content.as_bytes()) {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, content)?;
        written += 1;
    }
    Ok(written)
}

/// `relative` as a path that cannot leave the output directory (names come from the catalog,
/// which may not have been linted).
fn checked(relative: &str) -> io::Result<PathBuf> {
    let path = PathBuf::from(relative);
    if path.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(path)
    } else {
        let message = format!("refusing to write {relative:?} outside the output directory");
        Err(io::Error::new(io::ErrorKind::InvalidInput, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::fixture;

    #[test]
    fn lists_every_artifact_sorted() {
        let paths: Vec<String> = files(&fixture::catalog())
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(
            paths,
            [
                "asyncapi.yaml",
                "docs/index.md",
                "docs/school.md",
                "schemas/school.student.enrolled.v1.json",
            ]
        );
    }

    #[test]
    fn writes_only_changed_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = fixture::catalog();
        assert_eq!(write(&catalog, dir.path()).expect("first write"), 4);
        assert_eq!(write(&catalog, dir.path()).expect("second write"), 0);
        std::fs::write(dir.path().join("docs/index.md"), "stale").expect("overwrite");
        assert_eq!(write(&catalog, dir.path()).expect("third write"), 1);
    }

    #[test]
    fn refuses_paths_that_escape() {
        let mut catalog = fixture::catalog();
        catalog.contexts[0].events[0].name = "../../evil".into();
        let dir = tempfile::tempdir().expect("tempdir");
        let err = write(&catalog, dir.path()).expect_err("escaping path");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0);
    }
}
