//! Job records: how a request becomes exactly one job.
//!
//! A job lives at `jobs/<id>/job.json`, written create-if-absent. The id is the request's
//! `jobId`, or, when it has none, a name-based UUID of the validated job, so the same request
//! delivered twice (queues deliver at least once) is still one job. A rejected request is
//! recorded too, with its reason, so a person can see why nothing happened; a later valid
//! request under the same id replaces a rejection, never an accepted job.

use super::request::{self, JobSpec, Rejection};
use crate::storage::checkpoint::{self, CheckpointStore, RecordError, Written};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Accepted,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub id: String,
    pub state: JobState,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// Why the request was rejected, for a person to act on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobSpec>,
    /// The start of a rejected request's text (secrets redacted), so its sender can recognise it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_excerpt: Option<String>,
    /// When a rejection stops being kept: a flood of bad requests cannot grow storage
    /// without bound. Expired rejections are deleted when jobs are listed.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// How long a rejection is kept.
pub const REJECTION_TTL: time::Duration = time::Duration::days(7);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// A new job.
    Accepted(JobRecord),
    /// This job was recorded before (a redelivery, or the same request sent again).
    AlreadyRecorded(JobRecord),
    /// The id is taken by a job with a different definition; nothing was written.
    IdTaken { id: String },
    /// The request is invalid; the rejection is recorded.
    Rejected(JobRecord),
}

pub fn job_key(id: &str) -> String {
    format!("jobs/{id}/job.json")
}

/// Namespace for name-based job ids (a fixed random UUID: ids only need to be stable).
const JOB_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b63_2d6a_6f62_4f1d_9a3e_5c0f_7d21_a9b4);

/// The id of a job whose request names none: a name-based UUID of the validated job, so
/// the same request is the same job however often it is sent (and `kc submit` can say which
/// job it submitted before the app has read the message).
pub fn job_id_for(spec: &JobSpec) -> String {
    let canonical = serde_json::to_vec(spec).expect("job specs serialize");
    uuid::Uuid::new_v5(&JOB_ID_NAMESPACE, &canonical).to_string()
}

pub fn validate_job_id(id: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("jobId '{id}' must be 1-64 letters, digits, '-' or '_'"))
    }
}

/// Validates a request's text and records the job (or the rejection) exactly once.
pub async fn record_request(
    store: &dyn CheckpointStore,
    text: &str,
    now: OffsetDateTime,
    policy: &super::RequestPolicy,
) -> Result<RecordOutcome, RecordError> {
    let parsed = request::parse(text);
    let given_id = parsed.as_ref().ok().and_then(|r| r.job_id.clone());
    let validated = parsed
        .and_then(|r| {
            if let Some(id) = &r.job_id {
                validate_job_id(id).map_err(Rejection)?;
            }
            r.validate(policy)
        })
        .map_err(|Rejection(reason)| Rejection(super::redact::redact(&reason)));
    match validated {
        Ok(spec) => {
            let id = given_id.unwrap_or_else(|| job_id_for(&spec));
            let record = JobRecord {
                id: id.clone(),
                state: JobState::Accepted,
                received_at: now,
                reason: None,
                spec: Some(spec),
                request_excerpt: None,
                expires_at: None,
            };
            write_accepted(store, record).await
        }
        Err(Rejection(reason)) => {
            // Under the jobId it names (so `status` answers for it), or else keyed by a hash
            // of the message text: the same bad message delivered again is one record, and
            // every rejection expires, so a flood cannot grow storage without bound.
            let id = given_id
                .filter(|id| validate_job_id(id).is_ok())
                .unwrap_or_else(|| format!("rejected-{}", uuid::Uuid::new_v5(&JOB_ID_NAMESPACE, text.as_bytes())));
            let record = JobRecord {
                id: id.clone(),
                state: JobState::Rejected,
                received_at: now,
                reason: Some(reason),
                spec: None,
                request_excerpt: Some(super::redact::redact(&text.chars().take(500).collect::<String>())),
                expires_at: Some(now + REJECTION_TTL),
            };
            let key = job_key(&id);
            if let Written::Conflict = checkpoint::create_json(store, &key, &record).await? {
                // A job holds the id: it stays as it is. An earlier rejection is replaced, so
                // status gives the latest reason (losing that race changes nothing that matters).
                if let Some((existing, etag)) = checkpoint::read_json::<JobRecord>(store, &key).await? {
                    if existing.state == JobState::Rejected && existing.reason != record.reason {
                        checkpoint::replace_json(store, &key, &record, &etag).await?;
                    }
                }
            }
            Ok(RecordOutcome::Rejected(record))
        }
    }
}

