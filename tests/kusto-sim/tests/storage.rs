//! Export and ingestion through blob URLs (an in-memory blob store here; the Azurite round
//! trip lives in the root crate's tests), capacity throttling and export faults. The exported
//! Parquet is also read by pyarrow, an independent reader.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kusto_sim::blob::MemoryBlobStore;
use kusto_sim::seed::sample_rows;
use kusto_sim::{Cluster, ClusterConfig, Column, CommandKind, Fault, Frame, ScalarType, SeedExtent, Value};

const DIR: &str = "https://acct.blob.core.windows.net/staging/job1/block1?sv=2024&sig=SECRET";

async fn cluster(config: ClusterConfig) -> (Cluster, Arc<MemoryBlobStore>) {
    let c = Cluster::start("storage", config).await.unwrap();
    let store = Arc::new(MemoryBlobStore::default());
    c.set_blob_store(store.clone());
    (c, store)
}

fn all_types() -> Vec<Column> {
    ScalarType::ALL.iter().map(|t| Column::new(format!("c_{t}"), *t)).collect()
}

fn schema(cols: &[Column]) -> String {
    cols.iter().map(|c| format!("{}:{}", c.name, c.ty)).collect::<Vec<_>>().join(", ")
}

fn text(v: &Value) -> String {
    kusto_sim::kql::functions::to_text(v)
}

/// Seeds a table with every scalar type, nulls included, over three extents.
fn seed_all_types(c: &Cluster, table: &str, cols: &[Column]) -> Vec<Vec<Value>> {
    c.command("db", &format!(".create table {table} ({})", schema(cols))).unwrap();
    let mut all = Vec::new();
    for (i, n) in [10usize, 15, 5].iter().enumerate() {
        let mut rows = sample_rows(cols, all.len(), *n);
        if i == 2 {
            rows.push(vec![Value::Null; cols.len()]);
        }
        all.extend(rows.clone());
        c.seed_extent("db", table, SeedExtent { rows, creation_time: 0, ingestion_time: Some(1 + i as i64), tags: vec![] }).unwrap();
    }
    all
}

