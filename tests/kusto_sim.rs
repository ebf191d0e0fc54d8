//! The client against the Kusto simulator (tests/kusto-sim), over HTTP, with the production
//! token path (`EmulatorCredential` tokens whose audience the simulator checks): every builder
//! the copy uses is accepted and answers what the typed readers expect.

use std::sync::Arc;
use std::time::Duration;

use kusto_copy::auth::EmulatorCredential;
use kusto_copy::kusto::results::{self, OperationState};
use kusto_copy::kusto::{
    commands, ClientOptions, ClientRequestId, CursorWindow, ErrorKind, ExportRequest, Ident,
    IngestProperties, KustoClient, QueuedBlob, RetryPolicy, SecretUrl, UserQuery,
};
use kusto_sim::{Cluster, ClusterConfig, Column, Fault, ScalarType, SeedExtent, SeedPlan, Value};

const DB: &str = "db";
const HOUR: i64 = 3600 * 10_000_000;
const DAY: i64 = 24 * HOUR;
/// 2024-01-01T00:00:00Z in 100 ns ticks since the Unix epoch, the simulator's clock unit.
const JAN_2024: i64 = 1_704_067_200 * 10_000_000;

fn client(cluster: &Cluster) -> KustoClient {
    let options = ClientOptions {
        retry: RetryPolicy {
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_attempts: 4,
            max_retry_after: Duration::from_secs(5),
            ..RetryPolicy::default()
        },
        ..ClientOptions::default()
    };
    KustoClient::new(cluster.url(), Arc::new(EmulatorCredential::default()), options).unwrap()
}

fn id(step: &str) -> ClientRequestId {
    ClientRequestId::for_step(step)
}

async fn seeded() -> (Cluster, KustoClient) {
    let cluster = Cluster::start("src", ClusterConfig::default()).await.unwrap();
    cluster
        .seed_table(
            DB,
            "Events",
            &[
                Column::new("Id", ScalarType::Long),
                Column::new("Name", ScalarType::String),
                Column::new("When", ScalarType::DateTime),
            ],
            &SeedPlan {
                rows: 100,
                extents: 4,
                first_creation: JAN_2024,
                creation_step: DAY,
                first_ingestion: Some(JAN_2024 + 40 * DAY),
                ingestion_step: HOUR,
            },
        )
        .unwrap();
    let client = client(&cluster);
    (cluster, client)
}

#[tokio::test]
async fn planning_queries() {
    let (_cluster, client) = seeded().await;
    let events = Ident::new("Events").unwrap();

    let cursor = results::cursor(&client.execute(DB, &commands::cursor_current(), &id("plan")).await.unwrap()).unwrap();
    assert!(!cursor.is_empty());

    let window = CursorWindow { from: None, to: cursor.clone() };
    let bins = commands::row_counts_by_ingestion_bin(&events, &window, None, Duration::from_secs(3600)).unwrap();
    let bins = results::row_count_bins(&client.execute(DB, &bins, &id("plan")).await.unwrap()).unwrap();
    assert_eq!(bins.iter().map(|b| b.rows).sum::<i64>(), 100);
    assert_eq!(bins.len(), 4, "one bin per seeded extent: {bins:?}");
    assert!(bins.iter().all(|b| b.bin.is_some() && b.extent_id.is_some()));

    let filtered = UserQuery::new("| where Id % 2 == 0").unwrap();
    let bins = commands::row_counts_by_ingestion_bin(&events, &window, Some(&filtered), Duration::from_secs(3600)).unwrap();
    let total: i64 = results::row_count_bins(&client.execute(DB, &bins, &id("plan")).await.unwrap())
        .unwrap()
        .iter()
        .map(|b| b.rows)
        .sum();
    assert!(total > 0 && total < 100, "{total}");

    // An empty window: nothing after the current cursor.
    let empty = CursorWindow { from: Some(cursor.clone()), to: cursor };
    let bins = commands::row_counts_by_ingestion_bin(&events, &empty, None, Duration::from_secs(3600)).unwrap();
    assert!(results::row_count_bins(&client.execute(DB, &bins, &id("plan")).await.unwrap()).unwrap().is_empty());

    let extents = results::extents(
        &client.execute(DB, &commands::show_extents(&events, None).unwrap(), &id("plan")).await.unwrap(),
    )
    .unwrap();
    assert_eq!(extents.len(), 4);
    assert_eq!(extents.iter().map(|e| e.row_count).sum::<i64>(), 100);
    assert!(extents.iter().all(|e| e.min_created_on.is_some()));

    let capacity = results::capacities(&client.execute(DB, &commands::show_capacity(), &id("plan")).await.unwrap()).unwrap();
    let export = capacity.iter().find(|c| c.resource == "DataExport").expect("DataExport capacity");
    assert_eq!(export.total, 2);
}