async fn write_accepted(store: &dyn CheckpointStore, record: JobRecord) -> Result<RecordOutcome, RecordError> {
    let key = job_key(&record.id);
    // Bounded: each round loses only to a writer that changed the record in between.
    for _ in 0..3 {
        if let Written::Done(_) = checkpoint::create_json(store, &key, &record).await? {
            return Ok(RecordOutcome::Accepted(record));
        }
        let Some((existing, etag)) = checkpoint::read_json::<JobRecord>(store, &key).await? else {
            continue; // deleted in between: try to create again
        };
        match existing.state {
            JobState::Accepted if existing.spec == record.spec => return Ok(RecordOutcome::AlreadyRecorded(existing)),
            JobState::Accepted => return Ok(RecordOutcome::IdTaken { id: record.id }),
            JobState::Rejected => {
                if let Written::Done(_) = checkpoint::replace_json(store, &key, &record, &etag).await? {
                    return Ok(RecordOutcome::Accepted(record));
                }
            }
        }
    }
    Ok(RecordOutcome::IdTaken { id: record.id })
}

/// All job records, or one.
pub async fn list_jobs(store: &dyn CheckpointStore) -> Result<Vec<JobRecord>, RecordError> {
    let mut jobs = Vec::new();
    for key in store.list("jobs/").await? {
        if key.ends_with("/job.json") && key.matches('/').count() == 2 {
            if let Some((job, _)) = checkpoint::read_json::<JobRecord>(store, &key).await? {
                if job.expires_at.is_some_and(|t| t < OffsetDateTime::now_utc()) {
                    store.delete(&key).await?;
                    continue;
                }
                jobs.push(job);
            }
        }
    }
    Ok(jobs)
}

pub async fn read_job(store: &dyn CheckpointStore, id: &str) -> Result<Option<JobRecord>, RecordError> {
    if validate_job_id(id).is_err() && !id.starts_with("rejected-") {
        return Ok(None);
    }
    Ok(checkpoint::read_json::<JobRecord>(store, &job_key(id)).await?.map(|(j, _)| j))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::checkpoint::MemoryCheckpointStore;

    const OK: &str = r#"{"source":"https://a.kusto.windows.net/db/T","destination":"https://b.kusto.windows.net/db2","stagingDirectory":"https://stg.blob.core.windows.net/staging"}"#;

    const P: super::super::RequestPolicy =
        super::super::RequestPolicy { allowed_clusters: None, allowed_storage_accounts: None, loopback: false, app_client_id: None };

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    #[tokio::test]
    async fn the_same_request_twice_is_one_job() {
        let store = MemoryCheckpointStore::default();
        let first = record_request(&store, OK, now(), &P).await.unwrap();
        let RecordOutcome::Accepted(job) = first else { panic!("{first:?}") };
        let second = record_request(&store, OK, now(), &P).await.unwrap();
        assert!(matches!(second, RecordOutcome::AlreadyRecorded(ref j) if j.id == job.id), "{second:?}");
        assert_eq!(list_jobs(&store).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_taken_id_is_not_overwritten_and_a_rejection_can_be_corrected() {
        let store = MemoryCheckpointStore::default();
        let with_id = OK.replace("{", r#"{"jobId":"j1","#);
        assert!(matches!(record_request(&store, &with_id, now(), &P).await.unwrap(), RecordOutcome::Accepted(_)));
        let other = with_id.replace("/db/T", "/db/U");
        assert_eq!(record_request(&store, &other, now(), &P).await.unwrap(), RecordOutcome::IdTaken { id: "j1".into() });
        assert_eq!(read_job(&store, "j1").await.unwrap().unwrap().spec.unwrap().activities[0].source.table, "T");

        let bad = r#"{"jobId":"j2","source":"https://a.kusto.windows.net/db"}"#;
        assert!(matches!(record_request(&store, bad, now(), &P).await.unwrap(), RecordOutcome::Rejected(_)));
        let rejected = read_job(&store, "j2").await.unwrap().unwrap();
        assert_eq!(rejected.state, JobState::Rejected, "status answers for the jobId a rejected request named");
        assert!(rejected.expires_at.is_some(), "and the rejection expires");
        let anonymous = r#"{"source":"https://a.kusto.windows.net/db"}"#;
        record_request(&store, anonymous, now(), &P).await.unwrap();
        record_request(&store, anonymous, now(), &P).await.unwrap();
        assert_eq!(store.list("jobs/rejected-").await.unwrap().len(), 1, "without a jobId: one record per text");
        let fixed = OK.replace("{", r#"{"jobId":"j2","#);
        assert!(matches!(record_request(&store, &fixed, now(), &P).await.unwrap(), RecordOutcome::Accepted(_)));
        assert_eq!(read_job(&store, "j2").await.unwrap().unwrap().state, JobState::Accepted);
    }
}
