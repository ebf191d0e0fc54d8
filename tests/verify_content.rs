//! `verify: content`: before a block is moved, Kusto on both sides digests it (row count,
//! per-column and per-row `hash_xxhash64` sums) and the digests must be equal. Shown here:
//! an exact copy passes; one value changed in staging (the row count unchanged) and two rows'
//! values swapped within one column are caught before any move, given up, and exported
//! again, so the destination ends exact; a difference that repeats stops the activity with a
//! reason naming the block and the column, and nothing reaches the destination.

mod common;

use common::copy::{assert_exact, assert_nothing_left, blob_store, connections, options, request, run, seed, seed_with, stack, submit, Stack, DAY, DB, HOUR, JAN_2024};
use kusto_copy::engine::copy::{keys, ActivityState, CopyEngine};
use kusto_copy::engine::records::{BlockRecord, IterationRecord};
use kusto_copy::job::JobRecord;
use kusto_copy::storage::checkpoint::read_json;
use kusto_sim::{Fault, SeedPlan};
use std::sync::Arc;

fn content_request(stack: &Stack, job: &str) -> String {
    let mut r: serde_json::Value = serde_json::from_str(&request(stack, job, None)).unwrap();
    r["verify"] = "content".into();
    r.to_string()
}

async fn blocks(engine: &CopyEngine, job: &JobRecord) -> Vec<BlockRecord> {
    let store = engine.store();
    let (iteration, _) = read_json::<IterationRecord>(store.as_ref(), &keys::iteration(&job.id, "default", 1)).await.unwrap().unwrap();
    let mut out = Vec::new();
    for n in 0..iteration.blocks {
        out.push(read_json::<BlockRecord>(store.as_ref(), &keys::block(&job.id, "default", 1, n)).await.unwrap().unwrap().0);
    }
    out
}

async fn copy_with_content_check(stack: &Stack, job: &str) -> (Arc<CopyEngine>, JobRecord) {
    let engine = Arc::new(CopyEngine::new(blob_store(stack), connections(stack), options()));
    let record = submit(&engine, &content_request(stack, job)).await;
    run(&engine, &record, |_| {}).await;
    (engine, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exact_copy_passes_the_content_check() {
    let stack = stack().await;
    seed(&stack);
    let (engine, job) = copy_with_content_check(&stack, "vc-exact").await;
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    assert!(blocks(&engine, &job).await.iter().all(|b| b.content_mismatches == 0 && b.export_attempt == 1), "no block was redone");
    assert_exact(&stack);
    assert_nothing_left(&stack).await;
}

/// One value changed, or two swapped, in what lands in staging: caught by the digest, never
/// moved, exported again; the destination ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_value_and_a_swap_in_staging_are_caught_before_any_move_and_redone() {
    for (job, fault) in [("vc-changed", changed()), ("vc-swapped", swapped())] {
        let stack = stack().await;
        seed(&stack);
        stack.destination.script_fault(None, fault, 1);
        let (engine, record) = copy_with_content_check(&stack, job).await;
        assert_eq!(stack.destination.with_state(|s| s.faults.pending()), 0, "{job}: the fault met an ingestion");
        let activity = engine.activity(&record.id, "default").await.unwrap().unwrap();
        assert_eq!(activity.state, ActivityState::Completed, "{job}: {activity:?}");
        let redone: Vec<BlockRecord> = blocks(&engine, &record).await.into_iter().filter(|b| b.content_mismatches > 0).collect();
        assert_eq!(redone.len(), 1, "{job}: one block differed");
        assert_eq!(redone[0].export_attempt, 2, "{job}: and was exported again");
        // Had the bad attempt been moved, the destination would hold its changed row.
        assert_exact(&stack);
        assert_nothing_left(&stack).await;
    }
}

/// The same difference every attempt: the activity stops naming the block and the column,
/// and the destination holds none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_difference_that_repeats_stops_the_activity_naming_block_and_column() {
    for (job, fault, expected) in [
        ("vc-changes", changed(), "column Name holds other values in staging than at the source"),
        ("vc-swaps", swapped(), "column Name: the same values, but not in the same rows as at the source"),
    ] {
        let stack = stack().await;
        // One block, so every attempt meets the fault.
        seed_with(&stack, SeedPlan { rows: 50, extents: 1, first_creation: JAN_2024, creation_step: DAY, first_ingestion: Some(JAN_2024 + 400 * DAY), ingestion_step: HOUR });
        stack.destination.script_fault(None, fault, 20);
        let (engine, record) = copy_with_content_check(&stack, job).await;
        let activity = engine.activity(&record.id, "default").await.unwrap().unwrap();
        let ActivityState::Failed { reason } = &activity.state else { panic!("{job}: {activity:?}") };
        assert!(reason.starts_with("block 0 ") && reason.contains(expected) && reason.contains("3 attempts differed, none was moved"), "{job}: {reason}");
        assert_eq!(stack.destination.extents(DB, "Events").unwrap().len(), 0, "{job}: nothing reached the destination");
        assert_nothing_left(&stack).await;
    }
}

fn changed() -> Fault {
    Fault::CorruptIngestedValue { table_prefix: "kc_staging".into(), column: "Name".into() }
}

fn swapped() -> Fault {
    Fault::SwapIngestedValues { table_prefix: "kc_staging".into(), column: "Name".into() }
}
