//! Every event name of the five seed documents resolves, through the resolver `edubus catalog
//! show` uses, to the right catalog entry with the payload fields the seed gives.

use std::path::PathBuf;

use edubus_catalog::resolve::resolve;
use edubus_catalog::{Catalog, parse};
use serde::Deserialize;

#[derive(Deserialize)]
struct SeedList {
    seed: Vec<SeedName>,
    topics: Vec<SeedTopic>,
}

#[derive(Deserialize)]
struct SeedName {
    doc: String,
    name: String,
    entry: String,
    version: u32,
    #[serde(default)]
    fields: toml::Table,
}

#[derive(Deserialize)]
struct SeedTopic {
    name: String,
    version: u32,
    topic: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn catalog() -> Catalog {
    parse::load_dir(&root().join("../../catalog")).unwrap_or_else(|d| panic!("{d}"))
}

fn seeds() -> SeedList {
    let text = std::fs::read_to_string(root().join("tests/data/seed_events.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

#[test]
fn the_list_holds_every_seed_name_once() {
    let list = seeds();
    let mut names: Vec<_> = list.seed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 177, "the five seed documents name 177 events");
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 177, "a seed name is listed twice");
    for doc in ["000", "001", "002", "003", "004"] {
        assert!(
            list.seed.iter().any(|s| s.doc == doc),
            "no name from seed {doc}"
        );
    }
}

#[test]
fn every_seed_name_resolves_to_its_entry_with_the_seed_fields() {
    let catalog = catalog();
    let mut problems = Vec::new();
    for seed in seeds().seed {
        let Ok(found) = resolve(&catalog, &seed.name) else {
            problems.push(format!(
                "seed {}: `{}` does not resolve",
                seed.doc, seed.name
            ));
            continue;
        };
        let e = found.event;
        if (e.name.as_str(), e.version) != (seed.entry.as_str(), seed.version) {
            problems.push(format!(
                "seed {}: `{}` resolves to {} v{}, expected {} v{}",
                seed.doc, seed.name, e.name, e.version, seed.entry, seed.version
            ));
        }
        for (field, ty) in &seed.fields {
            let expected = ty.as_str().unwrap_or_default();
            match e.field(field) {
                None => problems.push(format!(
                    "seed {}: {} lacks field `{field}`",
                    seed.doc,
                    e.id()
                )),
                Some(_) if expected == "any" => {}
                Some(f) => {
                    let actual = format!("{}{}", f.ty, if f.optional { "?" } else { "" });
                    if actual != expected {
                        problems.push(format!(
                            "seed {}: {}.{field} is {actual}, the seed says {expected}",
                            seed.doc,
                            e.id()
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn seed_topics_come_out_exactly() {
    let catalog = catalog();
    for t in seeds().topics {
        let e = catalog
            .get(&t.name, t.version)
            .unwrap_or_else(|| panic!("{} v{}", t.name, t.version));
        assert_eq!(e.topic, t.topic, "{} v{}", t.name, t.version);
        let back = resolve(&catalog, &t.topic).unwrap().event;
        assert_eq!(
            (back.name.as_str(), back.version),
            (t.name.as_str(), t.version)
        );
    }
}

#[test]
fn student_and_guardian_identifiers_are_marked_pii() {
    let catalog = catalog();
    let identifying = ["student_id", "student_temp_id", "guardian_id"];
    let unmarked: Vec<_> = catalog
        .events()
        .flat_map(|e| e.fields.iter().map(move |f| (e, f)))
        .filter(|(_, f)| identifying.contains(&f.name.as_str()) && !f.pii)
        .map(|(e, f)| format!("{}.{}", e.id(), f.name))
        .collect();
    assert!(unmarked.is_empty(), "not marked pii: {unmarked:?}");
}