#[tokio::test]
async fn staging_table_lifecycle_and_commit() {
    let (cluster, client) = seeded().await;
    let events = Ident::new("Events").unwrap();
    let stage = Ident::new("kc-Events-0001").unwrap();
    let tag = "drop-by:kc-block-1-attempt-1";

    let run = |c: commands::Command| {
        let client = client.clone();
        async move { client.execute(DB, &c, &id("commit")).await }
    };
    run(commands::create_table_based_on(&stage, &events, Some("kc")).unwrap()).await.unwrap();
    // ifnotexists: a repeat is harmless.
    run(commands::create_table_based_on(&stage, &events, Some("kc")).unwrap()).await.unwrap();
    run(commands::disable_merges(&stage).unwrap()).await.unwrap();
    run(commands::delete_partitioning_policy(&stage)).await.unwrap();
    run(commands::delete_extent_tags_retention_policy(&stage)).await.unwrap();
    let tables = results::table_names(&run(commands::show_tables()).await.unwrap()).unwrap();
    assert!(tables.contains(&"kc-Events-0001".to_string()), "{tables:?}");

    // An ingested block: one tagged extent with the source's creation time.
    let rows: Vec<Vec<Value>> = (0..10)
        .map(|i| vec![Value::Long(1000 + i), Value::String(format!("n{i}")), Value::Null])
        .collect();
    cluster
        .seed_extent(
            DB,
            stage.as_str(),
            SeedExtent { rows, creation_time: JAN_2024, ingestion_time: None, tags: vec![tag.to_string()] },
        )
        .unwrap();
    let tagged = results::extents(&run(commands::show_extents(&stage, Some(tag)).unwrap()).await.unwrap()).unwrap();
    assert_eq!(tagged.len(), 1);
    assert!(tagged[0].has_tag(tag));
    assert_eq!(tagged[0].row_count, 10);
    assert_eq!(tagged[0].min_created_on, Some(time::macros::datetime!(2024-01-01 00:00 UTC)));

    // Commit: move exactly the tagged extents, async, and follow the operation.
    let op = results::operation_id(&run(commands::move_extents_with_tag(&stage, &events, tag, true).unwrap()).await.unwrap())
        .unwrap();
    let mut state = OperationState::InProgress;
    for _ in 0..100 {
        let ops = results::operations(&run(commands::show_operations(&[op]).unwrap()).await.unwrap()).unwrap();
        state = ops.into_iter().find(|o| o.id == op).expect("operation listed").state;
        if !state.is_pending() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, OperationState::Completed);
    let moved = results::extents(&run(commands::show_extents(&events, Some(tag)).unwrap()).await.unwrap()).unwrap();
    assert_eq!(moved.iter().filter(|e| e.has_tag(tag)).map(|e| e.row_count).sum::<i64>(), 10);
    // The moved extent kept its creation time: copied data keeps its age.
    assert!(moved.iter().all(|e| e.min_created_on == Some(time::macros::datetime!(2024-01-01 00:00 UTC))));
    assert!(cluster.extents(DB, stage.as_str()).unwrap().is_empty());

    // Then the tag goes, so the moved extents can merge with the rest.
    run(commands::drop_extent_tags(&events, &[tag], None).unwrap()).await.unwrap();
    let still = results::extents(&run(commands::show_extents(&events, Some(tag)).unwrap()).await.unwrap()).unwrap();
    assert!(still.iter().all(|e| !e.has_tag(tag)), "{still:?}");

    run(commands::drop_table(&stage)).await.unwrap();
    run(commands::drop_table(&stage)).await.unwrap();
    let tables = results::table_names(&run(commands::show_tables()).await.unwrap()).unwrap();
    assert!(!tables.contains(&"kc-Events-0001".to_string()));
}

