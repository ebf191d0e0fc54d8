//! Export slots of a source cluster, shared by every job that exports from it.
//!
//! A cluster runs at most its `DataExport` capacity of exports at once; more are throttled.
//! Each running export holds one claim record `clusters/<cluster>/export-slots/<n>.json`
//! (n below the capacity), taken with create-if-absent or by replacing an expired claim, kept
//! alive while the export is polled, and given up when it ends. A claim left by a crashed
//! step expires on its own, so a slot is never lost for good.

use crate::storage::checkpoint::{self, CheckpointStore, ETag, Written};
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

/// A slot, and the ETag of this process's last write to it when it knows one.
pub type Seen = (u64, Option<ETag>);

/// Where this process last saw things, looked at first (hints only: every claim is still
/// swapped with its ETag). A slot whose ETag is known is swapped at it without reading it
/// first: if nobody wrote it since this process did, it holds what that write left (the
/// owner's claim, or a given-up one); if somebody did, the swap fails and the slot is read.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// The slot the owner's claim was last seen in.
    pub held: Option<Seen>,
    /// Slots likely free, and the owner never held one (a block's first export): the first
    /// of them still free is taken without looking at every slot first. Should the owner
    /// hold another claim after all (a duplicate delivery elsewhere took one), that claim
    /// only idles until it expires or the iteration ends: capacity is never exceeded.
    pub free: [Option<Seen>; 2],
}

/// [`acquire`], answering which slot is held and the ETag of the claim written there.
pub async fn acquire_hinted(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, now: OffsetDateTime, hints: Hints) -> Result<Option<(u64, ETag)>, StorageError> {
    let claim = Claim { owner: owner.to_owned(), expires_at: now + CLAIM_TTL };
    let mut looked = Vec::with_capacity(3);
    let [free0, free1] = hints.free;
    let hinted = [(hints.held, false), (free0, true), (free1, true)];
    for ((n, seen), take_if_free) in hinted.into_iter().filter_map(|(h, f)| h.filter(|(n, _)| *n < capacity.max(1)).map(|h| (h, f))) {
        if looked.contains(&n) {
            continue;
        }
        looked.push(n);
        let key = slot_key(cluster, n);
        // Unchanged since this process wrote it: the owner's own claim, or one given up
        // (expired at once); either is the owner's to take.
        if let Some(etag) = seen {
            if let Some(written) = take(store, &key, &claim, Some(etag)).await? {
                return Ok(Some((n, written)));
            }
        }
        let found = checkpoint::read_json::<Claim>(store, &key).await.map_err(record_to_storage)?;
        let write = match found {
            Some((held, etag)) if held.owner == owner => Some(Some(etag)),
            Some((held, etag)) if take_if_free && held.expires_at <= now => Some(Some(etag)),
            None if take_if_free => Some(None),
            _ => None,
        };
        if let Some(etag) = write {
            if let Some(written) = take(store, &key, &claim, etag).await? {
                return Ok(Some((n, written)));
            }
        }
    }
    let mut free = Vec::new();
    for n in 0..capacity.max(1) {
        let key = slot_key(cluster, n);
        match checkpoint::read_json::<Claim>(store, &key).await.map_err(record_to_storage)? {
            Some((held, etag)) if held.owner == owner => return Ok(take(store, &key, &claim, Some(etag)).await?.map(|e| (n, e))),
            Some((held, etag)) if held.expires_at <= now => free.push((n, key, Some(etag))),
            Some(_) => {}
            None => free.push((n, key, None)),
        }
    }
    // Every free slot in turn: exports that end together hand their slots on together, and
    // their successors' scans see the same free slots in the same order. Reporting busy on
    // the first lost race left a slot idle until the loser's next look (kc-bench: several
    // seconds at a time with two or three slots free). Busy only when every one was taken.
    for (n, key, etag) in free {
        if let Some(written) = take(store, &key, &claim, etag).await? {
            return Ok(Some((n, written)));
        }
    }
    Ok(None)
}

