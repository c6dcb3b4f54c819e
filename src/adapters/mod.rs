//! Production implementations of the engine's ports. Every wire detail lives here.
//!
//! Imports `domain`, `template` and `engine::ports`; never configuration, operator or CLI.
pub mod delta_mirror;
pub mod drift_batch;
pub(crate) mod error_chain;
pub mod graph;
pub mod http;
pub mod identity;
pub mod keyvault;
pub mod kubernetes;
pub mod network;
pub mod smtp;
pub mod smtp_probe;
