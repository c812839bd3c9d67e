#![doc = include_str!("../README.md")]

mod bus;
mod delivery;
mod handler;
mod options;
mod partition;
mod shutdown;
mod worker;

pub use bus::Bus;
pub use handler::{Caused, HandlerContext, HandlerError};
pub use options::{RetryPolicy, SubscriptionOptions};
pub use shutdown::shutdown_signal;
pub use worker::{Worker, WorkerBuilder, WorkerStats};
