//! kusto-copy: exact, resumable, age-preserving copies of Kusto tables.
//!
//! # Layout
//! - [`config`]: app settings read once at start-up; a bad setting is one clear error.
//! - [`auth`]: which Entra ID credential signs our requests (managed identity, developer
//!   tools, or the local emulator's unsigned tokens).
//! - [`storage`]: everything that touches Azure Storage: the checkpoint store (blob CAS),
//!   the step queue, staging SAS, and the one place that builds clients.
//! - [`job`]: copy requests and jobs: parsing, validation, the records we keep.
//! - [`engine`]: the interface the copy engine offers to its drivers.
//! - [`handler`]: `kc serve`, the Azure Functions custom handler (axum).
//! - [`cli`]: `kc copy`, the same engine driven in-process.
//! - [`kusto`]: the Kusto REST client.
//! - [`metrics`]: what the process cost (Storage transactions, CPU, memory).
//!
//! The binary (`src/main.rs`) only parses arguments, starts tracing and calls in here.

pub mod auth;
pub mod cli;
pub mod config;
pub mod engine;
pub mod handler;
pub mod job;
pub mod kusto;
pub mod metrics;
pub mod storage;
