//! The Kubernetes operator: the `ClientSecretRotation` resource, the controller that
//! reconciles it with the rotation engine, and the one-shot pass for CronJobs.
pub mod crd;
