//! The ledger: idempotency, the writers with group commit, reversals, terms versions, enrollments,
//! and loss-ratio change notifications.
//!
//! Every change goes through a writer task, fed by a bounded channel. A writer takes whatever
//! commands are waiting (up to `batch_max`), runs them in one transaction and answers them only
//! once the commit is durable: several claims share one durable commit, and no reply is sent for
//! anything that could still be lost. SQLite's commit returns before it is durable; the writer
//! goes on with the next batch while a thread of its own syncs the WAL and then answers
//! (`durable`). A member's claims always go to the same writer, whose channel
//! is FIFO, so claims of one member sent in order settle in that order.
//!
//! SQLite has one writer. On PostgreSQL a process runs several (`LedgerConfig::writers`) and several
//! processes may share the database; writers then run side by side and take advisory locks on the
//! members, claim keys and aggregate-capped periods a batch touches before reading them
//! (`take_locks`, `Writer::lock`). Two batches that touch a common member, claim or capped period
//! take turns; others settle in parallel. The result equals the one-at-a-time order of the commits,
//! which is also the order of the sequence numbers of any two settlements or reversals that touched
//! something in common (docs/concurrency.md).
//!
//! PostgreSQL writers read members and accumulators from the database inside their transaction, so
//! several processes can share one database. SQLite's single writer keeps what it read and wrote
//! between transactions and checks SQLite's `data_version` at each one, so a change committed by
//! any other connection empties it (`store::cache`). Either way a restart needs no warm-up.

mod durable;
mod statistics;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use foldhash::{HashMap, HashMapExt};
use time::Date;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::domain::{
    layers_for, settle, settle_on, ApplyOutcome, Catalogue, Category, Claim, ClaimId, FieldErrors, HospitalId,
    LossRatio, MemberId, Money, PeriodKey, Settlement, Terms, VersionedTerms,
};
use crate::store::{
    fen, now_text, LockKey, NewSettlement, Prefetch, Store, StoreError, StoredSettlement, TotalsDelta, TxMode, Writer,
};

/// Errors of the ledger, mapped to gRPC status codes in one place (`api::error`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    #[error("invalid request: {0}")]
    Invalid(FieldErrors),
    #[error("member not found")]
    MemberNotFound,
    #[error("claim {claim_id} of hospital {hospital_id} was already settled with different content")]
    Conflict { hospital_id: String, claim_id: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("claim {claim_id} of hospital {hospital_id} is already reversed")]
    AlreadyReversed { hospital_id: String, claim_id: String },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for LedgerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Database(_) | StoreError::Sqlite(_) => LedgerError::Unavailable(e.to_string()),
            other => LedgerError::Internal(other.to_string()),
        }
    }
}

/// A settlement as the writer answers it.
#[derive(Debug, Clone)]
pub struct Settled {
    pub stored: StoredSettlement,
    /// An identical claim had been settled before; this is that settlement, unchanged.
    pub replay: bool,
}

/// One roster row, parsed by the API layer.
#[derive(Debug, Clone)]
pub struct EnrollRow {
    pub member_id: MemberId,
    pub category: Option<(Category, Date)>,
    /// The period and the premium (None: the product's premium per member).
    pub enrollment: Option<(PeriodKey, Option<Money>)>,
}

/// Running figures of one product period, as pushed to `WatchLossRatio`.
#[derive(Debug, Clone)]
pub struct LossRatioEvent {
    pub key: PeriodKey,
    pub figures: LossRatio,
    pub enrolled_members: i64,
}

enum Request {
    /// A claim with its canonical form (the JSON of its draft), computed by the caller's task so
    /// that the writer, which every claim waits for, does not.
    Settle(Claim, String),
    Reverse(HospitalId, ClaimId),
    ApplyTerms(Box<Terms>, String),
    Enroll(Vec<EnrollRow>),
    SetCategory(MemberId, Date, Category),
}

pub enum Response {
    Settled(Settled),
    Reversed(StoredSettlement),
    Applied(ApplyOutcome),
    Enrolled(Vec<Result<(), FieldErrors>>),
    CategorySet,
}

type Reply = oneshot::Sender<Result<Response, LedgerError>>;

struct Command {
    request: Request,
    reply: Reply,
}

/// Tuning of the writer.
#[derive(Debug, Clone, Copy)]
pub struct LedgerConfig {
    /// Commands that may wait for the writer; senders wait when it is full (back-pressure).
    pub queue_max: usize,
    /// Commands committed together at most.
    pub batch_max: usize,
    /// Writer tasks, each with its own connection and transactions (PostgreSQL; SQLite, which has
    /// one writer at a time, always uses one). A member's claims always go to the same writer.
    pub writers: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            queue_max: 4096,
            batch_max: 256,
            writers: 4,
        }
    }
}

/// The handle the API holds. Cloning it is cheap; the writer stops when every handle is dropped and
/// the queue is drained.
#[derive(Clone)]
pub struct Ledger {
    /// One queue per writer task.
    commands: Arc<[mpsc::Sender<Command>]>,
    store: Store,
    catalogue: Arc<RwLock<Arc<Catalogue>>>,
    loss_ratio: broadcast::Sender<LossRatioEvent>,
    /// Turns true when a writer could not make a commit durable (`durable`); closed where commits
    /// are durable when they return (PostgreSQL).
    durability_lost: watch::Receiver<bool>,
}

