//! Answers of a writer whose commits return before they are durable (SQLite's), sent once they are.
//!
//! The SQLite writer commits a batch without waiting for the WAL to reach the disk and hands the
//! batch's answers here; a thread of this module's own syncs the WAL (one sync for every batch
//! handed over while the one before ran) and only then sends the answers and the loss-ratio figures
//! the batch changed. Meanwhile the writer settles the next batch: the sync, a millisecond or more
//! for a batch, no longer leaves it idle (docs/benchmarks.md). An answer still goes out only after
//! the commit it reports is durable, as before.
//!
//! A failed sync may have lost writes the kernel had accepted, and a later sync may then succeed
//! without them (Linux marks failed pages clean). So after one, nothing of this writer is ever
//! acknowledged again: the batches of that sync and every later one are answered UNAVAILABLE,
//! and the writer refuses new commands, until the process is restarted and SQLite recovers what
//! the disk holds. Resubmitting a claim is safe: it replays if it was stored after all.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use super::{LedgerError, LossRatioEvent, Reply, Response};
use crate::domain::{LossRatio, PeriodKey};
use crate::store::WalSync;

/// A batch's commands' answers, each with the channel it goes back on.
pub(super) type Answers = Vec<(Reply, Result<Response, LedgerError>)>;

/// A committed batch waiting for its sync.
pub(super) struct Delivery {
    /// The WAL the batch was committed to.
    pub wal: WalSync,
    pub answers: Answers,
    /// The figures of the product periods the batch changed, read right after its commit.
    pub figures: Vec<(PeriodKey, LossRatio, i64)>,
    /// Whether `figures` go to `WatchLossRatio` subscribers (sent before the answers), or only to
    /// the metrics gauges (after them).
    pub broadcast: bool,
}

/// Sends each answer and publishes the figures: with `broadcast`, the figures first (a watcher
/// sees a change no later than the caller who made it hears of it), otherwise the answers first.
pub(super) fn deliver(
    answers: Answers,
    figures: Vec<(PeriodKey, LossRatio, i64)>,
    broadcast: bool,
    loss_ratio: &broadcast::Sender<LossRatioEvent>,
) {
    if broadcast {
        announce(figures, true, loss_ratio);
        answer(answers);
    } else {
        answer(answers);
        announce(figures, false, loss_ratio);
    }
}

/// Sends each answer.
pub(super) fn answer(answers: Answers) {
    for (reply, answer) in answers {
        // A caller that went away (dropped stream) does not undo a committed settlement.
        let _ = reply.send(answer);
    }
}

/// Records the figures on the metrics gauges and, with `broadcast`, sends them to subscribers.
pub(super) fn announce(
    figures: Vec<(PeriodKey, LossRatio, i64)>,
    broadcast: bool,
    loss_ratio: &broadcast::Sender<LossRatioEvent>,
) {
    for (key, figures, enrolled_members) in figures {
        crate::telemetry::record_loss_ratio(&key, &figures);
        if broadcast {
            let _ = loss_ratio.send(LossRatioEvent {
                key,
                figures,
                enrolled_members,
            });
        }
    }
}

/// The refusal of a batch whose commit may not be durable, and, once a sync failed, of every
/// command the writer is handed.
pub(super) fn not_durable() -> LedgerError {
    LedgerError::Unavailable(
        "the database could not make a commit durable; this server accepts no more changes until it is restarted"
            .into(),
    )
}

/// Refuses every command of a batch.
pub(super) fn refuse(answers: Answers) {
    for (reply, _) in answers {
        let _ = reply.send(Err(not_durable()));
    }
}

/// The sync thread of one writer. Dropping it waits for every batch handed over to be answered.
pub(super) struct Syncer {
    deliveries: Option<std::sync::mpsc::Sender<Delivery>>,
    failed: Arc<Failed>,
    /// Batches handed over and not yet answered.
    pending: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Set once a sync failed, for good.
struct Failed {
    flag: AtomicBool,
    lost: watch::Sender<bool>,
}

impl Failed {
    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.flag.store(true, Ordering::Release);
        self.lost.send_replace(true);
    }

    /// Counts a sync made `on` the writer or the sync thread, or, when it failed, says so, counts
    /// the `batches` it was for as failed and sets the flag. Whether it succeeded.
    fn record(&self, result: std::io::Result<()>, on: &'static str, batches: usize) -> bool {
        match result {
            Ok(()) => {
                metrics::counter!("claims_ledger_wal_syncs_total", "on" => on).increment(1);
                true
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "the WAL could not be synced; no further change is acknowledged until a restart"
                );
                metrics::counter!("claims_ledger_batches_failed_total").increment(batches as u64);
                self.set();
                false
            }
        }
    }
}

/// The name of the sync thread.
pub const SYNC_THREAD: &str = "claims-wal-sync";