async fn wait(c: &Cluster, id: &str) -> Frame {
    for _ in 0..200 {
        let f = c.command("db", &format!(".show operations ({id})")).unwrap();
        let state = text(&f.rows[0].values[f.column_index("State").unwrap()]);
        if state != "InProgress" {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("operation {id} did not finish");
}

fn sorted(mut rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    rows.sort_by_key(|r| format!("{r:?}"));
    rows
}

fn canonical(rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    rows.into_iter()
        .map(|r| r.into_iter().map(|v| match v {
            Value::Decimal(s) => Value::Decimal(kusto_sim::parquet_io::canonical_decimal(&s)),
            other => other,
        }).collect())
        .collect()
}

#[tokio::test]
async fn parquet_export_then_ingest_round_trips_every_type_the_documented_tables_allow() {
    let config = ClusterConfig { async_duration: Duration::from_millis(20), ..ClusterConfig::default() };
    let (c, store) = cluster(config).await;
    let cols = all_types();
    let rows = seed_all_types(&c, "Src", &cols);
    let f = c
        .command_async("db", &format!(".export async compressed to parquet (h'{DIR}') with (namePrefix='blk', persistDetails=true, parquetDatetimePrecision='microsecond') <| Src"))
        .await
        .unwrap();
    let op = text(&f.rows[0].values[0]);
    let status = wait(&c, &op).await;
    assert_eq!(text(&status.rows[0].values[status.column_index("State").unwrap()]), "Completed");
    let details = c.command("db", &format!(".show operation {op} details")).unwrap();
    assert_eq!(details.rows.len(), 3, "per_shard: one file per source extent");
    let paths: Vec<String> = details.rows.iter().map(|r| text(&r.values[0])).collect();
    assert!(paths.iter().all(|p| p.starts_with("https://acct.blob.core.windows.net/staging/job1/block1/blk_") && !p.contains("SECRET")));
    let records: i64 = details.rows.iter().map(|r| r.values[1].as_i64().unwrap()).sum();
    assert_eq!(records, rows.len() as i64);
    assert_eq!(store.names().len(), 3);

    // By the documented conversion table nothing ingests timespan (written as INT64 ticks)
    // or guid (written as UTF8) back: the destination here has every other type.
    let carried: Vec<Column> = cols.iter().filter(|c| !matches!(c.ty, ScalarType::Timespan | ScalarType::Guid)).cloned().collect();
    c.command("db", &format!(".create table Dst ({})", schema(&carried))).unwrap();
    let sources = paths.iter().map(|p| format!("h'{p}?sv=2024&sig=READ'")).collect::<Vec<_>>().join(", ");
    let f = c
        .command_async("db", &format!(".ingest async into table Dst ({sources}) with (format='parquet', creationTime='2020-02-02', tags='[\"drop-by:b1\"]')"))
        .await
        .unwrap();
    let status = wait(&c, &text(&f.rows[0].values[0])).await;
    assert_eq!(text(&status.rows[0].values[status.column_index("State").unwrap()]), "Completed", "{status:?}");
    let back = c.query("db", "Dst").unwrap().values();
    let names = carried.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
    let source = c.query("db", &format!("Src | project {names}")).unwrap().values();
    assert_eq!(source.len(), rows.len());
    assert_eq!(sorted(back), sorted(canonical(source)), "every value, null and type survives");
    let extents = c.extents("db", "Dst").unwrap();
    assert_eq!(extents.len(), 1);
    assert_eq!(extents[0].tags, vec!["drop-by:b1"]);
    assert_eq!(extents[0].min_created_on, kusto_sim::model::value::parse_datetime("2020-02-02").unwrap());

    // An independent reader: pyarrow sees the documented Parquet types and the same values.
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let python = repo.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: python3 -m venv .venv && .venv/bin/pip install -r tests/kusto-sim/python/requirements.txt", python.display());
    let dir = std::env::temp_dir().join(format!("kusto-sim-parquet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("export.parquet");
    let blobs = store.blobs.lock().unwrap().clone();
    let (_, first) = blobs.iter().next().unwrap();
    std::fs::write(&file, first).unwrap();
    // Read as stored (ticks as long, guid as text), then typed back for the comparison.
    let stored: Vec<Column> = cols
        .iter()
        .map(|c| match c.ty {
            ScalarType::Timespan => Column::new(c.name.clone(), ScalarType::Long),
            ScalarType::Guid => Column::new(c.name.clone(), ScalarType::String),
            _ => c.clone(),
        })
        .collect();
    let typed = |rows: Vec<Vec<Value>>| -> Vec<Vec<Value>> {
        rows.into_iter()
            .map(|r| {
                r.into_iter()
                    .zip(&cols)
                    .map(|(v, c)| match (v, c.ty) {
                        (Value::Long(t), ScalarType::Timespan) => Value::Timespan(t),
                        (Value::String(g), ScalarType::Guid) => Value::Guid(g.parse().unwrap()),
                        (v, _) => v,
                    })
                    .collect()
            })
            .collect()
    };
    let first_rows = sorted(typed(kusto_sim::parquet_io::read_parquet(first.clone(), &stored).unwrap()));
    let expected_json = serde_json::Value::Array(
        first_rows.iter().map(|r| serde_json::Value::Array(r.iter().map(|v| v.to_json()).collect())).collect(),
    );
    let expect_path = dir.join("expected.json");
    std::fs::write(&expect_path, expected_json.to_string()).unwrap();
    let script = repo.join("tests/kusto-sim/python/check_parquet.py");
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(python).arg(script).arg(&file).arg(&expect_path).output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pyarrow check failed\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().last(), Some("OK"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn by_the_documented_tables_timespan_and_guid_do_not_survive_parquet() {
    let (c, _store) = cluster(ClusterConfig::default()).await;
    let cols = all_types();
    seed_all_types(&c, "Src", &cols);
    let f = c.command_async("db", &format!(".export to parquet (h'{DIR}') with (distribution='single') <| Src")).await.unwrap();
    assert_eq!(f.rows.len(), 1);
    let path = text(&f.rows[0].values[0]);
    c.command("db", &format!(".create table Dst ({})", schema(&cols))).unwrap();
    let e = c.command_async("db", &format!(".ingest into table Dst (h'{path}') with (format='parquet')")).await.unwrap_err();
    assert_eq!(e.status, 400);
    assert!(e.detail.contains("cannot be ingested into column"), "{}", e.detail);
    assert_eq!(c.query("db", "Dst | count").unwrap().rows[0].values[0], Value::Long(0), "a failed ingestion adds nothing");
    // CSV carries every type as text.
    let f = c.command_async("db", &format!(".export to csv (h'{DIR}') with (namePrefix='csv', distribution='single') <| Src")).await.unwrap();
    let path = text(&f.rows[0].values[0]);
    c.command_async("db", &format!(".ingest into table Dst (h'{path}') with (format='csv')")).await.unwrap();
    let a = c.query("db", "Src").unwrap().values();
    let b = c.query("db", "Dst").unwrap().values();
    assert_eq!(sorted(canonical(a)), sorted(canonical(b)));
}

#[tokio::test]
async fn exports_beyond_capacity_are_throttled_and_partial_failures_leave_blobs() {
    let config = ClusterConfig { async_duration: Duration::from_millis(300), export_capacity: 1, ..ClusterConfig::default() };
    let (c, store) = cluster(config).await;
    let cols = all_types();
    seed_all_types(&c, "Src", &cols);
    let cmd = format!(".export async to parquet (h'{DIR}') <| Src");
    let first = c.command_async("db", &cmd).await.unwrap();
    let e = c.command_async("db", &cmd).await.unwrap_err();
    assert_eq!(e.status, 429);
    assert!(e.detail.contains("DataExport"));
    let cap = c.command("db", ".show capacity").unwrap();
    let export_row = cap.rows.iter().find(|r| r.values[0] == Value::String("DataExport".into())).unwrap();
    assert_eq!(export_row.values[2], Value::Long(1), "Consumed");
    wait(&c, &text(&first.rows[0].values[0])).await;
    let before = store.names().len();
    c.script_fault(Some(CommandKind::Export), Fault::ExportPartialFailure, 1);
    let f = c.command_async("db", &cmd).await.unwrap();
    let status = wait(&c, &text(&f.rows[0].values[0])).await;
    assert_eq!(text(&status.rows[0].values[status.column_index("State").unwrap()]), "Failed");
    assert_eq!(status.rows[0].values[status.column_index("ShouldRetry").unwrap()], Value::Bool(true));
    let left = store.names().len() - before;
    assert!((1..3).contains(&left), "partial artifacts remain ({left})");
    let e = c.command("db", &format!(".show operation {} details", text(&f.rows[0].values[0]))).unwrap_err();
    assert_eq!(e.status, 400, "a failed export has no details to use");
}

#[tokio::test]
async fn ingestion_faults_apply_to_blob_ingestion() {
    let (c, _store) = cluster(ClusterConfig { async_duration: Duration::from_millis(10), ..ClusterConfig::default() }).await;
    c.command("db", ".create table T (a:long)").unwrap();
    c.command("db", ".set-or-append S <| print a = 1").unwrap();
    let f = c.command_async("db", &format!(".export to csv (h'{DIR}') <| S")).await.unwrap();
    let path = text(&f.rows[0].values[0]);
    c.script_fault(Some(CommandKind::Ingest), Fault::DuplicateIngestion, 1);
    c.command_async("db", &format!(".ingest into table T (h'{path}') with (format='csv')")).await.unwrap();
    assert_eq!(c.query("db", "T | count").unwrap().rows[0].values[0], Value::Long(2));
    let e = c.command_async("db", ".ingest into table T (h'https://acct/none.csv?sig=S') with (format='csv')").await.unwrap_err();
    assert!(!e.permanent && !e.detail.contains("sig=S"), "{}", e.detail);
}

#[tokio::test]
async fn gzip_csv_export_ingests_back_by_ordinal_into_another_column_order() {
    let (c, store) = cluster(ClusterConfig { async_duration: Duration::from_millis(10), ..ClusterConfig::default() }).await;
    let cols = all_types();
    seed_all_types(&c, "Src", &cols);
    let f = c
        .command_async("db", &format!(".export compressed to csv (h'{DIR}') with (namePrefix='z', distribution='single') <| Src"))
        .await
        .unwrap();
    let path = text(&f.rows[0].values[0]);
    assert!(path.ends_with(".csv.gz"), "{path}");
    let blobs = store.blobs.lock().unwrap().clone();
    let data = blobs.values().next().unwrap();
    assert_eq!(&data[..2], &[0x1f, 0x8b], "gzip magic");
    // The destination has the columns reversed and one more: the mapping puts each back.
    let mut reversed: Vec<Column> = cols.iter().rev().cloned().collect();
    reversed.push(Column::new("extra", ScalarType::Long));
    c.command("db", &format!(".create table Dst ({})", schema(&reversed))).unwrap();
    let mapping = serde_json::Value::Array(
        cols.iter().enumerate().map(|(i, col)| serde_json::json!({"Column": col.name, "Properties": {"Ordinal": i.to_string()}})).collect(),
    )
    .to_string();
    // Without the mapping the fields land by position in the wrong columns: refused.
    assert!(c.command_async("db", &format!(".ingest into table Dst (h'{path}?sig=R') with (format='csv')")).await.is_err());
    c.command_async("db", &format!(".ingest into table Dst (h'{path}?sig=R') with (format='csv', ingestionMapping='{mapping}')")).await.unwrap();
    let names = cols.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
    let back = c.query("db", &format!("Dst | project {names}")).unwrap().values();
    assert_eq!(sorted(back), sorted(c.query("db", "Src").unwrap().values()), "every value, exactly");
    assert_eq!(c.query("db", "Dst | where isnull(extra) | count").unwrap().rows[0].values[0], Value::Long(31), "unmapped: null");
}
