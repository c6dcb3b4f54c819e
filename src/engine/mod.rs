//! The rotation engine: decides whether an application's secret must rotate and
//! sequences observe → mint → store → verify → revoke.
pub mod ports;