/// A pending answer from the writer.
pub type Pending = oneshot::Receiver<Result<Response, LedgerError>>;

impl Ledger {
    /// Loads the catalogue and starts the writer. Returns the handle and the writer's task, which
    /// ends once every handle is dropped and every queued command is answered.
    pub async fn start(
        store: Store,
        config: LedgerConfig,
    ) -> Result<(Ledger, tokio::task::JoinHandle<()>), LedgerError> {
        let mut first = store.writer().await?;
        // The count first: terms another process applies in between are then in the catalogue but
        // not in the count, and the first batch, finding more rows than counted, loads the
        // catalogue again. The other way round, the catalogue could miss terms the count holds, and
        // this process would apply them a second time.
        let terms_rows = first.terms_count().await?;
        let catalogue = first.load_catalogue().await?;
        let concurrent = first.concurrent();
        let writers = if concurrent { config.writers.max(1) } else { 1 };
        let catalogue = Arc::new(RwLock::new(Arc::new(catalogue)));
        let (loss_ratio, _) = broadcast::channel(1024);
        let (durability_lost, durability_lost_seen) = watch::channel(false);
        let mut senders = Vec::with_capacity(writers);
        let mut tasks = Vec::with_capacity(writers);
        let mut first = Some(first);
        let growth = Arc::new(statistics::GrowthTrigger::new());
        for _ in 0..writers {
            let writer = match first.take() {
                Some(w) => w,
                None => store.writer().await?,
            };
            let (tx, rx) = mpsc::channel(config.queue_max.max(1));
            senders.push(tx);
            let blocking = writer.blocking();
            let syncer = match writer.wal_sync() {
                Some(_) => Some(durable::Syncer::start(loss_ratio.clone(), durability_lost.clone())?),
                None => None,
            };
            let task = WriterTask {
                store: store.clone(),
                writer,
                commands: rx,
                catalogue: catalogue.clone(),
                terms_rows,
                batch_max: if concurrent {
                    config.batch_max.clamp(1, CONCURRENT_BATCH_MAX)
                } else {
                    config.batch_max.max(1)
                },
                loss_ratio: loss_ratio.clone(),
                growth: growth.clone(),
                syncer,
            };
            tasks.push(if blocking {
                run_on_own_thread(task)?
            } else {
                tokio::spawn(task.run())
            });
        }
        let handle = tokio::spawn(async move {
            for task in tasks {
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "a ledger writer task failed");
                }
            }
        });
        Ok((
            Ledger {
                commands: senders.into(),
                store,
                catalogue,
                loss_ratio,
                durability_lost: durability_lost_seen,
            },
            handle,
        ))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The catalogue as of the last commit.
    pub fn catalogue(&self) -> Arc<Catalogue> {
        match self.catalogue.read() {
            Ok(c) => c.clone(),
            // A writer panicking while holding the lock leaves a usable catalogue behind.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Turns true once a writer could not make a commit durable: from then on the ledger refuses
    /// every change (UNAVAILABLE) until the process is restarted. Never changes, and ends, where
    /// commits are durable when they return (PostgreSQL).
    pub fn durability_lost(&self) -> watch::Receiver<bool> {
        self.durability_lost.clone()
    }

    pub fn watch_loss_ratio(&self) -> broadcast::Receiver<LossRatioEvent> {
        self.loss_ratio.subscribe()
    }

    /// The writer a request goes to: a member's claims and category changes always to the same one,
    /// so that they keep the order a caller sent them in; a reversal by its claim key; enrollments
    /// and terms to the first.
    fn writer_for(&self, request: &Request) -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let n = self.commands.len();
        if n == 1 {
            return 0;
        }
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        let hash = match request {
            Request::Settle(claim, _) => hasher.hash_one(claim.member_id.as_str()),
            Request::SetCategory(member, ..) => hasher.hash_one(member.as_str()),
            Request::Reverse(hospital, claim) => hasher.hash_one((hospital.as_str(), claim.as_str())),
            Request::ApplyTerms(..) | Request::Enroll(..) => 0,
        };
        usize::try_from(hash % n as u64).unwrap_or(0)
    }

    async fn enqueue(&self, request: Request) -> Result<Pending, LedgerError> {
        let (reply, pending) = oneshot::channel();
        let writer = self.writer_for(&request);
        self.commands[writer]
            .send(Command { request, reply })
            .await
            .map_err(|_| LedgerError::Unavailable("the ledger is shutting down".into()))?;
        Ok(pending)
    }

    /// Queues a claim; the claims a caller queues one after another settle in that order.
    pub async fn enqueue_settle(&self, claim: Claim) -> Result<Pending, LedgerError> {
        let canonical = serde_json::to_string(&claim.to_draft()).map_err(|e| LedgerError::Internal(e.to_string()))?;
        self.enqueue(Request::Settle(claim, canonical)).await
    }

    pub async fn settle(&self, claim: Claim) -> Result<Settled, LedgerError> {
        match wait(self.enqueue_settle(claim).await?).await? {
            Response::Settled(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    pub async fn reverse(&self, hospital: HospitalId, claim: ClaimId) -> Result<StoredSettlement, LedgerError> {
        match wait(self.enqueue(Request::Reverse(hospital, claim)).await?).await? {
            Response::Reversed(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    pub async fn apply_terms(&self, terms: Terms, toml: String) -> Result<ApplyOutcome, LedgerError> {
        match wait(self.enqueue(Request::ApplyTerms(Box::new(terms), toml)).await?).await? {
            Response::Applied(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    pub async fn enroll(&self, rows: Vec<EnrollRow>) -> Result<Vec<Result<(), FieldErrors>>, LedgerError> {
        match wait(self.enqueue(Request::Enroll(rows)).await?).await? {
            Response::Enrolled(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    pub async fn set_category(&self, member: MemberId, effective: Date, category: Category) -> Result<(), LedgerError> {
        match wait(self.enqueue(Request::SetCategory(member, effective, category)).await?).await? {
            Response::CategorySet => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// Settles against the committed accumulators and writes nothing.
    pub async fn preview(&self, claim: &Claim) -> Result<Settlement, LedgerError> {
        let Some((member, acc)) = self.store.member_snapshot(&claim.member_id).await? else {
            return Err(LedgerError::MemberNotFound);
        };
        Ok(settle(&self.catalogue(), &member, claim, &acc))
    }
}

/// The name of a writer's own thread (SQLite's), by which `BenchService` finds its CPU time.
pub const WRITER_THREAD: &str = "claims-writer";

/// Commands waiting after a SQLite commit from which the writer hands the commit's sync to the
/// sync thread and goes on with them. With 64 callers of `SettleOne` and every sync handed over,
/// batches fell to a few claims each (most under 8, against about 64 when the writer syncs itself)
/// and the rate by 7%; from 32 it fell by 3%. One stream with 256 in flight leaves 96 to 160
/// waiting, and gained 21% either way (docs/benchmarks.md).
const HAND_OFF_FROM: usize = 32;

/// Runs a writer whose statements block (SQLite through rusqlite) on a thread of its own, with a
/// runtime of its own: its statements then block nothing else, and a batch costs one hand-off (the
/// channel) instead of two per statement. The returned task ends when the writer does.
fn run_on_own_thread(task: WriterTask) -> Result<tokio::task::JoinHandle<()>, LedgerError> {
    let (done, finished) = oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LedgerError::Internal(format!("could not build the writer's runtime: {e}")))?;
    std::thread::Builder::new()
        .name(WRITER_THREAD.into())
        .spawn(move || {
            runtime.block_on(task.run());
            let _ = done.send(());
        })
        .map_err(|e| LedgerError::Internal(format!("could not start the writer's thread: {e}")))?;
    Ok(tokio::spawn(async move {
        let _ = finished.await;
    }))
}

fn unexpected() -> LedgerError {
    LedgerError::Internal("the writer answered a different request".into())
}

/// Waits for the writer's answer to a queued command.
pub async fn wait(pending: Pending) -> Result<Response, LedgerError> {
    pending
        .await
        .map_err(|_| LedgerError::Unavailable("the ledger stopped before answering".into()))?
}

struct WriterTask {
    /// Where the writer's commits return before they are durable (SQLite): the thread that syncs
    /// them and then answers. First, so that it is dropped first: every batch handed to it is answered
    /// before the writer's connection closes (as `run` does when the queue closes), also when the
    /// task panics.
    syncer: Option<durable::Syncer>,
    store: Store,
    writer: Writer,
    commands: mpsc::Receiver<Command>,
    catalogue: Arc<RwLock<Arc<Catalogue>>>,
    /// Terms rows seen, to notice terms applied by another process.
    terms_rows: i64,
    batch_max: usize,
    loss_ratio: broadcast::Sender<LossRatioEvent>,
    /// Settlements committed by this process's writers, for the planner statistics (PostgreSQL).
    growth: Arc<statistics::GrowthTrigger>,
}

/// What a batch changed, to publish after its commit.
#[derive(Default)]
struct BatchEffects {
    /// The catalogue with this batch's terms (or reloaded), published only if the batch commits.
    catalogue: Option<Catalogue>,
    terms_rows_added: i64,
}

impl WriterTask {
    async fn run(mut self) {
        let mut batch: Vec<Command> = Vec::with_capacity(self.batch_max);
        loop {
            let received = self.commands.recv_many(&mut batch, self.batch_max).await;
            if received == 0 {
                break;
            }
            self.process(std::mem::take(&mut batch)).await;
        }
        // Every batch handed to the sync thread is answered before the connection closes.
        drop(self.syncer.take());
        tracing::info!("ledger writer stopped");
    }

    /// The figures of every touched product period, to publish; one query.
    async fn figures(&mut self, touched: &BTreeSet<PeriodKey>) -> Vec<(PeriodKey, LossRatio, i64)> {
        if touched.is_empty() {
            return Vec::new();
        }
        let keys: Vec<&PeriodKey> = touched.iter().collect();
        match self.writer.loss_ratios_of(&keys).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "could not read loss-ratio figures to publish");
                Vec::new()
            }
        }
    }

    /// Pushes the new figures of every touched product period to the metrics gauges and, with
    /// `broadcast`, to `WatchLossRatio` subscribers; one query.
    async fn publish(&mut self, touched: &BTreeSet<PeriodKey>, broadcast: bool) {
        let figures = self.figures(touched).await;
        durable::announce(figures, broadcast, &self.loss_ratio);
    }

    fn current_catalogue(&self) -> Arc<Catalogue> {
        match self.catalogue.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    #[tracing::instrument(skip_all, fields(batch = batch.len()))]
    async fn process(&mut self, batch: Vec<Command>) {
        if self.syncer.as_ref().is_some_and(durable::Syncer::failed) {
            for Command { reply, .. } in batch {
                let _ = reply.send(Err(durable::not_durable()));
            }
            return;
        }
        let mut effects = BatchEffects::default();
        let mut touched = BTreeSet::new();
        let mut answers: durable::Answers = Vec::with_capacity(batch.len());
        let started = std::time::Instant::now();
        let commands = batch.len();
        let outcome = self.run_batch(batch, &mut effects, &mut touched, &mut answers).await;
        let committed = match outcome {
            Ok(()) => match self.writer.commit().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "commit failed; the batch is answered UNAVAILABLE");
                    false
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "batch failed; rolling back");
                if let Err(e) = self.writer.rollback().await {
                    tracing::error!(error = %e, "rollback failed");
                }
                false
            }
        };
        metrics::histogram!("claims_ledger_batch_commands").record(commands as f64);
        metrics::histogram!("claims_ledger_batch_seconds").record(started.elapsed().as_secs_f64());
        if !committed {
            metrics::counter!("claims_ledger_batches_failed_total").increment(1);
            // Nothing of this batch is stored: the catalogue changes are dropped with `effects`,
            // and every command gets UNAVAILABLE so that callers retry (resubmission is safe).
            for (reply, _) in answers {
                let _ = reply.send(Err(LedgerError::Unavailable("the database refused the commit".into())));
            }
            // A fresh connection, in case the old one is what failed.
            match self.store.writer().await {
                Ok(fresh) => self.writer = fresh,
                Err(e) => tracing::error!(error = %e, "could not open a new writer connection"),
            }
            return;
        }
        if let Some(catalogue) = effects.catalogue {
            match self.catalogue.write() {
                Ok(mut c) => *c = Arc::new(catalogue),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(catalogue),
            }
        }
        self.terms_rows += effects.terms_rows_added;
        if self.writer.concurrent() {
            let settled = answers
                .iter()
                .filter(|(_, a)| matches!(a, Ok(Response::Settled(Settled { replay: false, .. }))))
                .count();
            if self.growth.add(settled as u64) {
                self.store
                    .refresh_statistics_in_background(crate::store::StatisticsOf::Settlements);
            }
        }
        // With watchers, the new figures go out before the replies (one query): a watcher sees a
        // change no later than the caller who made it hears of it, and one who starts watching
        // after a reply does not get that change again as if it were new. Without watchers the
        // replies go first and the query only updates the gauges: one who starts watching now
        // reads figures that already hold this batch's changes, and is not sent them again.
        let watched = self.loss_ratio.receiver_count() > 0;
        if let Some(wal) = self.writer.wal_sync() {
            // Committed, not yet durable. With a batch's worth of commands waiting, the sync thread
            // syncs and answers while the writer settles them; the figures are read now, before
            // the next batch changes them. With fewer, the writer syncs itself and answers as
            // below: they would make a small batch, and a stream of small batches, each with its
            // own commit, costs more than the sync thread saves (`HAND_OFF_FROM`).
            let here = self.commands.len() < HAND_OFF_FROM && self.syncer.as_ref().is_some_and(durable::Syncer::idle);
            if !here {
                let figures = self.figures(&touched).await;
                let delivery = durable::Delivery {
                    wal,
                    answers,
                    figures,
                    broadcast: watched,
                };
                match &self.syncer {
                    Some(syncer) => syncer.hand(delivery),
                    None => durable::refuse(delivery.answers),
                }
                return;
            }
            if !self.syncer.as_ref().is_some_and(|s| s.sync_here(&wal)) {
                durable::refuse(answers);
                return;
            }
        }
        if watched {
            self.publish(&touched, true).await;
        }
        durable::answer(answers);
        if !watched {
            self.publish(&touched, false).await;
        }
    }

    /// Runs every command of the batch inside one transaction. An `Err` means a database failure:
    /// the whole batch is rolled back. Refusals (conflicts, bad rows) are answers, not failures,
    /// and write nothing.
    async fn run_batch(
        &mut self,
        batch: Vec<Command>,
        effects: &mut BatchEffects,
        touched: &mut BTreeSet<PeriodKey>,
        answers: &mut durable::Answers,
    ) -> Result<(), StoreError> {
        let plan = if self.writer.concurrent() {
            Some(lock_plan(&mut self.writer, &batch).await?)
        } else {
            None
        };
        let exclusive = batch.iter().any(|c| matches!(c.request, Request::ApplyTerms(..)))
            || plan.as_ref().is_some_and(|p| p.first.len() > LOCKS_PER_BATCH_MAX);
        let mode = if exclusive { TxMode::Exclusive } else { TxMode::Shared };
        let shared = self.current_catalogue();
        let stored_rows = match &plan {
            Some(plan) => {
                self.writer
                    .begin_prefetching(mode, prefetch_of(plan, &batch, &shared))
                    .await?
            }
            None => self.writer.begin(mode).await?,
        };
        if let Some(stored_rows) = stored_rows {
            if stored_rows != self.terms_rows {
                // Another writer or process applied terms: what was locked and read for the old
                // catalogue may fall short of the new one's (commands take missing locks late).
                self.writer.forget_prefetched_totals();
                effects.catalogue = Some(self.writer.load_catalogue().await?);
                effects.terms_rows_added = stored_rows - self.terms_rows;
            }
        }
        if let (Some(plan), TxMode::Shared) = (plan, mode) {
            take_period_locks(&mut self.writer, plan, effects.catalogue.as_ref().unwrap_or(&shared)).await?;
        }
        // Consecutive claims are settled together as one run; any other command ends the run, so
        // every command still sees exactly the effects of those before it.
        let mut run: Vec<(Claim, String, Reply)> = Vec::new();
        let mut commands = batch.into_iter().peekable();
        while let Some(Command { request, reply }) = commands.next() {
            let request = match request {
                Request::Settle(claim, canonical) => {
                    run.push((claim, canonical, reply));
                    if matches!(
                        commands.peek(),
                        Some(Command {
                            request: Request::Settle(..),
                            ..
                        })
                    ) {
                        continue;
                    }
                    let mut claims = Vec::with_capacity(run.len());
                    let mut canonical = Vec::with_capacity(run.len());
                    let mut replies = Vec::with_capacity(run.len());
                    for (claim, json, reply) in std::mem::take(&mut run) {
                        claims.push(claim);
                        canonical.push(json);
                        replies.push(reply);
                    }
                    let catalogue = effects.catalogue.as_ref().unwrap_or(&shared);
                    let last = commands.peek().is_none();
                    let results = settle_run(&mut self.writer, &claims, canonical, catalogue, touched, last).await?;
                    for (reply, result) in replies.into_iter().zip(results) {
                        answers.push((reply, result.map(Response::Settled)));
                    }
                    continue;
                }
                other => other,
            };
            let answer = match request {
                Request::Settle(..) => Err(LedgerError::Internal("a claim outside its run".into())),
                Request::Reverse(hospital, claim) => {
                    let catalogue = effects.catalogue.as_ref().unwrap_or(&shared);
                    reverse(&mut self.writer, catalogue, &hospital, &claim, touched)
                        .await?
                        .map(Response::Reversed)
                }
                Request::ApplyTerms(terms, toml) => {
                    let working = effects.catalogue.get_or_insert_with(|| (*shared).clone());
                    let answer = apply_terms(&mut self.writer, working, *terms, &toml).await?;
                    if matches!(answer, Ok(ApplyOutcome::NewPeriod | ApplyOutcome::NewVersion { .. })) {
                        effects.terms_rows_added += 1;
                    }
                    answer.map(Response::Applied)
                }
                Request::Enroll(rows) => {
                    let catalogue = effects.catalogue.as_ref().unwrap_or(&shared);
                    Ok(Response::Enrolled(
                        enroll(&mut self.writer, catalogue, rows, touched).await?,
                    ))
                }
                Request::SetCategory(member, effective, category) => {
                    self.writer.lock([LockKey::member(&member)]).await?;
                    match self.writer.member(&member).await? {
                        None => Err(LedgerError::MemberNotFound),
                        Some(_) => {
                            self.writer.set_category(&member, effective, category).await?;
                            Ok(Response::CategorySet)
                        }
                    }
                }
            };
            answers.push((reply, answer));
        }
        Ok(())
    }
}

/// Settles a run of consecutive claims of one batch: loads what they need in three queries, settles
/// them one after another in memory (each sees the changes of those before it), and appends them in
/// a few multi-row statements. The result is exactly that of settling them one at a time. `last`:
/// nothing of the batch follows the run, so the store may commit with its writes
/// ([`Writer::insert_settlements`]); what the run reads after them (replays' stored settlements,
/// which never change) it may read after the commit.
async fn settle_run(
    w: &mut Writer,
    claims: &[Claim],
    canonical: Vec<String>,
    catalogue: &Catalogue,
    touched: &mut BTreeSet<PeriodKey>,
    last: bool,
) -> Result<Vec<Result<Settled, LedgerError>>, StoreError> {
    let keys: Vec<(&str, &str)> = claims
        .iter()
        .map(|c| (c.hospital_id.as_str(), c.claim_id.as_str()))
        .collect();
    let mut member_ids: Vec<&MemberId> = claims.iter().map(|c| &c.member_id).collect();
    member_ids.sort();
    member_ids.dedup();
    // Held already when `take_locks` saw the batch: then these take nothing.
    w.lock(
        member_ids
            .iter()
            .map(|m| LockKey::member(m))
            .chain(keys.iter().map(|(h, c)| LockKey::claim(h, c))),
    )
    .await?;
    let stored = w.claims_by_keys(&keys).await?;
    let members = w.members(&member_ids).await?;
    // Each claim's layers, found once: their periods are locked and read before any is settled.
    let layers: Vec<Vec<&Arc<VersionedTerms>>> = claims
        .iter()
        .map(|c| match members.get(&c.member_id) {
            Some(member) => layers_for(catalogue, member, c.service_date),
            None => Vec::new(),
        })
        .collect();
    let periods: BTreeSet<PeriodKey> = layers.iter().flatten().map(|v| v.terms.key()).collect();
    w.lock(capped_period_locks(catalogue, &periods)).await?;
    let periods: Vec<PeriodKey> = periods.into_iter().collect();
    let mut book = w.accumulators(&member_ids, &periods).await?;

    enum Outcome {
        New(Box<Settlement>),
        /// An identical claim earlier in this run.
        SameAs(usize),
        /// An identical claim stored before.
        Stored,
        Refused(LedgerError),
    }
    let mut outcomes = Vec::with_capacity(claims.len());
    let mut first_in_run: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, claim) in claims.iter().enumerate() {
        let key = keys[i];
        let conflict = || LedgerError::Conflict {
            hospital_id: claim.hospital_id.to_string(),
            claim_id: claim.claim_id.to_string(),
        };
        let outcome = if let Some((_, stored_json)) = stored.get(&(key.0.to_owned(), key.1.to_owned())) {
            if *stored_json == canonical[i] {
                Outcome::Stored
            } else {
                Outcome::Refused(conflict())
            }
        } else if let Some(&first) = first_in_run.get(&key) {
            if canonical[first] == canonical[i] {
                Outcome::SameAs(first)
            } else {
                Outcome::Refused(conflict())
            }
        } else if let Some(member) = members.get(&claim.member_id) {
            let settlement = settle_on(&layers[i], member, claim, &book);
            book.apply(&settlement.changes);
            first_in_run.insert(key, i);
            Outcome::New(Box::new(settlement))
        } else {
            Outcome::Refused(LedgerError::MemberNotFound)
        };
        outcomes.push(outcome);
    }

    let settled_at = now_text();
    let new_rows: Vec<NewSettlement<'_>> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Outcome::New(s) => Some(NewSettlement {
                claim_json: &canonical[i],
                settlement: s,
                settled_at: &settled_at,
            }),
            _ => None,
        })
        .collect();
    let seqs = w.insert_settlements(&new_rows, last).await?;
    drop(new_rows);

    let mut seq_of: HashMap<usize, i64> = HashMap::new();
    let mut next_seq = seqs.into_iter();
    for (i, o) in outcomes.iter().enumerate() {
        if let Outcome::New(s) = o {
            touched.extend(s.paying_periods());
            if let Some(seq) = next_seq.next() {
                seq_of.insert(i, seq);
            }
        }
    }
    // The settlements and canonical claims move into the answers; only a replay within the run
    // copies the answer it repeats (which comes earlier, so is already built).
    let mut canonical = canonical;
    let mut results: Vec<Result<Settled, LedgerError>> = Vec::with_capacity(claims.len());
    for (i, o) in outcomes.into_iter().enumerate() {
        let result = match o {
            Outcome::New(s) => match seq_of.get(&i) {
                Some(&seq) => Ok(Settled {
                    stored: StoredSettlement {
                        settlement: *s,
                        seq,
                        settled_at: settled_at.clone(),
                        reversed_at: None,
                        claim_json: std::mem::take(&mut canonical[i]),
                    },
                    replay: false,
                }),
                None => Err(LedgerError::Internal("a settlement was stored without a number".into())),
            },
            Outcome::SameAs(first) => match results.get(first) {
                Some(Ok(Settled { stored, .. })) => Ok(Settled {
                    stored: stored.clone(),
                    replay: true,
                }),
                _ => Err(LedgerError::Internal("a replay points at no settlement".into())),
            },
            Outcome::Stored => {
                match w
                    .settlement_by_key(claims[i].hospital_id.as_str(), claims[i].claim_id.as_str())
                    .await?
                {
                    Some(stored) => Ok(Settled { stored, replay: true }),
                    None => Err(LedgerError::Internal(
                        "a settlement vanished during its transaction".into(),
                    )),
                }
            }
            Outcome::Refused(e) => Err(e),
        };
        results.push(result);
    }
    Ok(results)
}

async fn reverse(
    w: &mut Writer,
    catalogue: &Catalogue,
    hospital: &HospitalId,
    claim: &ClaimId,
    touched: &mut BTreeSet<PeriodKey>,
) -> Result<Result<StoredSettlement, LedgerError>, StoreError> {
    w.lock([LockKey::claim(hospital.as_str(), claim.as_str())]).await?;
    let Some(mut stored) = w.settlement_by_key(hospital.as_str(), claim.as_str()).await? else {
        return Ok(Err(LedgerError::NotFound(format!(
            "settlement of claim {claim} of hospital {hospital}"
        ))));
    };
    if stored.reversed_at.is_some() {
        return Ok(Err(LedgerError::AlreadyReversed {
            hospital_id: hospital.to_string(),
            claim_id: claim.to_string(),
        }));
    }
    // The settlement itself never changes, but its member's and capped periods' figures do.
    w.lock([LockKey::member(&stored.settlement.member_id)]).await?;
    let periods: BTreeSet<PeriodKey> = stored.settlement.layers.iter().map(|l| l.key()).collect();
    w.lock(capped_period_locks(catalogue, &periods)).await?;
    let reversed_at = now_text();
    w.insert_reversal(stored.seq, &stored.settlement, &reversed_at).await?;
    touched.extend(stored.settlement.paying_periods());
    stored.reversed_at = Some(reversed_at);
    Ok(Ok(stored))
}

async fn apply_terms(
    w: &mut Writer,
    working: &mut Catalogue,
    terms: Terms,
    toml: &str,
) -> Result<Result<ApplyOutcome, LedgerError>, StoreError> {
    let outcome = match working.check(&terms) {
        Ok(outcome) => outcome,
        Err(errors) => return Ok(Err(LedgerError::Invalid(errors))),
    };
    if !matches!(outcome, ApplyOutcome::Unchanged { .. }) {
        w.insert_terms(&terms, toml, outcome.version(), &now_text()).await?;
        working.insert_version(terms, outcome.version());
    }
    Ok(Ok(outcome))
}

/// Imports a chunk of roster rows in a few set-based statements (members, categories, premiums
/// read, enrollments, totals), with the result of applying the rows one after another: a later row
/// for the same enrollment or the same category date replaces an earlier one, and the running
/// figures count each member once per period.
async fn enroll(
    w: &mut Writer,
    catalogue: &Catalogue,
    rows: Vec<EnrollRow>,
    touched: &mut BTreeSet<PeriodKey>,
) -> Result<Vec<Result<(), FieldErrors>>, StoreError> {
    let now = now_text();
    let mut results = Vec::with_capacity(rows.len());
    let mut accepted: Vec<(EnrollRow, Option<(PeriodKey, i64)>)> = Vec::with_capacity(rows.len());
    for row in rows {
        let mut enrollment = None;
        if let Some((key, premium)) = &row.enrollment {
            match catalogue.get(key) {
                Some(v) => {
                    let premium = premium.unwrap_or(v.terms.product.premium_per_member);
                    enrollment = Some((key.clone(), fen(premium.decimal(), "enrollments")?));
                }
                None => {
                    results.push(Err(FieldErrors::single(
                        "product_code",
                        format!("no product period {key} has been applied"),
                    )));
                    continue;
                }
            }
        }
        results.push(Ok(()));
        accepted.push((row, enrollment));
    }
    // Held already when `take_locks` saw the batch (members, then capped periods, ascending).
    w.lock(accepted.iter().map(|(r, _)| LockKey::member(&r.member_id)))
        .await?;
    let periods: BTreeSet<PeriodKey> = accepted
        .iter()
        .filter_map(|(_, e)| e.as_ref().map(|(k, _)| k.clone()))
        .collect();
    w.lock(capped_period_locks(catalogue, &periods)).await?;

    let mut members: Vec<&MemberId> = accepted.iter().map(|(r, _)| &r.member_id).collect();
    members.sort();
    members.dedup();
    w.ensure_members(&members, &now).await?;

    let mut categories: BTreeMap<(&MemberId, Date), Category> = BTreeMap::new();
    for (row, _) in &accepted {
        if let Some((category, effective)) = row.category {
            categories.insert((&row.member_id, effective), category);
        }
    }
    w.set_categories(&categories).await?;

    let mut keys: Vec<(&MemberId, &PeriodKey)> = accepted
        .iter()
        .filter_map(|(r, e)| e.as_ref().map(|(k, _)| (&r.member_id, k)))
        .collect();
    keys.sort();
    keys.dedup();
    let mut premiums = w.enrollment_premiums(&keys).await?;
    let mut totals: BTreeMap<PeriodKey, TotalsDelta> = BTreeMap::new();
    let mut stored: BTreeMap<(&MemberId, &PeriodKey), i64> = BTreeMap::new();
    for (row, enrollment) in &accepted {
        let Some((key, premium)) = enrollment else { continue };
        let delta = match premiums.insert((row.member_id.clone(), key.clone()), *premium) {
            Some(previous) => TotalsDelta {
                written_premium_fen: premium - previous,
                ..TotalsDelta::default()
            },
            None => TotalsDelta {
                written_premium_fen: *premium,
                enrolled_members: 1,
                ..TotalsDelta::default()
            },
        };
        totals.entry(key.clone()).or_default().add(&delta);
        stored.insert((&row.member_id, key), *premium);
        touched.insert(key.clone());
    }
    w.upsert_enrollments(&stored).await?;
    // One upsert for the chunk, in period order, rather than one per row.
    w.add_to_totals(&totals).await?;
    Ok(results)
}

/// The locks of those `periods` whose terms set an aggregate cap: every member's payouts there count
/// against one figure, so settlements that pay in such a period take turns. Other periods' running
/// figures are sums that any order gives alike, and need no lock.
fn capped_period_locks(catalogue: &Catalogue, periods: &BTreeSet<PeriodKey>) -> Vec<LockKey> {
    periods
        .iter()
        .filter(|key| {
            catalogue
                .get(key)
                .is_some_and(|v| v.terms.product.aggregate_cap.is_some())
        })
        .map(LockKey::period)
        .collect()
}

/// Batches of concurrent writers (PostgreSQL) hold at most this many claims, so that their locks
/// stay within [`LOCKS_PER_BATCH_MAX`] and many writers fit in PostgreSQL's lock table.
const CONCURRENT_BATCH_MAX: usize = 128;

/// Advisory locks a batch takes one by one at most; a batch that would need more (a large roster
/// chunk) takes the global lock exclusively instead. PostgreSQL's lock table holds
/// `max_locks_per_transaction` × (`max_connections` + `max_prepared_transactions`) locks, 6,400 with
/// the defaults: room for about 24 writers in all processes together (docs/concurrency.md).
const LOCKS_PER_BATCH_MAX: usize = 256;

/// The locks of a batch that are known before its transaction starts.
struct LockPlan {
    /// Members and claim keys.
    first: BTreeSet<LockKey>,
    /// Product periods named by the batch itself (enrollments, reversed settlements); the members'
    /// enrolled periods are added once the members are locked.
    periods: BTreeSet<PeriodKey>,
    /// Members with claims in the batch.
    claimants: Vec<MemberId>,
}

/// What a batch will lock, read before its transaction (stored settlements never change, so the
/// member of a claim to reverse can be read first).
async fn lock_plan(w: &mut Writer, batch: &[Command]) -> Result<LockPlan, StoreError> {
    let mut plan = LockPlan {
        first: BTreeSet::new(),
        periods: BTreeSet::new(),
        claimants: Vec::new(),
    };
    for command in batch {
        match &command.request {
            Request::Settle(claim, _) => {
                plan.first.insert(LockKey::member(&claim.member_id));
                plan.first
                    .insert(LockKey::claim(claim.hospital_id.as_str(), claim.claim_id.as_str()));
                plan.claimants.push(claim.member_id.clone());
            }
            Request::Reverse(hospital, claim) => {
                plan.first.insert(LockKey::claim(hospital.as_str(), claim.as_str()));
                if let Some(stored) = w.settlement_by_key(hospital.as_str(), claim.as_str()).await? {
                    plan.first.insert(LockKey::member(&stored.settlement.member_id));
                    plan.periods.extend(stored.settlement.layers.iter().map(|l| l.key()));
                }
            }
            Request::Enroll(rows) => {
                for row in rows {
                    plan.first.insert(LockKey::member(&row.member_id));
                    if let Some((key, _)) = &row.enrollment {
                        plan.periods.insert(key.clone());
                    }
                }
            }
            Request::SetCategory(member, ..) => {
                plan.first.insert(LockKey::member(member));
            }
            Request::ApplyTerms(..) => {}
        }
    }
    plan.claimants.sort();
    plan.claimants.dedup();
    Ok(plan)
}

/// What a batch of concurrent writers locks and reads as it begins, in one round trip
/// ([`Writer::begin_prefetching`]): the locks of the members and claim keys of its commands (see
/// [`Writer::lock`]), then what its claims read: stored settlements, members, usage, and the totals
/// of the product periods without an aggregate cap that their service dates fall in. The capped
/// periods' locks follow ([`take_period_locks`]), and their totals are read after them.
fn prefetch_of<'a>(plan: &'a LockPlan, batch: &'a [Command], catalogue: &Catalogue) -> Prefetch<'a> {
    let mut claims = Vec::new();
    let mut dates = BTreeSet::new();
    for command in batch {
        if let Request::Settle(claim, _) = &command.request {
            claims.push((claim.hospital_id.as_str(), claim.claim_id.as_str()));
            dates.insert(claim.service_date);
        }
    }
    let periods: BTreeSet<PeriodKey> = catalogue
        .iter()
        .filter(|v| dates.iter().any(|d| v.terms.product.period.contains(*d)))
        .map(|v| v.terms.key())
        .collect();
    Prefetch {
        locks: plan.first.clone(),
        claims,
        members: plan.claimants.iter().collect(),
        periods: periods
            .into_iter()
            .filter(|key| {
                catalogue
                    .get(key)
                    .is_some_and(|v| v.terms.product.aggregate_cap.is_none())
            })
            .collect(),
    }
}

/// Takes, once the members and claim keys of a batch of concurrent writers are locked, the locks of
/// the aggregate-capped periods those members are enrolled in and its other commands name, in one
/// call of ascending keys (see [`Writer::lock`]); the members were read with the first locks, so
/// this costs a round trip only when there are such periods. Commands check their own locks again
/// as they run; what this missed (a claim settled by another process after the plan was made, and
/// reversed in this batch) is taken then.
async fn take_period_locks(w: &mut Writer, mut plan: LockPlan, catalogue: &Catalogue) -> Result<(), StoreError> {
    let claimants: Vec<&MemberId> = plan.claimants.iter().collect();
    for member in w.members(&claimants).await?.into_values() {
        plan.periods.extend(member.enrollments.keys().cloned());
    }
    w.lock(capped_period_locks(catalogue, &plan.periods)).await
}
