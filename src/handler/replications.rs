//! Keeps one job per declared replication (`KC_REPLICATIONS`), on every scheduler tick.
//!
//! What was decided is recorded before it is done, in one registry record
//! (`replications.json`) changed only by compare-and-swap: which job each name runs, and
//! which jobs were retired (replaced by a changed definition, or their name removed) and
//! whether their cancel has been carried out. Each tick then carries out what the registry
//! says and is not yet done (a job not recorded yet, a cancel not yet made), so a crash
//! between two writes only delays it to the next tick.
//!
//! During a settings change the instances restart one by one, so for a while some still
//! declare the old replications. The declarations carry a version (`KC_REPLICATIONS_VERSION`,
//! which the Bicep sets to the deployment time): the registry records the highest version
//! applied, and an instance with a lower one changes nothing, so it neither recreates a
//! removed replication nor retires a new one. As a second guard, a retired job is never
//! started again; bringing a removed replication back needs a new name or a changed
//! definition.

use crate::engine::{Engine, EngineError, Outgoing};
use crate::job::record::read_job;
use crate::job::replication::Replication;
use crate::job::{record_request, RecordOutcome, RequestPolicy};
use crate::storage::checkpoint::{self, CheckpointStore, Written};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

pub const REGISTRY_KEY: &str = "replications.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    /// The highest declaration version applied.
    #[serde(default)]
    pub version: u64,
    /// Name → the job that replication runs.
    pub active: BTreeMap<String, String>,
    /// Job id → whether its cancel has been carried out.
    pub retired: BTreeMap<String, bool>,
}

/// The registry the declarations (of `version`) call for: new names get their job, changed
/// definitions replace theirs, removed names retire theirs; declarations older than the
/// registry's change nothing. Pure.
pub fn decide(registry: &Registry, declared: &[Replication], version: u64) -> Registry {
    if version < registry.version {
        return registry.clone();
    }
    let mut next = registry.clone();
    next.version = version;
    for r in declared {
        if next.retired.contains_key(&r.job_id) {
            continue; // an older definition, from an instance with old settings
        }
        if let Some(old) = next.active.insert(r.name.clone(), r.job_id.clone()) {
            if old != r.job_id {
                next.retired.insert(old, false);
            }
        }
    }
    let removed: Vec<String> = next.active.keys().filter(|name| !declared.iter().any(|r| &r.name == *name)).cloned().collect();
    for name in removed {
        if let Some(old) = next.active.remove(&name) {
            next.retired.insert(old, false);
        }
    }
    next
}

fn storage(e: impl std::fmt::Display) -> EngineError {
    EngineError::Transient(format!("replications registry: {e}"))
}

/// One tick's reconciliation; returns the messages of the cancels it made. Jobs it records
/// are started by the same tick's scheduler pass (the sweeper plans a job without activity
/// records).
pub async fn reconcile(
    store: &dyn CheckpointStore,
    engine: &dyn Engine,
    policy: &RequestPolicy,
    declared: &[Replication],
    version: u64,
    now: OffsetDateTime,
) -> Result<Vec<Outgoing>, EngineError> {
    // Decide and record.
    let registry = loop {
        let found = checkpoint::read_json::<Registry>(store, REGISTRY_KEY).await.map_err(storage)?;
        let (current, etag) = match found {
            Some((r, etag)) => (r, Some(etag)),
            None => (Registry::default(), None),
        };
        let next = decide(&current, declared, version);
        if next == current {
            break current;
        }
        let written = match &etag {
            None => checkpoint::create_json(store, REGISTRY_KEY, &next).await,
            Some(etag) => checkpoint::replace_json(store, REGISTRY_KEY, &next, etag).await,
        }
        .map_err(storage)?;
        if let Written::Done(_) = written {
            for (name, job) in &next.active {
                if current.active.get(name) != Some(job) {
                    tracing::info!(replication = %name, job = %job, "replication starts a job");
                }
            }
            break next;
        }
        // Another instance changed it in between: decide again on what it wrote.
    };

    // Carry out: every active job recorded, every retired one cancelled.
    let mut out = Vec::new();
    for (name, job_id) in &registry.active {
        let Some(r) = declared.iter().find(|r| &r.name == name && &r.job_id == job_id) else { continue };
        if read_job(store, job_id).await.map_err(storage)?.is_some() {
            continue;
        }
        match record_request(store, &r.request, now, policy).await.map_err(storage)? {
            RecordOutcome::Accepted(_) | RecordOutcome::AlreadyRecorded(_) => {}
            RecordOutcome::Rejected(job) => {
                tracing::error!(replication = %name, job = %job.id, reason = job.reason.as_deref().unwrap_or_default(), "replication rejected: fix its definition in KC_REPLICATIONS")
            }
            RecordOutcome::IdTaken { id } => tracing::error!(replication = %name, job = %id, "replication's job id is taken by another job"),
        }
    }
    for (job_id, cancelled) in &registry.retired {
        if *cancelled {
            continue;
        }
        if let Some(job) = read_job(store, job_id).await.map_err(storage)? {
            out.extend(engine.cancel(&job).await?);
            tracing::info!(job = %job_id, "replication's job retired: cancelled");
        }
        mark_cancelled(store, job_id).await?;
    }
    Ok(out)
}

