//! The executor of block steps: loads the block, asks [`super::steps::decide`], writes each
//! new record with compare-and-swap on the ETag of its own previous write (never a re-read:
//! a delivery that paused while another moved the block on loses its next write and stops),
//! performs the effects, and sends the messages. It decides nothing itself: every effect's
//! outcome, failures included, goes back to the decision as an observation.

use super::copy::{keys, CopyEngine, Place};
use super::records::{BlockRecord, DataRoute, IngestRoute, IterationRecord, MessageAction, Step};
use super::steps::operation::{consequence, Consequence, Waiting};
use super::steps::{self, Ctx, Effect, ExportPoll, Failure, IngestPoll, Msg, Obs};
use super::{Delivery, EngineError, Outgoing};
use crate::kusto::{commands, results, ClientRequestId, CursorWindow, ExportRequest, Ident, IngestionRange, KustoApi, KustoError, SecretUrl, UserQuery};
use crate::storage::checkpoint::{self, Written};
use crate::storage::sas::Access;
use std::sync::Arc;
use uuid::Uuid;

/// Rounds of decide-and-act one delivery runs at most (a step takes three or four).
const MAX_ROUNDS: usize = 12;

fn failure(what: &str, e: impl std::fmt::Display, transient: bool) -> Obs {
    Obs::Failed(Failure { transient, message: format!("{what}: {e}"), may_have_run: false })
}

fn kusto_failure(what: &str, e: KustoError) -> Obs {
    let transient = e.is_transient();
    let may_have_run = e.may_have_executed();
    Obs::Failed(Failure { transient, message: format!("{what}: {e}"), may_have_run })
}

fn engine_failure(what: &str, e: EngineError) -> Obs {
    match e {
        EngineError::Transient(m) => failure(what, m, true),
        EngineError::Permanent(m) => failure(what, m, false),
    }
}

impl CopyEngine {
    fn rules(&self) -> steps::Rules {
        // A block waiting for a cluster slot looks again as often as a running operation is polled.
        steps::Rules {
            min_poll: self.options.min_poll,
            max_poll: self.options.max_poll,
            poll_floor: self.options.poll_floor,
            poll_grid: self.options.poll_grid,
            slot_poll: self.options.min_poll,
            lease: self.options.lease,
            orphan_settle: self.options.orphan_settle,
            orphan_poll: self.options.max_poll.min(std::time::Duration::from_secs(30)),
            ..steps::Rules::default()
        }
    }

    pub(super) async fn block_step(&self, place: &Place, block_no: u64, step: Step, delivery: &Delivery) -> Result<Vec<Outgoing>, EngineError> {
        let key = keys::block(&place.job.id, &place.activity.name, place.iteration, block_no);
        // A first delivery decides on the record this process wrote last, if it has it
        // ([`super::copy::Cached::blocks`]); a redelivery always reads (it may be the delivery
        // that wrote the record and stopped before sending what follows).
        if delivery.dequeue_count <= 1 {
            if let Some((record, etag)) = self.cached.block(&key) {
                if let Some(out) = self.block_step_on(place, &key, record, etag, step, delivery, true).await? {
                    return Ok(out);
                }
                self.cached.forget_block(&key);
            }
        }
        let Some((record, etag)) = self.read::<BlockRecord>(&key).await? else {
            return Err(EngineError::Permanent(format!("no block {block_no} in iteration {}", place.iteration)));
        };
        Ok(self.block_step_on(place, &key, record, etag, step, delivery, false).await?.unwrap_or_default())
    }

