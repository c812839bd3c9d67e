#![doc = include_str!("../README.md")]

pub mod envelope;
pub mod error;
pub mod event;

pub use envelope::{Envelope, EnvelopeError};
pub use error::{Error, ErrorKind, Issue};
pub use event::Event;
