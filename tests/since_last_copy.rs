//! "Copy since last copy" (issue 11): running a continuous job again copies what arrived
//! since its last iteration, exactly once, from the queue path and from `kc copy`.

mod common;

use common::copy::*;
use common::query_rows;
use kusto_copy::engine::copy::{ActivityState, CopyEngine};
use kusto_copy::engine::Engine;
use kusto_sim::{SeedExtent, SeedPlan, Value};
use std::sync::Arc;

/// `count` new rows with ids from `first_id`, ingested after everything before (`nth` > 0
/// orders the batches), in an extent created 30 days after the batch before: further apart
/// than a block may spread (a day), so each batch keeps its own creation time.
fn ingest_more(stack: &Stack, first_id: i64, count: i64, nth: i64) {
    let rows = (first_id..first_id + count)
        .map(|id| vec![Value::Long(id), Value::String(format!("late-{id}")), Value::DateTime(JAN_2024 + id * HOUR)])
        .collect();
    stack
        .source
        .seed_extent(DB, "Events", SeedExtent { rows, creation_time: JAN_2024 + 600 * DAY + nth * 30 * DAY, ingestion_time: Some(JAN_2024 + 700 * DAY + nth * HOUR), tags: vec![] })
        .unwrap();
}

fn continuous_request(stack: &Stack, job: &str, mode: &str) -> String {
    let mut r: serde_json::Value = serde_json::from_str(&request(stack, job, None)).unwrap();
    r["copyMode"] = serde_json::Value::String(mode.into());
    r.to_string()
}

fn ids_at_destination(stack: &Stack) -> Vec<i64> {
    query_rows(&stack.destination, DB, "Events | order by Id asc").0.into_keys().collect()
}