    /// One step of a block on `record`, as stored at `etag`. `cached`: the record is this
    /// process's own last write, which may have been moved on since by another delivery;
    /// `None` then means "read the stored record and decide again": the cached one does not
    /// run this step, or lost its first write, or would end the step doing nothing. Nothing
    /// that matters was done on it before: its writes are swapped at its ETag, and before the
    /// first write only looks (polls) and a slot claim (given back below if stale) happen.
    #[allow(clippy::too_many_arguments)]
    async fn block_step_on(&self, place: &Place, key: &str, mut record: BlockRecord, mut etag: checkpoint::ETag, step: Step, delivery: &Delivery, cached: bool) -> Result<Option<Vec<Outgoing>>, EngineError> {
        let block_no = record.number;
        let iteration = self.iteration_for_blocks(place).await?;
        let (iteration_id, slots) = (place.id(), iteration.export_slots);
        // An ingestion of the iteration's last round of blocks is looked at as eagerly as an
        // export: nothing follows it, and its end is the copy's (kc-bench: the last ones
        // were seen up to 0.3 s after they ended, looked at a deviation apart).
        let last_round = block_no + slots.max(1) >= iteration.blocks;
        let (eager, expected) = match step {
            Step::Export | Step::AwaitExport => (true, self.learned.expected(&place.activity.source.cluster, "export", true)),
            Step::Ingest | Step::AwaitIngest => (last_round, self.learned.expected(&place.activity.destination.cluster, "ingest", last_round)),
            _ => (false, None),
        };
        if !record.never_started() {
            self.cached.note_started(&iteration_id, block_no, None, iteration.blocks, slots);
        }
        let handover = match step {
            // Where a finished export hands its slot (only these steps finish one).
            Step::Export | Step::AwaitExport => self.cached.hand_over_to(&iteration_id, block_no, iteration.blocks, slots),
            _ => Some(block_no + slots.max(1)).filter(|n| *n < iteration.blocks),
        };
        let base = Ctx {
            now: self.clock.now(),
            owner: delivery.message_id.clone().unwrap_or_else(|| self.ids.lease_owner()),
            iteration_id: place.id(),
            handover,
            route: self.options.ingest_route,
            verify: place.spec.verify,
            soft_delete: iteration.destination_soft_delete(),
            redelivered: delivery.dequeue_count > 1,
            expected,
            eager,
            rules: self.rules(),
        };
        match record.on_message(step, delivery.dequeue_count) {
            MessageAction::Run => {}
            _ if cached => return Ok(None),
            // A redelivered export step of a block that is past its export by now: its first
            // delivery may have stopped before its hand-over of the export slot was sent
            // (while the block's own follow-up went out and moved it on). Sent again; a block
            // already started ignores it.
            MessageAction::Ignore if delivery.dequeue_count > 1 && matches!(step, Step::Export | Step::AwaitExport) && record.exported() => {
                let Some(next) = base.handover else { return Ok(Some(vec![])) };
                // Only to a block that never started: one that did got its turn.
                let fresh = self
                    .read::<BlockRecord>(&keys::block(&place.job.id, &place.activity.name, place.iteration, next))
                    .await?
                    .is_some_and(|(b, _)| b.never_started());
                return Ok(Some(if fresh { outgoing(place, vec![steps::Msg::now(Step::Export, next)]) } else { vec![] }));
            }
            MessageAction::Ignore => return Ok(Some(vec![])),
            MessageAction::Reemit(_) => return Ok(Some(outgoing(place, steps::follow_ups(&record, &base)))),
        }
        let mut out = Vec::new();
        let mut obs = Obs::Delivered;
        let mut wrote = false;
        let mut looked_at_activity = false;
        for _ in 0..MAX_ROUNDS {
            let ctx = Ctx { now: self.clock.now(), ..base.clone() };
            let t = steps::decide(step, &record, &obs, &ctx);
            // A stopped activity (failed, cancelled) starts nothing more; its abort cleans up
            // what is left. Looked at once per step, by a step about to start something, and
            // before the write that records it (an attempt recorded after the abort looked
            // would be left for nobody to clean). Polls and tidying do not need it (issue 12:
            // a read per step was a quarter of the engine's Storage transactions).
            if t.effect.as_ref().is_some_and(Effect::starts_work) && !looked_at_activity {
                looked_at_activity = true;
                if self.activity_stopped(place).await? {
                    return Ok(Some(vec![]));
                }
            }
            if let Some(next) = t.record {
                match checkpoint::replace_json(self.store.as_ref(), key, &next, &etag).await.map_err(super::copy::storage_err)? {
                    Written::Done(new) => {
                        etag = new;
                        record = next;
                        wrote = true;
                        self.cached.keep_block(key, &record, &etag);
                    }
                    // Another delivery moved the block on since our last write: this decision
                    // is void, and whatever it was about to do is that delivery's to do.
                    Written::Conflict => {
                        if matches!(obs, Obs::Slot { granted: true }) {
                            self.give_back_stale_slot(place, &iteration, key).await;
                        }
                        // Unless "our last write" was an earlier step's, remembered: then
                        // the stored record decides (it may be due exactly this step).
                        if cached && !wrote {
                            return Ok(None);
                        }
                        self.cached.forget_block(key);
                        return Ok(Some(outgoing(place, out)));
                    }
                }
            }
            out.extend(t.messages);
            if let Some(reason) = t.fail {
                // Fenced like any decision: the failure is written on the block with the ETag
                // of this delivery's last write first. A delivery that paused while another
                // moved the block on (even to done, its staging table gone) loses that write,
                // and its stale observation fails nothing.
                let mut failed = record.clone();
                failed.lease = None;
                failed.touched_at = ctx.now;
                self.cached.forget_block(key);
                return match checkpoint::replace_json(self.store.as_ref(), key, &failed, &etag).await.map_err(super::copy::storage_err)? {
                    Written::Done(_) => Err(EngineError::Permanent(reason)),
                    Written::Conflict if cached && !wrote => Ok(None),
                    Written::Conflict => Ok(Some(outgoing(place, out))),
                };
            }
            let Some(effect) = t.effect else { break };
            obs = self.perform(place, &iteration, &record, effect).await;
        }
        if cached && !wrote && out.is_empty() {
            return Ok(None);
        }
        // What started, and where exports were sent: later hand-overs pass them by.
        if !record.never_started() {
            self.cached.note_started(&iteration_id, block_no, None, iteration.blocks, slots);
        }
        for m in out.iter().filter(|m| m.step == Step::Export) {
            self.cached.note_started(&iteration_id, m.block, Some(block_no), iteration.blocks, slots);
        }
        Ok(Some(outgoing(place, out)))
    }

