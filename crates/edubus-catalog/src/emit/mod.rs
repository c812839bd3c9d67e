//! Emitters: the catalog turned into Rust code, JSON Schema, AsyncAPI and Markdown.
//!
//! Every emitter is a pure function of the [`crate::ir::Catalog`]; the same catalog gives the
//! same bytes.

pub mod asyncapi;
pub mod json_schema;
pub mod markdown;
pub mod rust;
pub mod spec;
