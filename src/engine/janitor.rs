//! The janitor, on every scheduler tick: removes this deployment's staging tables and
//! staging containers that no live iteration owns (what a crash between a create and the
//! record of it, or a cleanup that never ran, would otherwise leave forever).
//!
//! Every name the engine makes starts with the deployment's hash (`kc_staging_<dep>-<iter>`,
//! `kcs-<dep>-<iter>-<block>-<attempt>`), so another deployment's objects are never touched.
//! The objects are listed **before** the records are read: anything listed was created by a
//! step whose iteration record already existed, so a live owner is always seen.

use super::copy::{keys, ActivityRecord, CopyEngine, Place};
use super::records::{IterationRecord, IterationState};
use super::EngineError;
use crate::job::JobRecord;
use crate::kusto::{commands, results, ClientRequestId, Ident};
use std::collections::{BTreeMap, BTreeSet};

const TABLE_PREFIX: &str = "kc_staging_";
const CONTAINER_PREFIX: &str = "kcs-";

/// The iteration id (`<dep>-<iter>`) a staging table or container name carries, if it is
/// one of `deployment`'s.
pub fn owner_of(name: &str, deployment: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix(TABLE_PREFIX) {
        return rest.starts_with(&format!("{deployment}-")).then(|| rest.to_owned());
    }
    let rest = name.strip_prefix(CONTAINER_PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let (dep, iteration) = (parts.next()?, parts.next()?);
    (dep == deployment).then(|| format!("{dep}-{iteration}"))
}

/// The longest a janitor call may take: an unreachable cluster must not hold up the tick.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a job may still own, or have left, staging objects: one of its activities is not
/// over, or ended within the last day (a crash at the very end leaves its staging table).
fn worth_a_look(activities: &[Option<ActivityRecord>], now: time::OffsetDateTime) -> bool {
    activities.iter().any(|a| match a {
        None => false,
        Some(r) => {
            !matches!(r.state, super::copy::ActivityState::Completed) || r.last_finished_at.is_none_or(|t| now - t < time::Duration::days(1))
        }
    })
}

impl CopyEngine {
    /// Whether this instance's janitor is due (it runs every `janitor_every`).
    pub(super) fn janitor_due(&self) -> bool {
        let Some(every) = self.options.janitor_every else { return false };
        let now = self.clock.now();
        let mut last = self.janitor_ran.lock().unwrap();
        if last.is_some_and(|t| now - t < every) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Removes what no live iteration owns; returns how many objects it removed. One
    /// unreachable cluster or account is skipped, not an error for the others.
    pub async fn janitor(&self, jobs: &[JobRecord]) -> Result<usize, EngineError> {
        let deployment = self.options.deployment.clone();
        // 1. What exists: staging tables per destination database, containers per account.
        let mut databases: BTreeSet<(String, String)> = BTreeSet::new();
        let mut accounts: BTreeSet<String> = BTreeSet::new();
        let mut looked_at = Vec::new();
        for job in jobs {
            let Some(spec) = &job.spec else { continue };
            let mut records = Vec::new();
            for a in &spec.activities {
                records.push(self.read::<ActivityRecord>(&keys::activity(&job.id, &a.name)).await?.map(|(r, _)| r));
            }
            if worth_a_look(&records, self.clock.now()) {
                looked_at.push(job.clone());
            }
        }
        let jobs = looked_at.as_slice();
        for spec in jobs.iter().filter_map(|j| j.spec.as_ref()) {
            databases.extend(spec.activities.iter().map(|a| (a.destination.cluster.clone(), a.destination.database.clone())));
            accounts.extend(spec.staging.iter().map(|s| s.account_url.clone()));
        }
        let rid = ClientRequestId::new("janitor", "scheduler", &deployment, 1);
        let mut tables: Vec<(String, String, String)> = Vec::new();
        for (cluster, database) in &databases {
            let Ok(kusto) = self.connections.kusto(cluster) else { continue };
            let listed = tokio::time::timeout(CALL_TIMEOUT, kusto.execute(database, &commands::show_tables(), &rid)).await;
            match listed.map_err(|_| "timed out".to_owned()).and_then(|r| r.and_then(|a| results::table_names(&a)).map_err(|e| e.to_string())) {
                Ok(names) => tables.extend(names.into_iter().filter(|n| owner_of(n, &deployment).is_some()).map(|n| (cluster.clone(), database.clone(), n))),
                Err(e) => tracing::warn!(%cluster, %database, error = %e, "janitor could not list tables"),
            }
        }
        let mut containers: Vec<(String, String)> = Vec::new();
        for account in &accounts {
            let listed = tokio::time::timeout(CALL_TIMEOUT, self.staging_containers(account, &format!("{CONTAINER_PREFIX}{deployment}-"))).await;
            match listed.unwrap_or_else(|_| Err(EngineError::Transient("timed out".into()))) {
                Ok(names) => containers.extend(names.into_iter().map(|n| (account.clone(), n))),
                Err(e) => tracing::warn!(%account, error = %e, "janitor could not list containers"),
            }
        }
        if tables.is_empty() && containers.is_empty() {
            return Ok(0);
        }

        // 2. Who is live: an iteration not done, unless its activity stopped and its
        //    leftovers were already removed (a resubmission makes it live again first).
        let mut live: BTreeSet<String> = BTreeSet::new();
        for job in jobs {
            let Some(spec) = &job.spec else { continue };
            for activity in &spec.activities {
                let Some((record, _)) = self.read::<ActivityRecord>(&keys::activity(&job.id, &activity.name)).await? else { continue };
                let Some((it, _)) = self.read::<IterationRecord>(&keys::iteration(&job.id, &activity.name, record.iteration)).await? else { continue };
                // Finished by the activity's count even if the iteration's own record was
                // not marked yet (a step stopped between the two writes).
                let finished = it.state == IterationState::Done || record.last_finished_iteration >= it.number;
                if !finished && !(record.state.stopped() && it.aborted) {
                    let place = Place { job: job.clone(), spec: spec.clone(), activity: activity.clone(), iteration: record.iteration, deployment: deployment.clone() };
                    live.insert(place.id());
                }
            }
        }

        // 3. Remove the rest.
        let mut removed = 0;
        let mut by_database: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (cluster, database, table) in tables {
            if owner_of(&table, &deployment).is_some_and(|id| !live.contains(&id)) {
                by_database.entry((cluster, database)).or_default().push(table);
            }
        }
        for ((cluster, database), names) in by_database {
            let kusto = self.connections.kusto(&cluster)?;
            for name in names {
                let Ok(table) = Ident::new(&name) else { continue };
                match kusto.execute(&database, &commands::drop_table(&table), &rid).await {
                    Ok(_) => {
                        tracing::info!(%cluster, %database, table = %name, "janitor dropped a staging table no iteration owns");
                        removed += 1;
                    }
                    Err(e) => tracing::warn!(%cluster, table = %name, error = %e, "janitor could not drop a staging table"),
                }
            }
        }
        for (account, name) in containers {
            if owner_of(&name, &deployment).is_some_and(|id| !live.contains(&id)) {
                let staging = self.connections.staging(&account)?;
                match staging.delete_folder(&name).await {
                    Ok(_) => {
                        tracing::info!(%account, container = %name, "janitor deleted a staging container no iteration owns");
                        removed += 1;
                    }
                    Err(e) => tracing::warn!(%account, container = %name, error = %e, "janitor could not delete a staging container"),
                }
            }
        }
        Ok(removed)
    }

    async fn staging_containers(&self, account: &str, prefix: &str) -> Result<Vec<String>, EngineError> {
        let staging = self.connections.staging(account)?;
        staging.list_folders(prefix).await.map_err(|e| EngineError::Transient(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_deployments_names_have_an_owner() {
        assert_eq!(owner_of("kc_staging_ab12cd-0123456789ab", "ab12cd").as_deref(), Some("ab12cd-0123456789ab"));
        assert_eq!(owner_of("kcs-ab12cd-0123456789ab-17-2", "ab12cd").as_deref(), Some("ab12cd-0123456789ab"));
        assert_eq!(owner_of("kc_staging_ffffff-0123456789ab", "ab12cd"), None, "another deployment's");
        assert_eq!(owner_of("kcs-ffffff-0123456789ab-1-1", "ab12cd"), None);
        assert_eq!(owner_of("Events", "ab12cd"), None);
        assert_eq!(owner_of("kcs-probe-0123456789ab", "ab12cd"), None, "kc validate's probes are its own");
    }
}
