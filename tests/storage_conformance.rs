//! The checkpoint store's contract (see `src/storage/checkpoint.rs`), run against the
//! in-memory store and against Azurite over HTTPS with OAuth tokens: the same suite, so the
//! store the tests use and the store production uses cannot drift apart.

mod common;

use kc_test_stack::Azurite;
use kusto_copy::storage::checkpoint::{BlobCheckpointStore, CheckpointStore, ETag, MemoryCheckpointStore, Written};
use std::sync::Arc;

async fn conformance(store: Arc<dyn CheckpointStore>) {
    // Absent records read as None; listing an empty prefix is empty.
    assert_eq!(store.read("jobs/a/job.json").await.unwrap(), None);
    assert!(store.list("jobs/").await.unwrap().is_empty());

    // Create-if-absent, twice: the second is a conflict, even with the same bytes.
    let Written::Done(first) = store.create("jobs/a/job.json", b"v1").await.unwrap() else { panic!("first create must win") };
    assert_eq!(store.create("jobs/a/job.json", b"v1").await.unwrap(), Written::Conflict);
    assert_eq!(store.create("jobs/a/job.json", b"other").await.unwrap(), Written::Conflict);
    let read = store.read("jobs/a/job.json").await.unwrap().unwrap();
    assert_eq!((read.value.as_slice(), &read.etag), (&b"v1"[..], &first));

    // Replace-if-ETag-matches; the old ETag is then stale.
    let Written::Done(second) = store.replace("jobs/a/job.json", b"v2", &first).await.unwrap() else { panic!("fresh etag must win") };
    assert_ne!(first, second);
    assert_eq!(store.replace("jobs/a/job.json", b"v3", &first).await.unwrap(), Written::Conflict);
    assert_eq!(store.read("jobs/a/job.json").await.unwrap().unwrap().value, b"v2");
    // Replacing what does not exist is a conflict, not a create.
    assert_eq!(store.replace("jobs/none/job.json", b"x", &second).await.unwrap(), Written::Conflict);
    assert_eq!(store.read("jobs/none/job.json").await.unwrap(), None);

    // Listing by prefix, in order.
    store.create("jobs/b/1.json", b"x").await.unwrap();
    store.create("jobs/b/2.json", b"x").await.unwrap();
    store.create("other/c.json", b"x").await.unwrap();
    assert_eq!(store.list("jobs/b/").await.unwrap(), vec!["jobs/b/1.json", "jobs/b/2.json"]);
    assert_eq!(store.list("jobs/").await.unwrap().len(), 3);

    // Delete; deleting again is fine.
    store.delete("jobs/b/1.json").await.unwrap();
    store.delete("jobs/b/1.json").await.unwrap();
    assert_eq!(store.read("jobs/b/1.json").await.unwrap(), None);
    assert_eq!(store.list("jobs/b/").await.unwrap(), vec!["jobs/b/2.json"]);

    // Concurrent creators: exactly one wins.
    let creators: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create("race/create.json", format!("writer {i}").as_bytes()).await.unwrap() })
        })
        .collect();
    let wins = futures::future::join_all(creators).await.into_iter().filter(|r| matches!(r.as_ref().unwrap(), Written::Done(_))).count();
    assert_eq!(wins, 1, "exactly one creator wins");

    // Concurrent replacers holding the same ETag: exactly one wins.
    let Written::Done(base) = store.create("race/replace.json", b"base").await.unwrap() else { panic!() };
    let replacers: Vec<_> = (0..8)
        .map(|i| {
            let (store, base) = (store.clone(), base.clone());
            tokio::spawn(async move { store.replace("race/replace.json", format!("writer {i}").as_bytes(), &base).await.unwrap() })
        })
        .collect();
    let results: Vec<Written> = futures::future::join_all(replacers).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|r| matches!(r, Written::Done(_))).count(), 1, "exactly one replacer wins: {results:?}");

    // No lost update: concurrent read-modify-write loops on a counter add up.
    store.create("race/counter.json", b"0").await.unwrap();
    let incrementers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    loop {
                        let current = store.read("race/counter.json").await.unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&current.value).unwrap().parse().unwrap();
                        if let Written::Done(_) = store.replace("race/counter.json", (n + 1).to_string().as_bytes(), &current.etag).await.unwrap() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    futures::future::join_all(incrementers).await.into_iter().for_each(Result::unwrap);
    assert_eq!(store.read("race/counter.json").await.unwrap().unwrap().value, b"20");

    // A made-up ETag never matches.
    assert_eq!(store.replace("race/counter.json", b"x", &ETag("\"0x0\"".into())).await.unwrap(), Written::Conflict);
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    conformance(Arc::new(MemoryCheckpointStore::default())).await;
}

#[tokio::test]
async fn a_prefixed_store_meets_the_contract_and_stays_in_its_prefix() {
    let inner: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpointStore::default());
    inner.create("outside.json", b"x").await.unwrap();
    conformance(Arc::new(kusto_copy::storage::checkpoint::PrefixedStore::new(inner.clone(), "kc/tracking"))).await;
    assert_eq!(inner.read("outside.json").await.unwrap().unwrap().value, b"x");
    assert!(inner.list("").await.unwrap().iter().all(|k| k == "outside.json" || k.starts_with("kc/tracking/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blob_store_on_azurite_meets_the_contract() {
    let azurite = Azurite::start();
    let clients = common::clients(&azurite);
    // A container that does not exist yet: the store creates it on first write.
    let container = clients.container_without_retries(&common::unique_name("ckpt")).unwrap();
    conformance(Arc::new(BlobCheckpointStore::new(container))).await;
}

#[tokio::test]
async fn a_wrong_token_audience_is_a_permanent_error_not_a_conflict() {
    use kusto_copy::storage::clients::{RetryBudget, StorageClients};
    // A credential whose tokens name another audience: Azurite must refuse them.
    #[derive(Debug)]
    struct WrongAudience;
    #[async_trait::async_trait]
    impl azure_core::credentials::TokenCredential for WrongAudience {
        async fn get_token(
            &self,
            _scopes: &[&str],
            _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            Ok(kusto_copy::auth::EmulatorCredential::default()
                .token_for("https://not-storage.example", time::OffsetDateTime::now_utc()))
        }
    }
    let azurite = Azurite::start();
    let clients = StorageClients::new(
        azurite.blob_endpoint().parse().unwrap(),
        azurite.queue_endpoint().parse().unwrap(),
        Some(Arc::new(WrongAudience)),
        Some(&azurite.ca_pem_path),
        RetryBudget::LOCAL,
    )
    .unwrap();
    let store = BlobCheckpointStore::new(clients.container_without_retries("denied").unwrap());
    let err = store.create("k", b"v").await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("401") || err.to_string().contains("403"), "{err}");
}
