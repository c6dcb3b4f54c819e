//! Local stand-ins for the services entra-rotator talks to, speaking their real wire
//! formats over real sockets: Microsoft Graph and the Entra token endpoint, Azure Key
//! Vault's secrets API, the Kubernetes API (Secrets), and an SMTP relay that behaves like
//! Azure Communication Services. The tests and `entra-rotator demo` point the production
//! clients at them by endpoint configuration only.
//!
//! They share one [`tenant::Tenant`]: the relay and the token endpoint accept exactly the
//! secrets the Graph stand-in has minted, after a configurable propagation delay.
//!
//! Test and demo infrastructure, never part of the production build: the product reaches
//! this crate only through its `demo` feature and as a dev-dependency. This crate does not
//! depend on the product; what it must agree on with it (the 2-year cap on a secret's
//! lifetime) is its own constant, and a test of the product checks that the two agree.
#![forbid(unsafe_code)]

/// The longest lifetime Entra allows for a client secret (the portal's maximum), which
/// the Graph stand-in enforces on `addPassword` as Graph does.
pub const MAX_SECRET_LIFETIME_DAYS: i64 = 730;

pub mod exchange;
pub mod faults;
pub mod federation;
pub mod graph;
pub mod https;
pub mod keyvault;
pub mod kubernetes;
pub mod managed_identity;
pub mod scenario;
pub mod smtp;
pub mod tenant;
pub mod tls;

/// Locks a stand-in's state. A panic while holding the lock only happens in a failing
/// test; the stand-in keeps serving rather than failing every later request too.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
