//! Management commands, run in-process against a cluster.

use std::time::Duration;

use kusto_sim::model::value::{parse_datetime, TICKS_PER_DAY};
use kusto_sim::{Cluster, ClusterConfig, CommandKind, Fault, Frame, Value};

async fn cluster() -> Cluster {
    let config = ClusterConfig { async_duration: Duration::from_millis(50), ..ClusterConfig::default() };
    Cluster::start("cmd", config).await.unwrap()
}

fn cell<'a>(f: &'a Frame, row: usize, col: &str) -> &'a Value {
    &f.rows[row].values[f.column_index(col).unwrap_or_else(|| panic!("no column {col}"))]
}

fn text(v: &Value) -> String {
    kusto_sim::kql::functions::to_text(v)
}

async fn wait_for_operation(c: &Cluster, id: &Value) -> Frame {
    for _ in 0..100 {
        let f = c.command("db", &format!(".show operations ({})", text(id))).unwrap();
        if text(cell(&f, 0, "State")) != "InProgress" {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("operation {id:?} never finished");
}

#[tokio::test]
async fn tables_are_created_shown_and_dropped() {
    let c = cluster().await;
    let f = c.command("db", ".create table T (a:string, b:long) with (folder='f', docstring='d')").unwrap();
    assert_eq!(text(cell(&f, 0, "Schema")), "a:string, b:long");
    c.command("db", ".create table T (a:string, b:long)").unwrap();
    let e = c.command("db", ".create table T (a:string, b:int)").unwrap_err();
    assert_eq!(e.status, 400);
    c.command("db", ".create-merge table T (a:string, c:datetime)").unwrap();
    c.command("db", ".alter table T policy merge '{\"AllowMerge\": false}'").unwrap();
    c.command("db", ".alter table T policy update '[]'").unwrap();
    c.command("db", ".create table S based-on T with (folder='staging')").unwrap();
    c.command("db", ".create table S based-on T ifnotexists with (folder='other')").unwrap();
    let f = c.command("db", ".show table S details").unwrap();
    assert_eq!(text(cell(&f, 0, "Folder")), "staging");
    assert_eq!(*cell(&f, 0, "MergePolicy"), Value::Dynamic(serde_json::json!({"AllowMerge": false})));
    let f = c.command("db", ".show table S policy update").unwrap();
    assert_eq!(*cell(&f, 0, "Policy"), Value::Null, "based-on copies policies but the update policy");
    let f = c.command("db", ".show table S cslschema").unwrap();
    assert_eq!(text(cell(&f, 0, "Schema")), "a:string, b:long, c:datetime");
    c.command("db", ".alter-merge table T policy merge '{\"MaxRangeInHours\": 1}'").unwrap();
    let f = c.command("db", ".show table T policy merge").unwrap();
    let policy: serde_json::Value = serde_json::from_str(&text(cell(&f, 0, "Policy"))).unwrap();
    assert_eq!(policy, serde_json::json!({"AllowMerge": false, "MaxRangeInHours": 1}));
    c.command("db", ".delete table T policy merge").unwrap();
    let f = c.command("db", ".show tables").unwrap();
    assert_eq!(f.rows.len(), 2);
    c.command("db", ".drop table S").unwrap();
    assert_eq!(c.command("db", ".drop table S").unwrap_err().code, "BadRequest_TableNotFound");
    c.command("db", ".drop table S ifexists").unwrap();
    assert_eq!(c.command("nodb", ".show tables").unwrap_err().code, "BadRequest_DatabaseNotFound");
    let f = c.command("db", ".show cluster").unwrap();
    assert_eq!(f.rows.len(), 1);
    let f = c.command("db", ".show capacity").unwrap();
    assert!(f.rows.iter().any(|r| r.values[0] == Value::String("DataExport".into())));
}

#[tokio::test]
async fn inline_ingestion_and_set_or_append_make_tagged_extents() {
    let c = cluster().await;
    c.command("db", ".create table T (a:string, b:long)").unwrap();
    let f = c
        .command("db", ".ingest inline into table T with (creationTime='2020-05-01', tags='[\"drop-by:x\", \"ingest-by:k1\"]') <| \"q,uoted\",1\nb,2")
        .unwrap();
    assert_eq!(*cell(&f, 0, "RowCount"), Value::Long(2));
    let extents = c.extents("db", "T").unwrap();
    assert_eq!(extents.len(), 1);
    assert_eq!(extents[0].min_created_on, parse_datetime("2020-05-01").unwrap());
    assert_eq!(extents[0].tags, vec!["drop-by:x", "ingest-by:k1"]);
    // ingestIfNotExists skips data already ingested with that ingest-by tag.
    let f = c.command("db", ".ingest inline into table T with (ingestIfNotExists='[\"k1\"]') <| c,3").unwrap();
    assert!(f.rows.is_empty());
    assert_eq!(c.query("db", "T | count").unwrap().rows[0].values[0], Value::Long(2));
    let e = c.command("db", ".ingest inline into table T <| c,notanumber").unwrap_err();
    assert_eq!(e.status, 400);
    c.command("db", ".set-or-append T with (tags='[\"drop-by:y\"]') <| print a = 'z', b = 26").unwrap();
    c.command("db", ".set-or-append NewT <| T | where b > 1").unwrap();
    assert_eq!(c.query("db", "NewT | count").unwrap().rows[0].values[0], Value::Long(2));
    assert!(c.command("db", ".append Missing <| T").is_err());
    let f = c.command("db", ".show table T extents where tags has 'drop-by:y'").unwrap();
    assert_eq!(f.rows.len(), 1);
    assert_eq!(*cell(&f, 0, "RowCount"), Value::Long(1));
    let f = c.command("db", ".show table T extents where tags !has 'drop-by:y'").unwrap();
    assert_eq!(f.rows.len(), 1);
    assert_eq!(text(cell(&f, 0, "Tags")), "drop-by:x\r\ningest-by:k1");
    let listed = c.command("db", &format!(".show table T extents ({}, {})", extents[0].id, uuid::Uuid::new_v4())).unwrap();
    assert_eq!(listed.rows.len(), 1, "ids not in the table are simply absent");
    // With the IngestionTime policy off, rows have no ingestion time and cursors skip them.
    c.command("db", ".alter table T policy ingestiontime '{\"IsEnabled\": false}'").unwrap();
    c.command("db", ".ingest inline into table T <| nocursor,9").unwrap();
    let f = c.query("db", "T | where isnull(ingestion_time()) | project a").unwrap();
    assert_eq!(f.rows.len(), 1);
    assert_eq!(f.rows[0].values[0], Value::String("nocursor".into()));
    let f = c.query("db", "T | where cursor_after('') | count").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(3), "rows without ingestion time never match a cursor");
    c.command("db", ".delete table T policy ingestiontime").unwrap();
    // Creation times older than the soft-delete period are refused, like Kusto does.
    c.command("db", ".alter table T policy retention '{\"SoftDeletePeriod\": \"30.00:00:00\"}'").unwrap();
    let e = c.command("db", ".ingest inline into table T with (creationTime='2001-01-01') <| d,4").unwrap_err();
    assert_eq!(e.code, "BadRequest_CreationTimeEarlierThanSoftDeletePeriod");
}

#[tokio::test]
async fn move_extents_is_all_or_nothing_and_keeps_creation_time_and_tags() {
    let c = cluster().await;
    c.command("db", ".create table Dst (a:string, b:long)").unwrap();
    c.command("db", ".create table Stg (a:string, b:long)").unwrap();
    c.command("db", ".create table Other (a:string, b:int)").unwrap();
    c.command("db", ".ingest inline into table Stg with (creationTime='2021-01-01', tags='[\"drop-by:blk1\"]') <| a,1").unwrap();
    c.command("db", ".ingest inline into table Stg with (tags='[\"drop-by:blk2\"]') <| b,2").unwrap();
    let cursor = text(&c.query("db", "print cursor_current()").unwrap().rows[0].values[0]);
    let stg = c.extents("db", "Stg").unwrap();
    let missing = uuid::Uuid::new_v4();
    let e = c.command("db", &format!(".move extents from table Stg to table Dst ({}, {missing})", stg[0].id)).unwrap_err();
    assert_eq!(e.status, 400);
    assert_eq!(c.extents("db", "Stg").unwrap().len(), 2, "nothing moved");
    let e = c.command("db", &format!(".move extents from table Stg to table Other ({})", stg[0].id)).unwrap_err();
    assert!(e.detail.contains("schemas differ"), "{}", e.detail);
    let f = c
        .command("db", ".move extents to table Dst with (setNewIngestionTime=true) <| .show table Stg extents where tags has 'drop-by:blk1'")
        .unwrap();
    assert_eq!(f.rows.len(), 1);
    assert_eq!(text(cell(&f, 0, "OriginalExtentId")), stg[0].id.to_string());
    let dst = c.extents("db", "Dst").unwrap();
    assert_eq!(dst.len(), 1);
    assert_eq!(dst[0].min_created_on, parse_datetime("2021-01-01").unwrap());
    assert_eq!(dst[0].tags, vec!["drop-by:blk1"]);
    let f = c.query("db", &format!("Dst | where cursor_after('{cursor}') | count")).unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(1), "setNewIngestionTime makes moved rows visible to cursor readers");
    // Async move through the operations log.
    let f = c.command("db", &format!(".move async extents from table Stg to table Dst ({})", stg[1].id)).unwrap();
    let op = wait_for_operation(&c, cell(&f, 0, "OperationId")).await;
    assert_eq!(text(cell(&op, 0, "State")), "Completed");
    assert_eq!(text(cell(&op, 0, "Operation")), "ExtentsMove");
    let details = c.command("db", &format!(".show operation {} details", text(cell(&f, 0, "OperationId")))).unwrap();
    assert_eq!(details.rows.len(), 1);
    assert_eq!(c.extents("db", "Stg").unwrap().len(), 0);
    // The row count of a tag, as the copy engine checks it.
    let f = c.query("db", "['Dst']\n| where set_has_element(extent_tags(), 'drop-by:blk1')\n| count").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(1));
    let f = c.command("db", ".drop table Dst extent tags ('drop-by:blk1') with (extentCreatedOnFrom=datetime(2000-01-01), extentCreatedOnTo=datetime(2000-12-31))").unwrap();
    assert!(f.rows.is_empty(), "no extent created in that range");
    // Dropping a tag rewrites the extent under a new id.
    let before = c.extents("db", "Dst").unwrap();
    let f = c.command("db", ".drop table Dst extent tags ('drop-by:blk1')").unwrap();
    assert_eq!(f.rows.len(), 1);
    let after = c.extents("db", "Dst").unwrap();
    assert!(after.iter().all(|e| !e.tags.contains(&"drop-by:blk1".to_string())));
    assert!(!after.iter().any(|e| e.id == before[0].id));
    // Dropping extents by command.
    let f = c.command("db", ".drop extents <| .show table Dst extents where tags has 'drop-by:blk2'").unwrap();
    assert_eq!(f.rows.len(), 1);
    assert_eq!(c.query("db", "Dst | count").unwrap().rows[0].values[0], Value::Long(1));
    c.command("db", ".drop extents from Dst").unwrap();
    assert_eq!(c.query("db", "Dst | count").unwrap().rows[0].values[0], Value::Long(0));
}