    /// The iteration as block steps see it: read once it is copying, then from the cache
    /// ([`super::copy::Cached`]: nothing block steps read of it changes after planning).
    pub(super) async fn iteration_for_blocks(&self, place: &Place) -> Result<IterationRecord, EngineError> {
        let key = keys::iteration(&place.job.id, &place.activity.name, place.iteration);
        if let Some(it) = self.cached.iterations.lock().unwrap().get(&key) {
            return Ok(it.clone());
        }
        let (iteration, _) = self.read::<IterationRecord>(&key).await?.ok_or_else(|| EngineError::Permanent(format!("iteration {} has no record", place.iteration)))?;
        if iteration.state != super::records::IterationState::Planning {
            self.cached.iterations.lock().unwrap().insert(key, iteration.clone());
        }
        Ok(iteration)
    }

    /// This delivery took the block's export slot and then found the block moved on by
    /// another: if the block no longer exports (it is past its export, or done), nobody will
    /// give that claim back, so this delivery does. A block still exporting keeps it: the
    /// claim is the block's, held now by the delivery that moved it on.
    async fn give_back_stale_slot(&self, place: &Place, iteration: &IterationRecord, key: &str) {
        use super::records::BlockState;
        let Ok(Some((fresh, _))) = self.read::<BlockRecord>(key).await else { return };
        if !matches!(fresh.state, BlockState::Planned | BlockState::Exporting { .. }) {
            if let Err(e) = self.cluster_slot(place, iteration, &fresh, super::copy::SlotAction::Release).await {
                tracing::warn!(job = %place.job.id, block = fresh.number, error = %e, "a stale slot claim not given back (it expires by itself)");
            }
        }
    }

