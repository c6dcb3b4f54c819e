//! entra-rotator rotates the Microsoft Entra ID client secret behind an SMTP relay
//! credential (Azure Communication Services Email) before it expires.
//!
//! The crate is laid out by responsibility:
//! - [`domain`]: value types shared by everyone (applications, credentials, secret values).
//! - [`engine`]: decides whether to rotate and sequences mint → store → verify → revoke.
//!   It only knows the small traits in [`engine::ports`], so it runs without a network.
//! - [`adapters`]: the production implementations of those traits (Microsoft Graph,
//!   Key Vault, Kubernetes Secrets, the SMTP relay). They hold every wire detail.
//! - [`config`]: the YAML configuration of `entra-rotator run`, validated before anything runs.
//! - [`cli`]: the command line.
//!
//! The stand-ins the tests and `entra-rotator demo` run against live in their own crate
//! (`standins/`), reached only through the `demo` feature and as a dev-dependency.
#![forbid(unsafe_code)]

pub mod adapters;
pub mod alerting;
pub mod assembly;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod operator;
pub mod report;
pub mod scan;
pub mod template;