/// Writes `claim` where no claim was (`etag` none) or over the one read at `etag`; the new
/// ETag if it landed.
async fn take(store: &dyn CheckpointStore, key: &str, claim: &Claim, etag: Option<ETag>) -> Result<Option<ETag>, StorageError> {
    let written = match etag {
        None => checkpoint::create_json(store, key, claim).await?,
        Some(etag) => checkpoint::replace_json(store, key, claim, &etag).await?,
    };
    Ok(match written {
        Written::Done(etag) => Some(etag),
        Written::Conflict => None,
    })
}

/// Extends the claim `owner` holds, if any (a poll of a running export).
pub async fn renew(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, now: OffsetDateTime) -> Result<(), StorageError> {
    renew_hinted(store, cluster, capacity, owner, now, None).await.map(|_| ())
}

/// [`renew`], looking first at the slot `hint` names; where the claim was renewed.
pub async fn renew_hinted(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, now: OffsetDateTime, hint: Option<Seen>) -> Result<Option<(u64, ETag)>, StorageError> {
    set(store, cluster, capacity, owner, Claim { owner: owner.to_owned(), expires_at: now + CLAIM_TTL }, hint).await
}

/// Gives up the claim `owner` holds, if any: it expires at once and names no owner, so a
/// renewal from a delivery that polled before the release (and renews after it) finds
/// nothing of its own to extend.
pub async fn release(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, now: OffsetDateTime) -> Result<(), StorageError> {
    release_hinted(store, cluster, capacity, owner, now, None).await.map(|_| ())
}