    async fn perform(&self, place: &Place, iteration: &IterationRecord, block: &BlockRecord, effect: Effect) -> Obs {
        let job = &place.job.id;
        let number = block.number.to_string();
        let dest_db = &place.activity.destination.database;
        match effect {
            Effect::AcquireSlot => match self.cluster_slot(place, iteration, block, super::copy::SlotAction::Acquire).await {
                Ok(granted) => Obs::Slot { granted },
                Err(e) => engine_failure("take an export slot", e),
            },
            Effect::RenewSlot | Effect::ReleaseSlot => {
                let action = if effect == Effect::RenewSlot { super::copy::SlotAction::Renew } else { super::copy::SlotAction::Release };
                // A release that fails leaves a claim that expires by itself: worth a second
                // try, never worth failing the step over.
                for _ in 0..3 {
                    match self.cluster_slot(place, iteration, block, action).await {
                        Ok(_) => return Obs::Done,
                        Err(e) => tracing::warn!(job, block = block.number, error = %e, "export slot claim not updated"),
                    }
                }
                Obs::Done
            }
            Effect::StartExport { folder } => match self.start_export(place, iteration, block, &folder).await {
                Ok(op) => Obs::ExportStarted(op),
                Err(obs) => obs,
            },
            Effect::PollExport { operation } => self.poll_export(place, block, operation).await,
            Effect::StartIngest { folder, tag } => match self.start_ingest(place, iteration, block, &folder, &tag).await {
                Ok(ops) => Obs::IngestStarted(ops),
                Err(obs) => obs,
            },
            Effect::PollIngest { tag, route, operations } => {
                let rid = ClientRequestId::new("await-ingest", job, &number, block.ingest_attempt);
                let status = match self.ingestion_outcome(place, route, &operations, &rid).await {
                    Ok(s) => s,
                    Err(obs) => return obs,
                };
                // Still running and nothing failed: whatever the tag holds now, the decision
                // waits (a stray duplicate shows in the count once the ingestion is over), so
                // the listing is left for the poll that finds it over.
                if !(status.finished || status.status_missing || status.failed) {
                    return Obs::Ingest(status);
                }
                match self.staged_extents(place, &tag, &rid).await {
                    Ok(extents) => Obs::Ingest(IngestPoll { extents, ..status }),
                    Err(e) => kusto_failure("count the tag's rows in staging", e),
                }
            }
            Effect::DropStaged { tag } => {
                let rid = ClientRequestId::new("drop-strays", job, &number, block.ingest_attempt);
                let result = match (self.dest(place), self.staging_ident(place)) {
                    (Ok(dest), Ok(staging)) => match commands::drop_extents_with_tag(&staging, &tag) {
                        Ok(cmd) => dest.execute(dest_db, &cmd, &rid).await.map(|_| ()).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
                };
                if let Err(e) = result {
                    // Strays under a given-up tag are never moved; the staging table goes at the end.
                    tracing::warn!(job, block = block.number, error = %e, "stray extents not dropped");
                }
                Obs::Done
            }
            Effect::CompareContent { extents } => self.compare_content(place, iteration, block, &extents).await,
            Effect::Move { extents } => {
                let rid = ClientRequestId::new("move", job, &number, block.ingest_attempt);
                let (dest, staging, target) = match self.commit_tables(place) {
                    Ok(t) => t,
                    Err(e) => return engine_failure("move", e),
                };
                let cmd = match commands::move_extents(&staging, &target, &extents, false) {
                    Ok(c) => c,
                    Err(e) => return kusto_failure("build the move", e),
                };
                match dest.execute(dest_db, &cmd, &rid).await.and_then(|a| results::extent_rewrites(&a)) {
                    Ok(r) => Obs::Moved { moved: r.results, failed: r.failed },
                    Err(e) => kusto_failure("move the block's extents", e),
                }
            }
            Effect::Locate { extents, tag } => {
                let rid = ClientRequestId::new("locate", job, &number, block.ingest_attempt);
                let (dest, staging, target) = match self.commit_tables(place) {
                    Ok(t) => t,
                    Err(e) => return engine_failure("locate", e),
                };
                let in_staging = match self.existing_extents(&dest, dest_db, &staging, &extents, &rid).await {
                    Ok(ids) => ids,
                    Err(e) => return kusto_failure("look for the block's extents in staging", e),
                };
                match self.tagged_at_destination(&dest, dest_db, &target, &tag, &rid).await {
                    Ok(rows) => Obs::Located { in_staging, tagged_at_destination: rows },
                    Err(e) => kusto_failure("look for the block's tag at the destination", e),
                }
            }
            Effect::Verify { moved, tag, counted } => {
                let rid = ClientRequestId::new("verify", job, &number, block.ingest_attempt);
                let (dest, _, target) = match self.commit_tables(place) {
                    Ok(t) => t,
                    Err(e) => return engine_failure("verify", e),
                };
                let by_ids = if moved.is_empty() {
                    0
                } else {
                    match self.extent_rows(&dest, dest_db, &target, &moved, &rid).await {
                        Ok(r) => r,
                        Err(e) => return kusto_failure("count the moved rows at the destination", e),
                    }
                };
                // The moved extents hold every row: that settles it (the decision needs
                // nothing more), and three listings are saved.
                if block.rows().is_some_and(|rows| rows == by_ids) {
                    return Obs::Verified { by_ids, by_tag: None, left_in_staging: None };
                }
                let by_tag = match self.tagged_at_destination(&dest, dest_db, &target, &tag, &rid).await {
                    Ok(rows) => rows,
                    Err(e) => return kusto_failure("count the tag's rows at the destination", e),
                };
                let staging = match self.staging_ident(place) {
                    Ok(s) => s,
                    Err(e) => return engine_failure("verify", e),
                };
                match self.existing_extents(&dest, dest_db, &staging, &counted, &rid).await {
                    Ok(left) => Obs::Verified { by_ids, by_tag: Some(by_tag), left_in_staging: Some(left.len()) },
                    Err(e) => kusto_failure("look for the block's extents in staging", e),
                }
            }
            Effect::DropDestinationTag { tag, created_on } => {
                let rid = ClientRequestId::new("untag", job, &number, block.ingest_attempt);
                let (dest, _, target) = match self.commit_tables(place) {
                    Ok(t) => t,
                    Err(e) => return engine_failure("drop the tag", e),
                };
                // The block's creation time narrows the extents Kusto scans.
                let range = created_on.map(|t| (t - time::Duration::days(1), t + time::Duration::days(1)));
                let marker = steps::marker_of(&tag);
                let cmd = match commands::drop_extent_tags(&target, &[tag.as_str(), marker.as_str()], range) {
                    Ok(c) => c,
                    Err(e) => return kusto_failure("build the tag drop", e),
                };
                match dest.execute(dest_db, &cmd, &rid).await.and_then(|a| results::extent_rewrites(&a)) {
                    Ok(r) => Obs::TagDropped { failed: r.failed },
                    Err(e) => kusto_failure("drop the block's tag at the destination", e),
                }
            }
            Effect::DeleteFolders { folders } => match self.delete_folders(place, &folders).await {
                Ok(()) => Obs::Done,
                Err(e) => engine_failure("delete the staging folders", e),
            },
            Effect::Finish => {
                for _ in 0..3 {
                    match self.block_finished(place, block).await {
                        Ok(()) => return Obs::Done,
                        // The sweeper (and a resumed `kc copy`) finishes an iteration whose
                        // blocks are all done, so this is never the only chance.
                        Err(e) => tracing::warn!(job, block = block.number, error = %e, "block done but not yet counted"),
                    }
                }
                Obs::Done
            }
            Effect::FindOrphans { since } => self.find_orphans(place, block, since).await,
        }
    }

    /// Export operations of the source that may be the one an earlier start of this block
    /// sent without hearing back: listed as running (`InProgress` or `Scheduled`), started
    /// from a minute before that attempt (clocks differ) to ten minutes after (the start
    /// request's retries end well before). Another export started in that window makes the
    /// block wait for it too: slower, never over the capacity.
    async fn find_orphans(&self, place: &Place, block: &BlockRecord, since: time::OffsetDateTime) -> Obs {
        let source = match self.connections.kusto(&place.activity.source.cluster) {
            Ok(s) => s,
            Err(e) => return engine_failure("source cluster", e),
        };
        let rid = ClientRequestId::new("find-orphans", &place.job.id, &block.number.to_string(), block.export_attempt);
        let listed = match source.execute(&place.activity.source.database, &commands::show_all_operations(), &rid).await.and_then(|a| results::operations(&a)) {
            Ok(l) => l,
            Err(e) => return kusto_failure("list the source's operations", e),
        };
        let window = (since - time::Duration::minutes(1))..=(since + time::Duration::minutes(10));
        let running = listed
            .iter()
            .filter(|o| o.state.is_pending())
            .filter(|o| o.operation.as_deref().is_some_and(|n| n.to_ascii_lowercase().contains("export")))
            .filter(|o| o.started_on.is_none_or(|t| window.contains(&t)))
            .count();
        Obs::Orphans { running: running as u32 }
    }

    fn dest(&self, place: &Place) -> Result<Arc<dyn KustoApi>, EngineError> {
        self.connections.kusto(&place.activity.destination.cluster)
    }

    fn staging_ident(&self, place: &Place) -> Result<Ident, EngineError> {
        super::copy::ident(&place.staging_table())
    }

    fn commit_tables(&self, place: &Place) -> Result<(Arc<dyn KustoApi>, Ident, Ident), EngineError> {
        Ok((self.dest(place)?, self.staging_ident(place)?, super::copy::ident(&place.activity.destination.table)?))
    }

    async fn start_export(&self, place: &Place, iteration: &IterationRecord, block: &BlockRecord, folder: &str) -> Result<Uuid, Obs> {
        let staging = self.folder_store(place, folder).map_err(|e| engine_failure("staging account", e))?;
        staging.create_folder(folder).await.map_err(|e| {
            let transient = e.is_transient();
            failure("create the staging folder", e, transient)
        })?;
        let destination = staging.folder_url(folder, Access::ExportWrite, self.options.sas_lifetime).await.map_err(|e| {
            let transient = e.is_transient();
            failure("sign the staging folder", e, transient)
        })?;
        let table = super::copy::ident(&place.activity.source.table).map_err(|e| engine_failure("source table", e))?;
        let window = CursorWindow { from: iteration.cursor_from.clone(), to: iteration.cursor_to.clone() };
        let range = IngestionRange { from: block.from, to: block.to };
        let user_query = place.activity.query.as_deref().map(UserQuery::new).transpose().map_err(|e| failure("query", e, false))?;
        let request = ExportRequest {
            table: &table,
            window: &window,
            range: Some(&range),
            user_query: user_query.as_ref(),
            destinations: std::slice::from_ref(&destination),
            name_prefix: &format!("b{}", block.number),
        };
        let cmd = match iteration.data_route() {
            DataRoute::Parquet => commands::export_parquet(&request),
            DataRoute::Csv { .. } => commands::export_csv(&request),
        }
        .map_err(|e| kusto_failure("build the export", e))?;
        let source = self.connections.kusto(&place.activity.source.cluster).map_err(|e| engine_failure("source cluster", e))?;
        let rid = ClientRequestId::new("export", &place.job.id, &block.number.to_string(), block.export_attempt);
        source
            .execute(&place.activity.source.database, &cmd, &rid)
            .await
            .and_then(|a| results::operation_id(&a))
            .map_err(|e| kusto_failure("start the export", e))
    }

    /// The block's content digest at the source (its export's selection: same window, same
    /// ingestion-time range, same user query) and over its counted staging extents. The
    /// columns are the copy's, read from the source as planning read them (`take 0`: no rows).
    async fn compare_content(&self, place: &Place, iteration: &IterationRecord, block: &BlockRecord, extents: &[Uuid]) -> Obs {
        use crate::kusto::digest::{content_digest, read_digest, DigestRows};
        let rid = ClientRequestId::new("verify-content", &place.job.id, &block.number.to_string(), block.ingest_attempt);
        let source = match self.connections.kusto(&place.activity.source.cluster) {
            Ok(s) => s,
            Err(e) => return engine_failure("source cluster", e),
        };
        let (table, staging, dest) = match (super::copy::ident(&place.activity.source.table), self.staging_ident(place), self.dest(place)) {
            (Ok(t), Ok(s), Ok(d)) => (t, s, d),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return engine_failure("compare content", e),
        };
        let user_query = match place.activity.query.as_deref().map(UserQuery::new).transpose() {
            Ok(q) => q,
            Err(e) => return failure("query", e, false),
        };
        let src_db = &place.activity.source.database;
        let columns = match source.execute(src_db, &commands::result_schema(&table, user_query.as_ref()), &rid).await.and_then(|a| a.primary().map(|t| t.columns.clone())) {
            Ok(c) => c,
            Err(e) => return kusto_failure("read the copy's schema", e),
        };
        let window = CursorWindow { from: iteration.cursor_from.clone(), to: iteration.cursor_to.clone() };
        let range = IngestionRange { from: block.from, to: block.to };
        let at_source = DigestRows::SourceBlock { table: &table, window: &window, range: &range, user_query: user_query.as_ref() };
        let in_staging = DigestRows::StagingExtents { table: &staging, extents };
        let (src_cmd, stg_cmd) = match (content_digest(&at_source, &columns), content_digest(&in_staging, &columns)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return kusto_failure("build the content digest", e),
        };
        let source_digest = match source.execute(src_db, &src_cmd, &rid).await.and_then(|a| read_digest(&a, &columns)) {
            Ok(d) => d,
            Err(e) => return kusto_failure("digest the block at the source", e),
        };
        match dest.execute(&place.activity.destination.database, &stg_cmd, &rid).await.and_then(|a| read_digest(&a, &columns)) {
            Ok(staging_digest) => Obs::Compared { source: source_digest, staging: staging_digest },
            Err(e) => kusto_failure("digest the block in staging", e),
        }
    }

    async fn poll_export(&self, place: &Place, block: &BlockRecord, op: Uuid) -> Obs {
        let source = match self.connections.kusto(&place.activity.source.cluster) {
            Ok(s) => s,
            Err(e) => return engine_failure("source cluster", e),
        };
        let db = &place.activity.source.database;
        let rid = ClientRequestId::new("await-export", &place.job.id, &block.number.to_string(), block.export_attempt);
        let look = match self.options.poll_grid {
            Some(_) => self.looks.operation(source.clone(), &place.activity.source.cluster, db, op, &rid).await,
            None => self.operation(&source, db, op, &rid).await,
        };
        let operation = match look {
            Ok(o) => o,
            Err(e) => return engine_failure("look at the export", e),
        };
        let Some(o) = operation else {
            return Obs::Export(ExportPoll::Ended { why: format!("export operation {op} is no longer listed") });
        };
        match consequence(&o.state, o.status.as_deref(), Waiting::Export) {
            Consequence::Pending => Obs::Export(ExportPoll::Pending),
            Consequence::NewAttempt(why) => Obs::Export(ExportPoll::Ended { why }),
            Consequence::Fail(why) => Obs::Export(ExportPoll::Stopped { why: format!("export operation {op}: {why}") }),
            Consequence::Succeeded => {
                if let Some(took) = o.started_on.zip(o.last_updated_on).and_then(|(s, e)| (e - s).try_into().ok()) {
                    self.learned.record(&place.activity.source.cluster, "export", took);
                }
                let details = match source.execute(db, &commands::show_operation_details(op), &rid).await.and_then(|d| results::exported_blobs(&d)) {
                    Ok(d) => d,
                    // The record aged out between the two looks (about 6 hours; sooner on a
                    // busy cluster): the export's blob list is gone, so it is a new attempt.
                    Err(e) if e.code.as_deref().is_some_and(|c| c.ends_with("NotFound")) => {
                        return Obs::Export(ExportPoll::Ended { why: format!("export operation {op} details are no longer kept: {e}") })
                    }
                    Err(e) => return kusto_failure("read export details", e),
                };
                let folder = block.folders.last().cloned().unwrap_or_default();
                let blobs: Result<Vec<String>, EngineError> = details.iter().map(|b| super::copy::blob_name_in(&b.path, &folder)).collect();
                match blobs {
                    Ok(blobs) => Obs::Export(ExportPoll::Completed { blobs, rows: details.iter().map(|b| b.records.max(0) as u64).sum() }),
                    Err(e) => engine_failure("read export details", e),
                }
            }
        }
    }

    async fn start_ingest(&self, place: &Place, iteration: &IterationRecord, block: &BlockRecord, folder: &str, tag: &str) -> Result<Vec<String>, Obs> {
        let BlockRecord { state: super::records::BlockState::Ingesting { blobs, .. }, .. } = block else {
            return Err(failure("ingest", "the block has no blobs recorded", false));
        };
        let staging = self.folder_store(place, folder).map_err(|e| engine_failure("staging account", e))?;
        let sas = staging.folder_url(folder, Access::IngestRead, self.options.sas_lifetime).await.map_err(|e| {
            let transient = e.is_transient();
            failure("sign the staging folder", e, transient)
        })?;
        // The format the iteration exported in: CSV fields go to columns by the export's order.
        let mut props = match iteration.data_route() {
            DataRoute::Parquet => commands::IngestProperties::parquet(),
            DataRoute::Csv { columns } => commands::IngestProperties::csv(&columns),
        };
        props.creation_time = block.creation_time;
        props.tags = vec![tag.to_owned(), steps::marker_of(tag)];
        let table = self.staging_ident(place).map_err(|e| engine_failure("staging table", e))?;
        let database = super::copy::ident(&place.activity.destination.database).map_err(|e| engine_failure("database", e))?;
        let dest = self.dest(place).map_err(|e| engine_failure("destination cluster", e))?;
        let rid = ClientRequestId::new("ingest", &place.job.id, &block.number.to_string(), block.ingest_attempt);
        let mut operations = Vec::new();
        match self.options.ingest_route {
            IngestRoute::Queued => {
                // Blobs sent by an earlier call of this attempt are strays under this tag if a
                // later call fails: the retry is a new attempt with a new tag.
                for chunk in blobs.chunks(crate::kusto::MAX_BLOBS_PER_CALL) {
                    let queued: Vec<crate::kusto::QueuedBlob> = chunk
                        .iter()
                        .map(|b| crate::kusto::QueuedBlob {
                            url: sas.file(b),
                            source_id: Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("{folder}/{b}").as_bytes()),
                            raw_size: None,
                        })
                        .collect();
                    let op = dest.queue_ingestion(&database, &table, &queued, &props, &rid).await.map_err(|e| kusto_failure("queue the ingestion", e))?;
                    operations.push(op);
                }
            }
            IngestRoute::Direct => {
                let urls: Vec<SecretUrl> = blobs.iter().map(|b| sas.file(b)).collect();
                let cmd = commands::ingest_async(&table, &urls, &props).map_err(|e| kusto_failure("build the ingestion", e))?;
                let op = dest
                    .execute(&place.activity.destination.database, &cmd, &rid)
                    .await
                    .and_then(|a| results::operation_id(&a))
                    .map_err(|e| kusto_failure("start the ingestion", e))?;
                operations.push(op.to_string());
            }
        }
        Ok(operations)
    }

