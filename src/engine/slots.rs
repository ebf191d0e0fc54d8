//! Export slots of a source cluster, shared by every job that exports from it.
//!
//! A cluster runs at most its `DataExport` capacity of exports at once; more are throttled.
//! Each running export holds one claim record `clusters/<cluster>/export-slots/<n>.json`
//! (n below the capacity), taken with create-if-absent or by replacing an expired claim, kept
//! alive while the export is polled, and given up when it ends. A claim left by a crashed
//! step expires on its own, so a slot is never lost for good.

use crate::storage::checkpoint::{self, CheckpointStore, Written};
use crate::storage::StorageError;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// How long a claim holds without being renewed (polls renew it far more often).
pub const CLAIM_TTL: Duration = Duration::minutes(30);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Claim {
    /// Who holds the slot: one block of one iteration (its export attempts share it).
    owner: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

fn slot_key(cluster: &str, n: u64) -> String {
    let name: String = cluster
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    format!("clusters/{name}/export-slots/{n:03}.json")
}

/// Takes a slot for `owner`, or keeps the one it holds. `false`: all slots are busy.
pub async fn acquire(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, now: OffsetDateTime) -> Result<bool, StorageError> {
    Ok(acquire_hinted(store, cluster, capacity, owner, now, Hints::default()).await?.is_some())
}

/// Where this process last saw things, looked at first (hints only: every claim is still
/// read and swapped with its ETag).
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints {
    /// The slot the owner's claim was last seen in.
    pub held: Option<u64>,
    /// Slots likely free, and the owner never held one (a block's first export): the first
    /// of them still free is taken without looking at every slot first. Should the owner
    /// hold another claim after all (a duplicate delivery elsewhere took one), that claim
    /// only idles until it expires or the iteration ends: capacity is never exceeded.
    pub free: [Option<u64>; 2],
}

/// [`acquire`], answering which slot is held.
pub async fn acquire_hinted(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, now: OffsetDateTime, hints: Hints) -> Result<Option<u64>, StorageError> {
    let claim = Claim { owner: owner.to_owned(), expires_at: now + CLAIM_TTL };
    let mut looked = Vec::with_capacity(3);
    let hinted = [(hints.held, false), (hints.free[0], true), (hints.free[1], true)];
    for (n, take_if_free) in hinted.into_iter().filter_map(|(n, f)| n.filter(|n| *n < capacity.max(1)).map(|n| (n, f))) {
        if looked.contains(&n) {
            continue;
        }
        looked.push(n);
        let key = slot_key(cluster, n);
        let found = checkpoint::read_json::<Claim>(store, &key).await.map_err(record_to_storage)?;
        let write = match found {
            Some((held, etag)) if held.owner == owner => Some(Some(etag)),
            Some((held, etag)) if take_if_free && held.expires_at <= now => Some(Some(etag)),
            None if take_if_free => Some(None),
            _ => None,
        };
        if let Some(etag) = write {
            if take(store, &key, &claim, etag).await? {
                return Ok(Some(n));
            }
        }
    }
    let mut free = None;
    for n in 0..capacity.max(1) {
        let key = slot_key(cluster, n);
        match checkpoint::read_json::<Claim>(store, &key).await.map_err(record_to_storage)? {
            Some((held, etag)) if held.owner == owner => {
                return Ok(matches!(checkpoint::replace_json(store, &key, &claim, &etag).await?, Written::Done(_)).then_some(n));
            }
            Some((held, etag)) if held.expires_at <= now => free = free.or(Some((n, key, Some(etag)))),
            Some(_) => {}
            None => free = free.or(Some((n, key, None))),
        }
    }
    let Some((n, key, etag)) = free else { return Ok(None) };
    // Lost the race for that slot: report busy; the export asks again shortly.
    Ok(take(store, &key, &claim, etag).await?.then_some(n))
}

/// Writes `claim` where no claim was (`etag` none) or over the one read at `etag`; whether
/// it landed.
async fn take(store: &dyn CheckpointStore, key: &str, claim: &Claim, etag: Option<checkpoint::ETag>) -> Result<bool, StorageError> {
    let written = match etag {
        None => checkpoint::create_json(store, key, claim).await?,
        Some(etag) => checkpoint::replace_json(store, key, claim, &etag).await?,
    };
    Ok(matches!(written, Written::Done(_)))
}

/// Extends the claim `owner` holds, if any (a poll of a running export).
pub async fn renew(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, now: OffsetDateTime) -> Result<(), StorageError> {
    renew_hinted(store, cluster, capacity, owner, now, None).await
}

/// [`renew`], looking first at the slot `hint` names.
pub async fn renew_hinted(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, now: OffsetDateTime, hint: Option<u64>) -> Result<(), StorageError> {
    set(store, cluster, capacity, owner, Claim { owner: owner.to_owned(), expires_at: now + CLAIM_TTL }, hint).await
}

/// Gives up the claim `owner` holds, if any: it expires at once and names no owner, so a
/// renewal from a delivery that polled before the release (and renews after it) finds
/// nothing of its own to extend.
pub async fn release(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, now: OffsetDateTime) -> Result<(), StorageError> {
    release_hinted(store, cluster, capacity, owner, now, None).await
}

/// [`release`], looking first at the slot `hint` names.
pub async fn release_hinted(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, now: OffsetDateTime, hint: Option<u64>) -> Result<(), StorageError> {
    set(store, cluster, capacity, owner, Claim { owner: String::new(), expires_at: now }, hint).await
}

/// Gives up every claim whose owner starts with `prefix` (one iteration's blocks, once they
/// are all done: a stale delivery may have taken a claim for a block already past export).
pub async fn release_all(store: &dyn CheckpointStore, cluster: &str, capacity: u64, prefix: &str, now: OffsetDateTime) -> Result<(), StorageError> {
    for n in 0..capacity.max(1) {
        let key = slot_key(cluster, n);
        if let Some((held, etag)) = checkpoint::read_json::<Claim>(store, &key).await.map_err(record_to_storage)? {
            if !held.owner.is_empty() && held.owner.starts_with(prefix) && held.expires_at > now {
                checkpoint::replace_json(store, &key, &Claim { owner: String::new(), expires_at: now }, &etag).await?;
            }
        }
    }
    Ok(())
}

async fn set(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, claim: Claim, hint: Option<u64>) -> Result<(), StorageError> {
    // The hinted slot first, then every slot in order (the hinted one is read twice only
    // when the claim was not where the hint said).
    let order = hint.filter(|n| *n < capacity.max(1)).into_iter().chain(0..capacity.max(1));
    for n in order {
        let key = slot_key(cluster, n);
        if let Some((held, etag)) = checkpoint::read_json::<Claim>(store, &key).await.map_err(record_to_storage)? {
            if held.owner == owner {
                // A lost race means the claim changed hands after expiring: nothing to do.
                checkpoint::replace_json(store, &key, &claim, &etag).await?;
                return Ok(());
            }
        }
    }
    Ok(())
}

fn record_to_storage(e: checkpoint::RecordError) -> StorageError {
    match e {
        checkpoint::RecordError::Storage(s) => s,
        corrupt => StorageError::Permanent { what: "read an export slot".into(), detail: corrupt.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::checkpoint::MemoryCheckpointStore;
    use time::macros::datetime;

    const T: OffsetDateTime = datetime!(2026-01-01 0:00 UTC);
    const C: &str = "https://src.kusto.windows.net";

    #[tokio::test]
    async fn claims_are_bounded_kept_released_and_expire() {
        let store = MemoryCheckpointStore::default();
        assert!(acquire(&store, C, 2, "job1/a/1/0", T).await.unwrap());
        assert!(acquire(&store, C, 2, "job2/a/1/0", T).await.unwrap());
        assert!(!acquire(&store, C, 2, "job1/a/1/1", T).await.unwrap(), "both slots are held");
        assert!(acquire(&store, C, 2, "job1/a/1/0", T).await.unwrap(), "a holder keeps its slot");
        // Another cluster has its own slots.
        assert!(acquire(&store, "https://other.kusto.windows.net", 2, "job1/a/1/1", T).await.unwrap());

        release(&store, C, 2, "job2/a/1/0", T).await.unwrap();
        renew(&store, C, 2, "job2/a/1/0", T).await.unwrap();
        assert!(acquire(&store, C, 2, "job1/a/1/1", T).await.unwrap(), "a released slot is free, and a late renewal does not take it back");

        // A crashed holder's claim expires; renewing pushes the expiry out.
        renew(&store, C, 2, "job1/a/1/0", T + Duration::minutes(20)).await.unwrap();
        let later = T + CLAIM_TTL + Duration::minutes(1);
        assert!(acquire(&store, C, 2, "job3/a/1/0", later).await.unwrap(), "job1/a/1/1's claim expired");
        assert!(!acquire(&store, C, 2, "job4/a/1/0", later).await.unwrap(), "job1/a/1/0 renewed and still holds");
    }

    #[tokio::test]
    async fn an_iterations_claims_are_given_back_together() {
        let store = MemoryCheckpointStore::default();
        assert!(acquire(&store, C, 2, "job1/a/1/0", T).await.unwrap());
        assert!(acquire(&store, C, 2, "job1/a/1/1", T).await.unwrap());
        release_all(&store, C, 2, "job1/a/1/", T).await.unwrap();
        assert!(acquire(&store, C, 2, "job2/a/1/0", T).await.unwrap(), "an iteration's claims are all given back");
        assert!(acquire(&store, C, 2, "job2/a/1/1", T).await.unwrap());
        release_all(&store, C, 2, "job1/a/1/", T).await.unwrap();
        assert!(!acquire(&store, C, 2, "job3/a/1/0", T).await.unwrap(), "other owners' claims stay");
    }
}