#[tokio::test]
async fn stray_extents_are_dropped_by_tag() {
    let (cluster, client) = seeded().await;
    let stage = Ident::new("Events").unwrap();
    let tag = "drop-by:kc-stray";
    for _ in 0..2 {
        cluster
            .seed_extent(
                DB,
                "Events",
                SeedExtent {
                    rows: vec![vec![Value::Long(1), Value::Null, Value::Null]],
                    creation_time: JAN_2024,
                    ingestion_time: None,
                    tags: vec![tag.to_string()],
                },
            )
            .unwrap();
    }
    assert_eq!(cluster.extents(DB, "Events").unwrap().len(), 6);
    let c = commands::drop_extents_with_tag(&stage, tag).unwrap();
    client.execute(DB, &c, &id("ingest")).await.unwrap();
    let left = cluster.extents(DB, "Events").unwrap();
    assert_eq!(left.len(), 4);
    assert!(left.iter().all(|e| !e.tags.iter().any(|t| t == tag)));
}

#[tokio::test]
async fn simulator_faults_meet_the_retry_rules() {
    let (cluster, client) = seeded().await;
    let events = Ident::new("Events").unwrap();

    // Throttling and 5xx before the request runs: retried until it works.
    cluster.script_fault(None, Fault::Throttle, 1);
    cluster.script_fault(None, Fault::ServerError(503), 1);
    cluster.script_fault(None, Fault::ConnectionDrop, 1);
    let answer = client.execute(DB, &commands::show_extents(&events, None).unwrap(), &id("plan")).await.unwrap();
    assert_eq!(results::extents(&answer).unwrap().len(), 4);

    // A move whose answer is lost after it ran is not sent again by the client.
    let dest = Ident::new("Dest").unwrap();
    client
        .execute(DB, &commands::create_table_based_on(&dest, &events, None).unwrap(), &id("commit"))
        .await
        .unwrap();
    let extent_ids: Vec<uuid::Uuid> = cluster.extents(DB, "Events").unwrap().iter().map(|e| e.id).collect();
    cluster.script_fault(None, Fault::DropAfterExecution, 1);
    let err = client
        .execute(DB, &commands::move_extents(&events, &dest, &extent_ids[..1], false).unwrap(), &id("commit"))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::ConnectionLost), "{err}");
    assert!(err.may_have_executed());
    // It did run, exactly once.
    assert_eq!(cluster.extents(DB, "Dest").unwrap().len(), 1);
    assert_eq!(cluster.extents(DB, "Events").unwrap().len(), 3);
}

#[tokio::test]
async fn a_wrong_audience_is_refused_permanently() {
    let (cluster, _) = seeded().await;
    let options = ClientOptions {
        token_scope: Some("https://kusto.kusto.windows.net/.default".into()),
        ..ClientOptions::default()
    };
    let client = KustoClient::new(cluster.url(), Arc::new(EmulatorCredential::default()), options).unwrap();
    let err = client.execute(DB, &commands::show_tables(), &id("plan")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized);
    assert_eq!(err.status, Some(401));
    assert!(!err.is_transient());
}

