//! The interface the copy engine offers to its drivers (`kc serve` under the Functions host,
//! and `kc copy` in-process).
//!
//! A driver only moves messages and time: it hands the engine a message or a tick and sends
//! whatever the engine asks to send next. Messages name what to look at, never the state
//! itself; the state is in the checkpoint store.
//!
//! - [`plan`]: blocks from row counts and extents (pure).
//! - [`records`]: checkpoint records and their transitions (pure).
//! - [`steps`]: each block step as a pure decision, one file per step.
//! - [`execute`]: the executor of block steps: decisions in, effects and compare-and-swap out.
//! - [`copy`]: [`copy::CopyEngine`]: planning, iterations, the sweeper and the scheduler.
//! - [`clock`]: time and ids as inputs.
//! - [`local`]: the in-process driver of `kc copy`.
//! - [`slots`]: export slots of a source cluster, shared across jobs.
//! - [`janitor`]: removes this deployment's staging objects no live iteration owns.
//! - [`status`]: what a job is doing, for people.

pub mod clock;
pub mod copy;
pub mod execute;
pub mod janitor;
pub mod local;
pub mod looks;
pub mod plan;
pub mod records;
pub mod slots;
pub mod status;
pub mod steps;

use crate::job::JobRecord;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use time::OffsetDateTime;

/// One step of one table copy, as carried on the `kc-steps` queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepMessage {
    pub job: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<u64>,
    pub step: String,
}

/// A message the engine wants sent, now or after `delay` (waiting on a Kusto operation is a
/// delayed message, not a sleeping invocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub message: StepMessage,
    pub delay: Duration,
}

/// How a message reached us: redeliveries matter to an at-least-once consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: Option<String>,
    pub dequeue_count: u32,
}

/// A timer firing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    pub now: OffsetDateTime,
    pub past_due: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Waiting can help (throttling, a storage hiccup): the driver lets the message come back.
    #[error("{0} (transient)")]
    Transient(String),
    /// Retrying this message will not help; the engine has recorded what a person should do.
    #[error("{0}")]
    Permanent(String),
}

#[async_trait]
pub trait Engine: Send + Sync {
    /// A job was just recorded: the first messages of its copy.
    async fn start_job(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError>;
    /// Advance the step a message names.
    async fn step(&self, message: &StepMessage, delivery: &Delivery) -> Result<Vec<Outgoing>, EngineError>;
    /// Start due iterations and re-emit lost work.
    async fn tick(&self, tick: &Tick) -> Result<Vec<Outgoing>, EngineError>;
    /// Stop a job for good (its committed rows stay): the messages that clean up after it.
    async fn cancel(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError>;
}