#[tokio::test]
async fn operations_fail_expire_and_age_out() {
    let c = cluster().await;
    c.command("db", ".create table T (a:string)").unwrap();
    c.script_fault(Some(CommandKind::Ingest), Fault::IngestionFailure, 1);
    let f = c.command("db", ".set-or-append async T <| print a = 'x'").unwrap();
    let op = wait_for_operation(&c, cell(&f, 0, "OperationId")).await;
    assert_eq!(text(cell(&op, 0, "State")), "Failed");
    assert_eq!(*cell(&op, 0, "ShouldRetry"), Value::Bool(true));
    assert_eq!(c.query("db", "T | count").unwrap().rows[0].values[0], Value::Long(0));

    c.script_fault(Some(CommandKind::Ingest), Fault::DuplicateIngestion, 1);
    c.command("db", ".set-or-append T <| print a = 'y'").unwrap();
    assert_eq!(c.query("db", "T | count").unwrap().rows[0].values[0], Value::Long(2), "a duplicated ingestion adds the rows twice");

    c.script_fault(Some(CommandKind::Ingest), Fault::ExpireOperation, 1);
    let f = c.command("db", ".set-or-append async T <| print a = 'z'").unwrap();
    let id = text(cell(&f, 0, "OperationId"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.command("db", &format!(".show operations ({id})")).unwrap().rows.is_empty(), "the record expired");
    assert_eq!(c.query("db", "T | count").unwrap().rows[0].values[0], Value::Long(3), "but the work was done");

    let f = c.command("db", ".set-or-append async T <| print a = 'w'").unwrap();
    wait_for_operation(&c, cell(&f, 0, "OperationId")).await;
    c.advance_clock(Duration::from_secs(7 * 3600));
    let all = c.command("db", ".show operations").unwrap();
    assert!(all.rows.is_empty(), "records older than the retention are gone");
}

#[tokio::test]
async fn merge_fault_changes_extent_ids_unless_merges_are_off() {
    let c = cluster().await;
    c.command("db", ".create table T (a:string)").unwrap();
    c.command("db", ".create table Off (a:string)").unwrap();
    c.command("db", ".alter table Off policy merge '{\"AllowMerge\": false}'").unwrap();
    for t in ["T", "Off"] {
        c.command("db", &format!(".ingest inline into table {t} <| a")).unwrap();
        c.script_fault(Some(CommandKind::Ingest), Fault::MergeExtents, 1);
        c.command("db", &format!(".ingest inline into table {t} <| b")).unwrap();
    }
    let merged = c.extents("db", "T").unwrap();
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0].row_count, 2);
    assert_eq!(c.extents("db", "Off").unwrap().len(), 2);
    let f = c.query("db", "T | summarize dcount(extent_id())").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(1));
}

