#![doc = include_str!("../README.md")]

pub mod envelope;
pub mod error;
pub mod event;

pub use event::Event;