    /// What the ingestion's operations say (the extents are filled in by the caller).
    async fn ingestion_outcome(&self, place: &Place, route: IngestRoute, operations: &[String], rid: &ClientRequestId) -> Result<IngestPoll, Obs> {
        let poll = |finished, failed, status_missing, stopped| IngestPoll { finished, failed, status_missing, stopped, too_old: None, extents: vec![] };
        let dest = self.dest(place).map_err(|e| engine_failure("destination cluster", e))?;
        let db = &place.activity.destination.database;
        match route {
            IngestRoute::Direct => {
                let id = operations.first().and_then(|o| o.parse::<Uuid>().ok()).ok_or_else(|| failure("ingest", "bad operation id", false))?;
                let Some(o) = self.operation(&dest, db, id, rid).await.map_err(|e| engine_failure("look at the ingestion", e))? else {
                    return Ok(poll(false, false, true, None));
                };
                if let Some(status) = o.status.as_deref().filter(|s| crate::kusto::is_too_old_code(s)) {
                    return Ok(IngestPoll { too_old: Some(status.to_string()), ..poll(true, true, false, None) });
                }
                Ok(match consequence(&o.state, o.status.as_deref(), Waiting::Ingestion) {
                    Consequence::Pending => poll(false, false, false, None),
                    Consequence::Succeeded => poll(true, false, false, None),
                    Consequence::NewAttempt(_) => poll(true, true, false, None),
                    Consequence::Fail(why) => poll(true, true, false, Some(format!("ingestion operation {id}: {why}"))),
                })
            }
            IngestRoute::Queued => {
                let database = super::copy::ident(db).map_err(|e| engine_failure("database", e))?;
                let table = self.staging_ident(place).map_err(|e| engine_failure("staging table", e))?;
                let (mut finished, mut failed, mut missing, mut too_old) = (true, false, false, None);
                for op in operations {
                    match dest.ingestion_status(&database, &table, op, rid).await {
                        // Judged by the per-blob details, as the official client judges them: done
                        // when the list is non-empty and every blob is final.
                        Ok(status) => {
                            if let Some(took) = status.start_time.zip(status.last_updated).filter(|_| status.is_finished()).and_then(|(s, e)| (e - s).try_into().ok()) {
                                self.learned.record(&place.activity.destination.cluster, "ingest", took);
                            }
                            finished &= status.is_finished();
                            failed |= status.has_failures();
                            too_old = too_old.or_else(|| status.refused_as_too_old());
                        }
                        // The service keeps a status for a while only: the count decides. (404, or
                        // a 400 whose code says the operation is not found.)
                        Err(e) if e.kind == crate::kusto::ErrorKind::NotFound || e.code.as_deref().is_some_and(|c| c.ends_with("NotFound")) => missing = true,
                        Err(e) => return Err(kusto_failure("read the ingestion status", e)),
                    }
                }
                Ok(IngestPoll { too_old, ..poll(finished && !missing, failed, missing, None) })
            }
        }
    }

