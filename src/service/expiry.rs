//! Expiry events from the deadline index: KEY_EXPIRED and GRACE_ENDED
//! shortly after a key's record ends, and KEY_EXPIRING ahead of it.
//!
//! Every replica looks for ends that have come every `check_interval` and
//! claims each one; the claim and the event are one atomic store step, so
//! an end is reported once whichever replica gets it, and one that a
//! revoke or delete removed first is never reported. Once per
//! `sweep_interval`, one replica (the one that takes the sweep's lease)
//! warns of the ends to come; each warning is recorded with a marker in the
//! same step, so it is sent once per key, end and lead time however often
//! and by whomever the window is swept.

use crate::domain::expiry::{self, LeadTimes};
use crate::domain::{KeyEndKind, UnixMillis};
use crate::store::{Store, StoreResult};
use std::sync::Arc;
use std::time::Duration;

/// Index entries read per store call.
const BATCH: usize = 500;
/// Longest wait between attempts to take the sweep's lease, so a sweep
/// starts soon after the last one's lease lapses.
const MAX_SWEEP_ATTEMPT_INTERVAL: Duration = Duration::from_secs(60);

/// How often one replica sweeps when `--expiry-sweep-interval` is not given.
pub const DEFAULT_SWEEP_INTERVAL: &str = "24h";

/// How expiry events are produced.
#[derive(Debug, Clone)]
pub struct ExpiryOptions {
    /// Lead times of KEY_EXPIRING (`--expiry-warnings`).
    pub lead_times: LeadTimes,
    /// How often one replica sweeps for ends to warn of
    /// (`--expiry-sweep-interval`).
    pub sweep_interval: Duration,
    /// How often each replica looks for ends that have come: the delay, at
    /// worst, between a key's end and its event.
    pub check_interval: Duration,
    /// This replica's name on the sweep's lease.
    pub holder: String,
}

impl Default for ExpiryOptions {
    fn default() -> Self {
        Self {
            lead_times: LeadTimes::default(),
            sweep_interval: humantime::parse_duration(DEFAULT_SWEEP_INTERVAL)
                .expect("the default sweep interval is a duration"),
            check_interval: Duration::from_secs(1),
            holder: format!("keyrack-{:016x}", rand::random::<u64>()),
        }
    }
}

/// Produces expiry events until the task is aborted (at shutdown). A store
/// error is logged and retried at the next tick: an end stays in the index
/// until some replica reports it.
pub async fn run(store: Arc<dyn Store>, options: ExpiryOptions) {
    tokio::join!(
        report_ends(Arc::clone(&store), options.check_interval),
        sweep_periodically(store, options),
    );
}

/// Reports every end that has come, every `interval`.
async fn report_ends(store: Arc<dyn Store>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = report_ends_due(&*store).await {
            tracing::warn!(%error, "could not report the keys that ended");
        }
    }
}

/// Claims and reports every end up to now; returns how many this replica
/// reported.
pub async fn report_ends_due(store: &dyn Store) -> StoreResult<usize> {
    let now = UnixMillis::now();
    let mut reported = 0;
    loop {
        let due = store
            .key_ends_between(UnixMillis(i64::MIN), now, BATCH)
            .await?;
        let mut claimed = 0;
        for end in &due {
            if store.record_key_end(end, &expiry::end_event(end)).await? {
                claimed += 1;
            }
        }
        reported += claimed;
        // Claimed entries leave the index, by us or another replica, so
        // the next read starts after them; a full batch none of which we
        // claimed is left to the next tick rather than read again at once.
        if due.len() < BATCH || claimed == 0 {
            return Ok(reported);
        }
    }
}

/// Gives old keys their index entries, then sweeps whenever this replica
/// takes the sweep's lease.
async fn sweep_periodically(store: Arc<dyn Store>, options: ExpiryOptions) {
    let attempt_every = options.sweep_interval.min(MAX_SWEEP_ATTEMPT_INTERVAL);
    let mut ticks = tokio::time::interval(attempt_every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut indexed = false;
    loop {
        ticks.tick().await;
        if !indexed {
            match store.index_key_ends_once().await {
                Ok(count) => {
                    indexed = true;
                    if count > 0 {
                        tracing::info!(
                            count,
                            "keys written before the deadline index were indexed"
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not index the deadlines of existing keys");
                    continue;
                }
            }
        }
        match store
            .claim_expiry_sweep(&options.holder, options.sweep_interval)
            .await
        {
            Ok(true) => match sweep(&*store, &options.lead_times, options.sweep_interval).await {
                Ok(sent) => tracing::debug!(sent, "expiry sweep done"),
                // The next sweep looks again: its window covers this one's.
                Err(error) => tracing::warn!(%error, "the expiry sweep failed"),
            },
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "could not take the expiry sweep's lease"),
        }
    }
}

/// Warns of every key expiry within the longest lead time plus one sweep
/// interval (see `LeadTimes::warning_due`); returns how many warnings this
/// sweep sent.
pub async fn sweep(
    store: &dyn Store,
    lead_times: &LeadTimes,
    sweep_interval: Duration,
) -> StoreResult<usize> {
    let now = UnixMillis::now();
    let until = now.plus(lead_times.longest().saturating_add(sweep_interval));
    let mut from = now;
    let mut sent = 0;
    loop {
        let page = store.key_ends_between(from, until, BATCH).await?;
        for end in page.iter().filter(|end| end.kind == KeyEndKind::Expired) {
            let remaining = Duration::from_millis(u64::try_from(end.at.0 - now.0).unwrap_or(0));
            let Some(lead) = lead_times.warning_due(remaining, sweep_interval) else {
                continue;
            };
            if store
                .record_expiry_warning(end, lead, &expiry::warning_event(end, lead))
                .await?
            {
                sent += 1;
            }
        }
        let Some(last) = page.last().filter(|_| page.len() == BATCH) else {
            return Ok(sent);
        };
        // Pages restart at the last end seen (its ties come again and
        // their markers stop a second warning); a page of one instant only
        // moves on past it.
        from = if last.at == from {
            UnixMillis(last.at.0 + 1)
        } else {
            last.at
        };
    }
}