/// [`release`], looking first at the slot `hint` names; where a claim was given up.
pub async fn release_hinted(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, now: OffsetDateTime, hint: Option<Seen>) -> Result<Option<(u64, ETag)>, StorageError> {
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

async fn set(store: &dyn CheckpointStore, cluster: &str, capacity: u64, owner: &str, claim: Claim, hint: Option<Seen>) -> Result<Option<(u64, ETag)>, StorageError> {
    let hint = hint.filter(|(n, _)| *n < capacity.max(1));
    // The owner's claim as this process last wrote it, if nobody wrote the slot since.
    if let Some((n, Some(etag))) = &hint {
        if let Some(written) = take(store, &slot_key(cluster, *n), &claim, Some(etag.clone())).await? {
            return Ok(Some((*n, written)));
        }
    }
    // The hinted slot first, then every slot in order (the hinted one is read twice only
    // when the claim was not where the hint said).
    let order = hint.map(|(n, _)| n).into_iter().chain(0..capacity.max(1));
    for n in order {
        let key = slot_key(cluster, n);
        if let Some((held, etag)) = checkpoint::read_json::<Claim>(store, &key).await.map_err(record_to_storage)? {
            if held.owner == owner {
                // A lost race means the claim changed hands after expiring: nothing to do.
                return Ok(take(store, &key, &claim, Some(etag)).await?.map(|e| (n, e)));
            }
        }
    }
    Ok(None)
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

    /// Writes a rival's claim into a slot just before this process's first write lands
    /// there: the interleaving of two processes that scanned the same free slots.
    struct Rival {
        inner: MemoryCheckpointStore,
        rival: std::sync::Mutex<Option<String>>,
    }

    #[async_trait::async_trait]
    impl CheckpointStore for Rival {
        async fn read(&self, key: &str) -> Result<Option<checkpoint::Versioned>, StorageError> {
            self.inner.read(key).await
        }
        async fn create(&self, key: &str, value: &[u8]) -> Result<Written, StorageError> {
            self.rival_first(key).await;
            self.inner.create(key, value).await
        }
        async fn replace(&self, key: &str, value: &[u8], etag: &ETag) -> Result<Written, StorageError> {
            self.rival_first(key).await;
            self.inner.replace(key, value, etag).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.inner.delete(key).await
        }
    }

    impl Rival {
        async fn rival_first(&self, key: &str) {
            let Some(owner) = self.rival.lock().unwrap().take() else { return };
            let claim = Claim { owner, expires_at: T + CLAIM_TTL };
            let body = serde_json::to_vec(&claim).unwrap();
            match self.inner.read(key).await.unwrap() {
                Some(v) => assert!(matches!(self.inner.replace(key, &body, &v.etag).await.unwrap(), Written::Done(_))),
                None => assert!(matches!(self.inner.create(key, &body).await.unwrap(), Written::Done(_))),
            }
        }
    }

    /// Two exports ended together; both successors scan, see slots 0 and 1 free, and race
    /// for slot 0. The loser takes slot 1 rather than report every slot busy.
    #[tokio::test]
    async fn a_lost_race_for_a_free_slot_takes_the_next_free_one() {
        let store = Rival { inner: MemoryCheckpointStore::default(), rival: std::sync::Mutex::new(None) };
        // Slot 0 was given up (expired), slot 1 never written: both free.
        assert!(acquire(&store, C, 2, "job1/a/1/0", T).await.unwrap());
        release(&store, C, 2, "job1/a/1/0", T).await.unwrap();
        *store.rival.lock().unwrap() = Some("job1/a/1/8".into());
        let (n, _) = acquire_hinted(&store, C, 2, "job1/a/1/9", T, Hints::default()).await.unwrap().expect("slot 1 was free");
        assert_eq!(n, 1);
        assert!(store.rival.lock().unwrap().is_none(), "the rival took its slot first");
        assert!(!acquire(&store, C, 2, "job2/a/1/0", T).await.unwrap(), "both slots are held, once each");
        release(&store, C, 2, "job1/a/1/8", T).await.unwrap();
        assert!(acquire(&store, C, 2, "job2/a/1/0", T).await.unwrap(), "the rival held slot 0");
    }

    /// A hint's ETag is swapped at, never trusted: a slot written by anybody since this
    /// process's write is read, and a claim of another owner stays.
    #[tokio::test]
    async fn a_stale_hint_takes_nothing_from_another_owner() {
        let store = MemoryCheckpointStore::default();
        let (n, held) = acquire_hinted(&store, C, 1, "job1/a/1/0", T, Hints::default()).await.unwrap().unwrap();
        // Renewed on the ETag of its own write; that write's ETag is the next hint.
        let (m, renewed) = renew_hinted(&store, C, 1, "job1/a/1/0", T, Some((n, Some(held.clone())))).await.unwrap().unwrap();
        assert_eq!(m, n);
        // Released on it: the slot is free, and the release's ETag is a free hint.
        let (_, released) = release_hinted(&store, C, 1, "job1/a/1/0", T, Some((n, Some(renewed.clone())))).await.unwrap().unwrap();
        // Another process takes the slot meanwhile (it read the release).
        assert!(acquire(&store, C, 1, "job2/a/1/0", T).await.unwrap());
        // The stale free hint swaps nothing, and the slot is busy.
        let late = Hints { held: None, free: [Some((n, Some(released))), None] };
        assert_eq!(acquire_hinted(&store, C, 1, "job1/a/1/1", T, late).await.unwrap(), None);
        // A renewal or release on a stale held hint leaves the other owner's claim alone.
        assert_eq!(renew_hinted(&store, C, 1, "job1/a/1/0", T, Some((n, Some(held.clone())))).await.unwrap(), None);
        assert_eq!(release_hinted(&store, C, 1, "job1/a/1/0", T, Some((n, Some(renewed)))).await.unwrap(), None);
        assert!(!acquire(&store, C, 1, "job3/a/1/0", T).await.unwrap(), "job2's claim holds");
        // A fresh free hint is taken at once.
        let (_, given_up) = release_hinted(&store, C, 1, "job2/a/1/0", T, None).await.unwrap().unwrap();
        let fresh = Hints { held: None, free: [Some((n, Some(given_up))), None] };
        assert_eq!(acquire_hinted(&store, C, 1, "job1/a/1/1", T, fresh).await.unwrap().map(|(n, _)| n), Some(n));
        assert!(!acquire(&store, C, 1, "job3/a/1/0", T).await.unwrap(), "job1/a/1/1 holds it");
    }
}