    /// Staging extents carrying exactly `tag` (`where tags has` is a term match).
    async fn staged_extents(&self, place: &Place, tag: &str, rid: &ClientRequestId) -> Result<Vec<(Uuid, u64)>, KustoError> {
        let dest = self.dest(place).map_err(|e| KustoError::invalid_input(e.to_string()))?;
        let staging = self.staging_ident(place).map_err(|e| KustoError::invalid_input(e.to_string()))?;
        self.tagged(&dest, &place.activity.destination.database, &staging, tag, rid).await
    }

    /// Rows at the destination under the block's tag or its marker (whichever holds more:
    /// a retention policy may have removed the tag; blocks ingested before the marker have
    /// only the tag).
    async fn tagged_at_destination(&self, kusto: &Arc<dyn KustoApi>, db: &str, table: &Ident, tag: &str, rid: &ClientRequestId) -> Result<u64, KustoError> {
        let by_tag: u64 = self.tagged(kusto, db, table, tag, rid).await?.iter().map(|(_, r)| r).sum();
        let by_marker: u64 = self.tagged(kusto, db, table, &steps::marker_of(tag), rid).await?.iter().map(|(_, r)| r).sum();
        Ok(by_tag.max(by_marker))
    }

    async fn tagged(&self, kusto: &Arc<dyn KustoApi>, db: &str, table: &Ident, tag: &str, rid: &ClientRequestId) -> Result<Vec<(Uuid, u64)>, KustoError> {
        let answer = kusto.execute(db, &commands::show_extents(table, Some(tag))?, rid).await?;
        Ok(results::extents(&answer)?.into_iter().filter(|e| e.has_tag(tag)).map(|e| (e.id, e.row_count.max(0) as u64)).collect())
    }