/// Counting rows by tag with `extent_tags()` and `set_has_element()`.
#[tokio::test]
async fn rows_are_counted_by_extent_tag() {
    let (cluster, client) = seeded().await;
    let events = Ident::new("Events").unwrap();
    let stage = Ident::new("kc-Events-0002").unwrap();
    let tag = "drop-by:kc-block-2-attempt-1";
    let c = commands::create_table_based_on(&stage, &events, Some("kc")).unwrap();
    client.execute(DB, &c, &id("ingest")).await.unwrap();
    cluster
        .seed_extent(
            DB,
            stage.as_str(),
            SeedExtent {
                rows: vec![vec![Value::Long(1), Value::Null, Value::Null]; 3],
                creation_time: JAN_2024,
                ingestion_time: None,
                tags: vec![tag.to_string()],
            },
        )
        .unwrap();
    let c = commands::count_rows_with_tag(&stage, tag).unwrap();
    let count = results::count(&client.execute(DB, &c, &id("ingest")).await.unwrap()).unwrap();
    assert_eq!(count, 3);
}

async fn wait_for(client: &KustoClient, op: uuid::Uuid) -> results::Operation {
    for _ in 0..200 {
        let c = commands::show_operations(&[op]).unwrap();
        let ops = results::operations(&client.execute(DB, &c, &id("wait")).await.unwrap()).unwrap();
        let found = ops.into_iter().find(|o| o.id == op).expect("operation listed");
        if !found.state.is_pending() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("operation {op} did not finish");
}

/// Export a block, then ingest its files both ways (direct `.ingest async` and the ingest-v2
/// REST API), each with a tag and the block's creation time; all through the client.
#[tokio::test]
async fn export_then_ingest_both_routes() {
    let (cluster, client) = seeded().await;
    let store = Arc::new(kusto_sim::blob::MemoryBlobStore::default());
    cluster.set_blob_store(store.clone());
    let events = Ident::new("Events").unwrap();

    let cursor = results::cursor(&client.execute(DB, &commands::cursor_current(), &id("plan")).await.unwrap()).unwrap();
    let window = CursorWindow { from: None, to: cursor };
    let folder = SecretUrl::parse("https://acct.blob.core.windows.net/staging/job1/block1?sv=2024&sig=WRITESECRET").unwrap();
    let export = commands::export_parquet(&ExportRequest {
        table: &events,
        window: &window,
        range: None,
        user_query: Some(&UserQuery::new("| where isnotnull(Id)").unwrap()),
        destinations: std::slice::from_ref(&folder),
        name_prefix: "b1",
    })
    .unwrap();
    let op = results::operation_id(&client.execute(DB, &export, &id("export")).await.unwrap()).unwrap();
    assert_eq!(wait_for(&client, op).await.state, OperationState::Completed);
    let details = client.execute(DB, &commands::show_operation_details(op), &id("export")).await.unwrap();
    let blobs = results::exported_blobs(&details).unwrap();
    assert!(!blobs.is_empty());
    assert!(blobs.iter().all(|b| !b.path.contains("WRITESECRET")), "{blobs:?}");
    let exported: i64 = blobs.iter().map(|b| b.records).sum();
    assert!(exported > 0 && exported <= 100, "{exported}");
    let readable: Vec<SecretUrl> = blobs
        .iter()
        .map(|b| SecretUrl::parse(&format!("{}?sv=2024&sig=READSECRET", b.path)).unwrap())
        .collect();

    let created = time::macros::datetime!(2023-06-01 00:00 UTC);
    // Route 1: `.ingest async into` on the engine endpoint.
    let direct = Ident::new("kc-direct").unwrap();
    client.execute(DB, &commands::create_table_based_on(&direct, &events, None).unwrap(), &id("ingest")).await.unwrap();
    let props = IngestProperties {
        creation_time: Some(created),
        tags: vec!["drop-by:kc-direct-1".into()],
        ..IngestProperties::parquet()
    };
    let ingest = commands::ingest_async(&direct, &readable, &props).unwrap();
    let op = results::operation_id(&client.execute(DB, &ingest, &id("ingest")).await.unwrap()).unwrap();
    assert_eq!(wait_for(&client, op).await.state, OperationState::Completed);
    let extents = results::extents(
        &client.execute(DB, &commands::show_extents(&direct, Some("drop-by:kc-direct-1")).unwrap(), &id("ingest")).await.unwrap(),
    )
    .unwrap();
    assert_eq!(extents.iter().map(|e| e.row_count).sum::<i64>(), exported);
    assert!(extents.iter().all(|e| e.min_created_on == Some(created) && e.has_tag("drop-by:kc-direct-1")));

    // Route 2: the ingest-v2 REST API (served on the same port for a loopback cluster).
    let queued = Ident::new("kc-queued").unwrap();
    client.execute(DB, &commands::create_table_based_on(&queued, &events, None).unwrap(), &id("ingest")).await.unwrap();
    let db = Ident::new(DB).unwrap();
    let items: Vec<QueuedBlob> = readable
        .iter()
        .map(|url| QueuedBlob { url: url.clone(), source_id: uuid::Uuid::new_v4(), raw_size: None })
        .collect();
    let props = IngestProperties { tags: vec!["drop-by:kc-queued-1".into()], ..props };
    let operation = client.queue_ingestion(&db, &queued, &items, &props, &id("ingest")).await.unwrap();
    let mut status = client.ingestion_status(&db, &queued, &operation, &id("ingest")).await.unwrap();
    for _ in 0..200 {
        if status.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = client.ingestion_status(&db, &queued, &operation, &id("ingest")).await.unwrap();
    }
    assert!(status.is_finished(), "{status:?}");
    assert_eq!(status.succeeded, items.len() as u64, "{status:?}");
    assert_eq!(status.blobs.len(), items.len());
    assert!(status.blobs.iter().all(|b| b.state == kusto_copy::kusto::BlobState::Succeeded));
    assert!(!format!("{status:?}").contains("READSECRET"));
    let extents = results::extents(
        &client.execute(DB, &commands::show_extents(&queued, Some("drop-by:kc-queued-1")).unwrap(), &id("ingest")).await.unwrap(),
    )
    .unwrap();
    assert_eq!(extents.iter().map(|e| e.row_count).sum::<i64>(), exported);
    assert!(extents.iter().all(|e| e.min_created_on == Some(created)));
    assert_eq!(store.names().len(), blobs.len());
}

/// `hash_xxhash64` gives the docs' examples; a content digest (kusto::digest) of two tables
/// that differ in one value a count cannot see differs, and names the column, per type.
#[tokio::test]
async fn content_digests_reproduce_the_docs_and_tell_apart_what_a_count_cannot() {
    use kusto_copy::kusto::digest::{content_digest, read_digest, DigestRows};
    use kusto_copy::kusto::KustoType;
    let cluster = Cluster::start("digest", ClusterConfig::default()).await.unwrap();
    let client = client(&cluster);
    let examples = cluster.query(DB, "print h = hash_xxhash64('World'), m = hash_xxhash64('World', 100)").unwrap().values();
    assert_eq!(examples, vec![vec![Value::Long(1_846_988_464_401_551_951), Value::Long(51)]]);

    let dt = |t: &str| Value::DateTime(kusto_sim::model::value::parse_datetime(t).unwrap());
    let dynamic = |t: &str| Value::Dynamic(serde_json::from_str(t).unwrap());
    let columns: Vec<kusto_copy::kusto::Column> = [("Id", KustoType::Long), ("T", KustoType::DateTime), ("R", KustoType::Real), ("Dyn", KustoType::Dynamic), ("S", KustoType::String)]
        .into_iter()
        .map(|(n, k)| kusto_copy::kusto::Column { name: n.into(), kind: k })
        .collect();
    let row = |column: usize, value: Value| {
        let mut r = vec![Value::Long(1), dt("2024-01-01T00:00:00.1234567Z"), Value::Real(0.5), dynamic(r#"{"a":1}"#), Value::String("x".into())];
        r[column] = value;
        r
    };
    // (what, column, the source's value, staging's value)
    let variants: Vec<(&str, usize, Value, Value)> = vec![
        ("the 7th tick digit", 1, dt("2024-01-01T00:00:00.1234567Z"), dt("2024-01-01T00:00:00.1234568Z")),
        ("a null datetime", 1, dt("2024-01-01T00:00:00Z"), Value::Null),
        ("-0.0 for 0.0", 2, Value::Real(0.0), Value::Real(-0.0)),
        ("a property bag's key order", 3, dynamic(r#"{"a":1,"b":2}"#), dynamic(r#"{"b":2,"a":1}"#)),
        ("a dynamic null for a dynamic empty string", 3, dynamic(r#""""#), Value::Null),
        ("a dynamic string for a dynamic number", 3, dynamic("1"), dynamic(r#""1""#)),
        ("a trailing space", 4, Value::String("x".into()), Value::String("x ".into())),
    ];
    let mut n = 0;
    let mut digest = |value: Value, column: usize| {
        n += 1;
        let name = format!("T{n}");
        cluster.command(DB, &format!(".create table {name} (Id:long, T:datetime, R:real, Dyn:dynamic, S:string)")).unwrap();
        let extent = cluster.seed_extent(DB, &name, SeedExtent { rows: vec![row(column, value), row(0, Value::Long(2))], creation_time: JAN_2024, ingestion_time: Some(JAN_2024), tags: vec![] }).unwrap();
        (Ident::new(name).unwrap(), extent)
    };
    for (what, column, at_source, in_staging) in variants {
        let mut digests = Vec::new();
        for value in [at_source.clone(), at_source, in_staging] {
            let (table, extent) = digest(value, column);
            let cmd = content_digest(&DigestRows::StagingExtents { table: &table, extents: &[extent] }, &columns).unwrap();
            digests.push(read_digest(&client.execute(DB, &cmd, &id("digest")).await.unwrap(), &columns).unwrap());
        }
        assert_eq!(digests[0].difference(&digests[1]), None, "{what}: the same values digest the same in two tables");
        let why = digests[0].difference(&digests[2]).unwrap_or_else(|| panic!("{what}: not told apart"));
        assert!(why.contains(&format!("column {}", columns[column].name)), "{what}: {why}");
    }
}

/// A cluster that refuses tokens for its origin (401) and names another audience in its auth
/// metadata (`AzureAD.KustoServiceResourceId`): the client reads it, asks for that scope, and
/// keeps it for the engine and the ingest endpoints alike. A cluster that accepts its origin
/// never causes a metadata look.
#[tokio::test]
async fn a_refused_origin_audience_is_replaced_by_the_one_the_auth_metadata_names() {
    let cluster = Cluster::start("aud", ClusterConfig { audience: Some("https://kusto.kusto.windows.net".into()), ..ClusterConfig::default() }).await.unwrap();
    let kusto = client(&cluster);
    let tables = kusto.execute(DB, &commands::show_tables(), &id("tables")).await.expect("accepted with the metadata's audience");
    assert!(results::table_names(&tables).unwrap().is_empty());
    // Kept: the next request (and the ingest endpoint's) goes out with it at once.
    let status = kusto.ingestion_status(&Ident::new(DB).unwrap(), &Ident::new("T").unwrap(), "00000000-0000-0000-0000-000000000000", &id("status")).await;
    assert!(!matches!(&status, Err(e) if e.status == Some(401)), "{status:?}");

    // A cluster whose metadata names a resource that is not Kusto: not used, the 401 stands.
    let odd = Cluster::start("odd", ClusterConfig { audience: Some("https://storage.azure.com".into()), ..ClusterConfig::default() }).await.unwrap();
    let err = client(&odd).execute(DB, &commands::show_tables(), &id("tables")).await.unwrap_err();
    assert_eq!(err.status, Some(401), "{err}");
}