#[tokio::test]
async fn scripts_and_seeding() {
    let c = cluster().await;
    let f = c
        .command("db", ".execute database script <|\n.create table A (x:long)\n.create table A (x:string)\n.create table B (x:long)")
        .unwrap();
    let results: Vec<String> = f.rows.iter().map(|r| text(&r.values[3])).collect();
    assert_eq!(results, vec!["Completed", "Failed", "Skipped"]);
    let t0 = parse_datetime("2019-01-01").unwrap();
    let cols = vec![
        kusto_sim::Column::new("Id", kusto_sim::ScalarType::Long),
        kusto_sim::Column::new("Ts", kusto_sim::ScalarType::DateTime),
    ];
    let plan = kusto_sim::SeedPlan { rows: 1000, extents: 7, first_creation: t0, creation_step: TICKS_PER_DAY, first_ingestion: None, ingestion_step: 0 };
    c.seed_table("db", "Seeded", &cols, &plan).unwrap();
    let extents = c.extents("db", "Seeded").unwrap();
    assert_eq!(extents.len(), 7);
    assert_eq!(extents.iter().map(|e| e.row_count).sum::<usize>(), 1000);
    assert_eq!(extents[6].min_created_on, t0 + 6 * TICKS_PER_DAY);
    let f = c.query("db", "Seeded | where isnull(ingestion_time()) | count").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(1000));
    let f = c.query("db", "Seeded | summarize dcount(Id)").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(1000));
}

#[tokio::test]
async fn unknown_commands_and_missing_entities_are_bad_requests() {
    let c = cluster().await;
    assert_eq!(c.command("db", ".frobnicate").unwrap_err().status, 400);
    assert_eq!(c.command("db", ".show table Nope extents").unwrap_err().code, "BadRequest_TableNotFound");
    let id = uuid::Uuid::new_v4();
    assert_eq!(c.command("db", &format!(".show operation {id} details")).unwrap_err().code, "BadRequest_OperationNotFound");
    let e = c.command("db", ".ingest into table T (h'https://acct/c/f.parquet?sig=SECRET')").unwrap_err();
    assert!(!e.detail.contains("SECRET"));
}