impl Syncer {
    /// `lost` turns true when a sync fails (the health service reports it).
    pub(super) fn start(
        loss_ratio: broadcast::Sender<LossRatioEvent>,
        lost: watch::Sender<bool>,
    ) -> Result<Syncer, LedgerError> {
        let (deliveries, handed) = std::sync::mpsc::channel::<Delivery>();
        let failed = Arc::new(Failed {
            flag: AtomicBool::new(false),
            lost,
        });
        let failed_flag = failed.clone();
        let pending = Arc::new(AtomicUsize::new(0));
        let unanswered = pending.clone();
        let thread = std::thread::Builder::new()
            .name(SYNC_THREAD.into())
            .spawn(move || {
                while let Ok(first) = handed.recv() {
                    let mut group = vec![first];
                    group.extend(handed.try_iter());
                    let synced =
                        !failed_flag.is_set() && failed_flag.record(sync_all(&group), "sync_thread", group.len());
                    let answered = group.len();
                    for d in group {
                        if synced {
                            deliver(d.answers, d.figures, d.broadcast, &loss_ratio);
                        } else {
                            refuse(d.answers);
                        }
                    }
                    unanswered.fetch_sub(answered, Ordering::AcqRel);
                }
            })
            .map_err(|e| LedgerError::Internal(format!("could not start the WAL sync thread: {e}")))?;
        Ok(Syncer {
            deliveries: Some(deliveries),
            failed,
            pending,
            thread: Some(thread),
        })
    }

    /// A sync failed: nothing more may be acknowledged.
    pub(super) fn failed(&self) -> bool {
        self.failed.is_set()
    }

    /// Hands a committed batch over; its answers go out once a sync begun after now succeeds.
    pub(super) fn hand(&self, delivery: Delivery) {
        let Some(deliveries) = &self.deliveries else {
            refuse(delivery.answers);
            return;
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(std::sync::mpsc::SendError(delivery)) = deliveries.send(delivery) {
            // The thread is gone (it panicked): nobody can sync for this batch.
            tracing::error!("the WAL sync thread stopped; the batch is refused");
            self.failed.set();
            self.pending.fetch_sub(1, Ordering::AcqRel);
            refuse(delivery.answers);
        }
    }

    /// Whether the sync thread has nothing handed over unanswered (and no sync failed): a batch
    /// synced on the writer's own thread ([`Syncer::sync_here`]) is then answered in commit order.
    pub(super) fn idle(&self) -> bool {
        !self.failed() && self.pending.load(Ordering::Acquire) == 0
    }

    /// Syncs `wal` on the calling thread: for a writer with nothing else to do, which would only
    /// wait for the sync thread, whose wake-up costs a lone caller's latency (docs/benchmarks.md).
    /// `false`: the sync failed, and nothing more may be acknowledged.
    pub(super) fn sync_here(&self, wal: &WalSync) -> bool {
        self.failed.record(wal.sync(), "writer", 1)
    }
}

/// Syncs each WAL of the group once (one, unless the writer's connection was replaced in between).
fn sync_all(group: &[Delivery]) -> std::io::Result<()> {
    let mut synced: Vec<&WalSync> = Vec::with_capacity(1);
    for d in group {
        if !synced.iter().any(|w| w.same(&d.wal)) {
            d.wal.sync()?;
            synced.push(&d.wal);
        }
    }
    Ok(())
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.deliveries.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the WAL sync thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ApplyOutcome;
    use tokio::sync::oneshot;

    type Receivers = Vec<oneshot::Receiver<Result<Response, LedgerError>>>;

    fn batch(n: usize) -> (Answers, Receivers) {
        (0..n)
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                ((tx, Ok(Response::Applied(ApplyOutcome::Unchanged { version: 1 }))), rx)
            })
            .unzip()
    }

    fn answered_ok(rx: oneshot::Receiver<Result<Response, LedgerError>>) -> bool {
        matches!(
            rx.blocking_recv(),
            Ok(Ok(Response::Applied(ApplyOutcome::Unchanged { version: 1 })))
        )
    }

    fn refused(rx: oneshot::Receiver<Result<Response, LedgerError>>) -> bool {
        matches!(rx.blocking_recv(), Ok(Err(LedgerError::Unavailable(_))))
    }

    #[test]
    fn answers_go_out_after_a_sync_of_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claims.db-wal");
        std::fs::write(&path, b"frames").unwrap();
        let (events, mut watching) = broadcast::channel(4);
        let (lost, lost_seen) = watch::channel(false);
        let syncer = Syncer::start(events, lost).unwrap();
        let (answers, receivers) = batch(3);
        syncer.hand(Delivery {
            wal: WalSync::open(path).unwrap(),
            answers,
            figures: Vec::new(),
            broadcast: true,
        });
        drop(syncer);
        assert!(receivers.into_iter().all(answered_ok));
        assert!(watching.try_recv().is_err(), "no figures, nothing broadcast");
        assert!(!*lost_seen.borrow());
    }

    #[test]
    fn a_failed_sync_refuses_its_batch_and_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("claims.db-wal");
        std::fs::write(&good, b"frames").unwrap();
        let (events, _) = broadcast::channel(4);
        let (lost, lost_seen) = watch::channel(false);
        let syncer = Syncer::start(events, lost).unwrap();
        // A WAL whose path no longer names it: the sync fails.
        let gone = dir.path().join("gone-wal");
        std::fs::write(&gone, b"frames").unwrap();
        let gone_wal = WalSync::open(gone.clone()).unwrap();
        std::fs::remove_file(&gone).unwrap();
        let (first, first_rx) = batch(2);
        syncer.hand(Delivery {
            wal: gone_wal,
            answers: first,
            figures: Vec::new(),
            broadcast: false,
        });
        assert!(first_rx.into_iter().all(refused));
        assert!(syncer.failed());
        assert!(*lost_seen.borrow(), "the health service is told");
        // A later batch on a WAL that would sync is refused all the same.
        let (later, later_rx) = batch(2);
        syncer.hand(Delivery {
            wal: WalSync::open(good).unwrap(),
            answers: later,
            figures: Vec::new(),
            broadcast: false,
        });
        drop(syncer);
        assert!(later_rx.into_iter().all(refused));
    }
}
