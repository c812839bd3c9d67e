#![doc = include_str!("../README.md")]

pub mod diagnostic;
pub mod diff;
pub mod emit;
pub mod export;
pub mod ir;
pub mod lint;
pub mod parse;
pub mod resolve;
pub mod sample;
pub mod topic;
pub mod validate;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use ir::{Catalog, Compatibility, Context, EventKind, EventSpec, Field, FieldType, Scalar};
