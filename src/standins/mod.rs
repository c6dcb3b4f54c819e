//! Local stand-ins for the services entra-rotator talks to, speaking their real wire
//! formats over real sockets: Microsoft Graph and the Entra token endpoint, Azure Key
//! Vault's secrets API, the Kubernetes API (Secrets), and an SMTP relay that behaves like
//! Azure Communication Services. The tests and `entra-rotator demo` point the production
//! clients at them by endpoint configuration only.
//!
//! They share one [`tenant::Tenant`]: the relay and the token endpoint accept exactly the
//! secrets the Graph stand-in has minted, after a configurable propagation delay.

pub mod faults;
pub mod graph;
pub mod https;
pub mod keyvault;
pub mod kubernetes;
pub mod scenario;
pub mod smtp;
pub mod tenant;
pub mod tls;

/// Locks a stand-in's state. A panic while holding the lock only happens in a failing
/// test; the stand-in keeps serving rather than failing every later request too.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
