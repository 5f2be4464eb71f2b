//! The library behind `basaltctl`, the Basalt operator CLI.
//!
//! - [`secrets`]: CA, node server certificate and role client certificates (rcgen);
//! - [`config`]: the machine configuration and `basaltctl.yaml` files;
//! - [`connect`]: TLS 1.3 connections to a node (CA or pinned fingerprint), tonic clients,
//!   connect timeout and retries with backoff;
//! - [`token`]: Ed25519 token keys and EdDSA bearer tokens;
//! - [`fanout`]: running one operation on many nodes at once, one result per node;
//! - [`upgrade`]: pushing an update bundle (resumable) or having the node fetch one.
//!
//! It depends on no daemon crate: only the API definitions (`basalt-proto`), TLS and
//! certificate generation.

pub mod config;
pub mod connect;
pub mod fanout;
pub mod image_import;
pub mod secrets;
pub mod token;
pub mod upgrade;
