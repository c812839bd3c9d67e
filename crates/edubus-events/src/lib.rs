#![doc = include_str!("../README.md")]

use std::sync::OnceLock;

use edubus_catalog::Catalog;
pub use edubus_core::Event;

include!(concat!(env!("OUT_DIR"), "/events.rs"));
include!(concat!(env!("OUT_DIR"), "/sources.rs"));

/// The catalog these types were generated from, parsed once from the embedded sources.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let files: Vec<(String, String)> = CATALOG_SOURCES
            .iter()
            .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
            .collect();
        edubus_catalog::parse::load_sources(&files)
            .expect("the embedded catalog is the text build.rs loaded and linted; it cannot fail")
    })
}

/// Every catalog file this crate was built from, as `(file name, TOML text)`, sorted by name.
pub fn sources() -> &'static [(&'static str, &'static str)] {
    CATALOG_SOURCES
}