/// Submitting the job again (a request re-sent on the queue) after each iteration.
async fn run_again(engine: &Arc<CopyEngine>, text: &str) -> (u64, u64) {
    let job = submit(engine, text).await;
    let before = engine.copied_rows(&job).await.unwrap();
    let first = engine.start_job(&job).await.unwrap();
    let failures = kusto_copy::engine::local::run(engine.clone(), first, 4, |_| {}).await;
    assert!(failures.is_empty(), "{failures:?}");
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "without a period, each iteration completes: {activity:?}");
    (engine.copied_rows(&job).await.unwrap() - before, activity.iteration)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_and_new_copies_the_history_then_each_delta_once() {
    let stack = stack().await;
    seed(&stack);
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let text = continuous_request(&stack, "since-bn", "BackfillAndNew");

    assert_eq!(run_again(&engine, &text).await, (600, 1), "the history");
    assert_exact_rows(&stack, 600);

    ingest_more(&stack, 600, 300, 1);
    assert_eq!(run_again(&engine, &text).await, (300, 2), "the delta, from the last end cursor");
    assert_exact_rows(&stack, 900);

    ingest_more(&stack, 900, 50, 2);
    assert_eq!(run_again(&engine, &text).await, (50, 3));
    assert_exact_rows(&stack, 950);

    assert_eq!(run_again(&engine, &text).await, (0, 4), "nothing new: an empty iteration");
    assert_exact_rows(&stack, 950);
    assert_nothing_left(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_only_never_copies_what_was_there_before_its_first_run() {
    let stack = stack().await;
    seed(&stack);
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let text = continuous_request(&stack, "since-no", "NewOnly");

    assert_eq!(run_again(&engine, &text).await, (0, 1), "the first iteration only records the cursor");
    assert!(ids_at_destination(&stack).is_empty());

    ingest_more(&stack, 600, 120, 1);
    assert_eq!(run_again(&engine, &text).await, (120, 2));
    assert_eq!(ids_at_destination(&stack), (600..720).collect::<Vec<_>>(), "exactly the rows that arrived after the first run");
    assert_nothing_left(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_repeated_while_an_iteration_runs_changes_nothing() {
    let stack = stack().await;
    seed(&stack);
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let text = continuous_request(&stack, "since-dup", "BackfillAndNew");
    let job = submit(&engine, &text).await;
    let first = engine.start_job(&job).await.unwrap();
    // The same request delivered again before any step ran: no second iteration.
    let again = engine.start_job(&submit(&engine, &text).await).await.unwrap();
    assert!(again.iter().all(|o| o.message.iteration.unwrap_or(1) == 1), "{again:?}");
    let failures = kusto_copy::engine::local::run(engine.clone(), first.into_iter().chain(again).collect(), 4, |_| {}).await;
    assert!(failures.is_empty(), "{failures:?}");
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!((activity.iteration, activity.copied_rows), (1, 600));
    assert_exact_rows(&stack, 600);
}

/// `kc copy` run again on the same staging folder: each run copies the delta and says so; a
/// `BackfillOnly` job run again does nothing and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kc_copy_run_again_copies_the_delta_and_reports_it() {
    let stack = stack().await;
    seed_with(&stack, SeedPlan { rows: 300, extents: 3, first_creation: JAN_2024, creation_step: 30 * DAY, first_ingestion: Some(JAN_2024 + 400 * DAY), ingestion_step: HOUR });
    let kc = |mode: &str, folder: &str| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_kc"));
        c.args(["copy", "-s", &format!("{}/{DB}/Events", stack.source.url()), "-d", &format!("{}/{DB}", stack.destination.url())])
            .args(["-t", &format!("{}/staging/{folder}", stack.azurite.blob_endpoint()), "--copy-mode", mode])
            .env("KC_CREDENTIAL", "emulator")
            .env("KC_CA_CERT", &stack.azurite.ca_pem_path)
            .env("RUST_LOG", "warn");
        c
    };
    let run = |mode: &'static str, folder: &'static str| {
        let mut c = kc(mode, folder);
        async move {
            let out = c.output().await.unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
            stdout
        }
    };
    let first = run("BackfillAndNew", "cli-bn").await;
    assert!(first.contains("300 rows copied (300 rows by this run)"), "{first}");
    ingest_more(&stack, 300, 40, 1);
    let second = run("BackfillAndNew", "cli-bn").await;
    assert!(second.contains("340 rows copied (40 rows by this run)"), "{second}");
    let third = run("BackfillAndNew", "cli-bn").await;
    assert!(third.contains("(0 rows by this run)"), "{third}");
    assert_exact_rows(&stack, 340);

    // The same staging folder with another query: refused, saying how to start over.
    let out = kc("BackfillAndNew", "cli-bn").args(["-q", "| where Id > 5"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("holds another job") && stderr.contains("another staging folder"), "{stderr}");
    assert_exact_rows(&stack, 340);

    // BackfillOnly into another table of its own: once, then nothing.
    stack.destination.command(DB, ".drop table Events").unwrap();
    stack.destination.command(DB, ".create table Events (Id:long, Name:string, When:datetime)").unwrap();
    let once = run("BackfillOnly", "cli-bo").await;
    assert!(once.contains("340 rows copied"), "{once}");
    let again = run("BackfillOnly", "cli-bo").await;
    assert!(again.contains("already complete"), "{again}");
    assert_exact_rows(&stack, 340);
}

/// `kc copy` killed (SIGKILL) in the middle of a delta iteration, then the same command:
/// the delta arrives exactly once and the history is not copied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kc_copy_killed_in_a_delta_then_run_again_is_exact() {
    let stack = stack().await;
    seed_with(&stack, SeedPlan { rows: 300, extents: 3, first_creation: JAN_2024, creation_step: 30 * DAY, first_ingestion: Some(JAN_2024 + 400 * DAY), ingestion_step: HOUR });
    let kc = || {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_kc"));
        c.args(["copy", "-s", &format!("{}/{DB}/Events", stack.source.url()), "-d", &format!("{}/{DB}", stack.destination.url())])
            .args(["-t", &format!("{}/staging/killed-delta", stack.azurite.blob_endpoint()), "--copy-mode", "BackfillAndNew", "--export", "1"])
            .env("KC_CREDENTIAL", "emulator")
            .env("KC_CA_CERT", &stack.azurite.ca_pem_path)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        c
    };
    let out = kc().output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_exact_rows(&stack, 300);

    // A delta of six blocks (six ingestion hours, one export at a time), killed once the
    // first of them has reached the destination.
    for nth in 0..6 {
        ingest_more(&stack, 1000 + nth * 50, 50, nth + 1);
    }
    let mut child = kc().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    let at_kill = loop {
        let n = ids_at_destination(&stack).len();
        if n > 300 {
            break n;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the delta started landing");
        assert!(tokio::time::Instant::now() < deadline, "the delta never started landing");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    child.kill().await.unwrap();
    assert!(at_kill < 600, "killed mid-delta ({at_kill} rows at the destination)");
    // As if the killed run had made a staging table and died before recording it: the next
    // run's janitor removes it (assert_nothing_left below finds any staging table).
    let deployment = kusto_copy::engine::copy::deployment_hash(&format!("{}/staging/killed-delta", stack.azurite.blob_endpoint()));
    stack.destination.command(DB, &format!(".create table ['kc_staging_{deployment}-deadbeef0000'] (Id:long)")).unwrap();

    let out = kc().output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("600 rows copied"), "{stdout}");
    assert_exact_rows(&stack, 600);
    assert_nothing_left(&stack).await;
}