    async fn existing_extents(&self, kusto: &Arc<dyn KustoApi>, db: &str, table: &Ident, ids: &[Uuid], rid: &ClientRequestId) -> Result<Vec<Uuid>, KustoError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let answer = kusto.execute(db, &commands::show_extents_by_id(table, ids)?, rid).await?;
        Ok(results::extents(&answer)?.into_iter().map(|e| e.id).filter(|id| ids.contains(id)).collect())
    }

    async fn extent_rows(&self, kusto: &Arc<dyn KustoApi>, db: &str, table: &Ident, ids: &[Uuid], rid: &ClientRequestId) -> Result<u64, KustoError> {
        let answer = kusto.execute(db, &commands::show_extents_by_id(table, ids)?, rid).await?;
        Ok(results::extents(&answer)?.into_iter().filter(|e| ids.contains(&e.id)).map(|e| e.row_count.max(0) as u64).sum())
    }

    pub(super) async fn delete_folders(&self, place: &Place, folders: &[String]) -> Result<(), EngineError> {
        for folder in folders {
            let staging = self.folder_store(place, folder)?;
            staging.delete_folder(folder).await.map_err(|e| EngineError::Transient(e.to_string()))?;
        }
        Ok(())
    }

    /// The staging account of the directory that holds `folder` ([`steps::staging_index_of`]).
    fn folder_store(&self, place: &Place, folder: &str) -> Result<Arc<dyn crate::storage::staging::StagingStore>, EngineError> {
        let dirs = &place.spec.staging;
        let i = steps::staging_index_of(folder, dirs.len()).unwrap_or(0);
        let dir = dirs.get(i).ok_or_else(|| EngineError::Permanent("the job names no staging directory".into()))?;
        self.connections.staging(&dir.account_url)
    }
}

fn outgoing(place: &Place, messages: Vec<Msg>) -> Vec<Outgoing> {
    messages.into_iter().map(|m| place.later(m.step, Some(m.block), m.delay)).collect()
}