async fn mark_cancelled(store: &dyn CheckpointStore, job_id: &str) -> Result<(), EngineError> {
    loop {
        let Some((mut registry, etag)) = checkpoint::read_json::<Registry>(store, REGISTRY_KEY).await.map_err(storage)? else { return Ok(()) };
        if registry.retired.get(job_id) != Some(&false) {
            return Ok(());
        }
        registry.retired.insert(job_id.to_owned(), true);
        if let Written::Done(_) = checkpoint::replace_json(store, REGISTRY_KEY, &registry, &etag).await.map_err(storage)? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(items: &[(&str, &str)]) -> Vec<Replication> {
        items.iter().map(|(name, job)| Replication { name: name.to_string(), job_id: job.to_string(), request: String::new() }).collect()
    }

    fn registry(active: &[(&str, &str)], retired: &[(&str, bool)]) -> Registry {
        Registry {
            version: 1,
            active: active.iter().map(|(n, j)| (n.to_string(), j.to_string())).collect(),
            retired: retired.iter().map(|(j, c)| (j.to_string(), *c)).collect(),
        }
    }

    #[test]
    fn each_declaration_change_has_one_outcome() {
        let table = [
            // (registry before, declared, registry after)
            (registry(&[], &[]), declared(&[("a", "a-1")]), registry(&[("a", "a-1")], &[])),
            (registry(&[("a", "a-1")], &[]), declared(&[("a", "a-1")]), registry(&[("a", "a-1")], &[])),
            (registry(&[("a", "a-1")], &[]), declared(&[("a", "a-2")]), registry(&[("a", "a-2")], &[("a-1", false)])),
            (registry(&[("a", "a-1")], &[]), declared(&[]), registry(&[], &[("a-1", false)])),
            // An instance with old settings, after the change: nothing moves back.
            (registry(&[("a", "a-2")], &[("a-1", true)]), declared(&[("a", "a-1")]), registry(&[("a", "a-2")], &[("a-1", true)])),
            // ... after the removal: the name is not recreated.
            (registry(&[], &[("a-1", true)]), declared(&[("a", "a-1")]), registry(&[], &[("a-1", true)])),
            (registry(&[("a", "a-1")], &[]), declared(&[("a", "a-1"), ("b", "b-1")]), registry(&[("a", "a-1"), ("b", "b-1")], &[])),
        ];
        for (before, decl, after) in table {
            assert_eq!(decide(&before, &decl, 1), after, "{before:?} with {decl:?}");
        }
    }

    #[test]
    fn an_instance_with_older_declarations_changes_nothing() {
        let now = registry(&[("a", "a-2"), ("b", "b-1")], &[("a-1", true)]);
        let newer = Registry { version: 7, ..now };
        // Version 6 still declares a's old definition and not b.
        assert_eq!(decide(&newer, &declared(&[("a", "a-1")]), 6), newer);
        // Version 8 removes b.
        let after = decide(&newer, &declared(&[("a", "a-2")]), 8);
        assert_eq!((after.version, after.active.len(), after.retired.get("b-1")), (8, 1, Some(&false)));
    }
}
