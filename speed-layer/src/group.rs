//! The speed layer across hosts (issue 16): instances share the log's
//! partitions as one Kafka consumer group, and each partition's state lives
//! in a checkpoint store on object storage, not on the host that consumed
//! it last.
//!
//! - **Partition = unit of state.** Every owned partition has a
//!   [`SpeedState`](crate::SpeedState) of its own — its windows, its clock
//!   and watermark, its dedup ids, the alert state of its keys, its late
//!   ledger and its consumed offset — checkpointed together, atomically, as
//!   one manifest version of that partition in the [`CheckpointStore`]
//!   (closed windows written once; see [`crate::checkpoint`]). Which events
//!   are late depends only on the partition's own records, so any owner
//!   folds a partition to the same views.
//! - **Group = unit of membership.** [`GroupMember`] takes part in the
//!   group through Kafka's protocol (cooperative-sticky). On assignment this
//!   loop restores the partition from the store and **claims** it by
//!   committing the next version (which fences an old owner still writing);
//!   it then fetches from the checkpoint's offset. On revocation it
//!   checkpoints, then acknowledges (the rebalance waits for it). A
//!   checkpoint that is fenced means another owner holds the partition: it
//!   is dropped at once. Offsets are committed to the group only after the
//!   checkpoint holding them is durable.
//! - **Members** announce their URL in the store; serving finds the owner of
//!   each partition there (the highest claimed version wins while two
//!   overlap) and mirrors each partition from it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_log::kafka::{Change, GroupMember, MembershipConfig, Ownership as Owns};
use lambda_log::{EventLog, FetchPosition, KafkaConfig, LogError};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, CheckpointError, Checkpointer, StoreWrite};
use crate::store::{CheckpointStore, MemberRecord, PartitionId};
use crate::{SpeedConfig, SpeedViews};

/// Records asked for per fetch.
const FETCH_MAX_RECORDS: usize = 4096;
/// How long a fetch waits for new records.
const FETCH_MAX_WAIT: Duration = Duration::from_millis(500);
/// A partition this member was fenced out of is not claimed again for
/// this long, even while the group still says it is this member's: the
/// broker may hand it over before revoking it here (see [`crate::store`]).
pub const FENCE_GRACE: Duration = Duration::from_secs(5);
/// Claims tried in a row before a partition is left for the next tick.
const CLAIM_ATTEMPTS: usize = 5;
/// How often a member rewrites its record in the store (serving leaves out
/// a record not rewritten for a minute).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5);

/// A speed instance in a group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Lateness, horizon, checkpoint interval, idle timeout, alert rules.
    pub speed: SpeedConfig,
    /// The brokers the group lives on.
    pub kafka: KafkaConfig,
    /// The group, this member's name, the topics, the session timeout.
    pub membership: MembershipConfig,
    /// Where partition state lives.
    pub store: CheckpointStore,
    /// Where this instance answers (announced in the store for serving).
    pub url: String,
}

/// One owned partition as readers see it.
#[derive(Debug, Clone)]
pub struct Share {
    /// Its state.
    pub views: SpeedViews,
    /// The checkpoint version this owner last committed (its claim).
    pub version: u64,
}

/// What an instance owns now, shared with its HTTP routes.
#[derive(Debug, Clone, Default)]
pub struct GroupViews(Arc<RwLock<GroupInner>>);

#[derive(Debug, Default)]
struct GroupInner {
    member: String,
    partitions: BTreeMap<PartitionId, Share>,
    boundary: Option<i64>,
    rebalances: u64,
}

/// One partition in [`Ownership`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnedPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The checkpoint version this owner committed last.
    pub version: u64,
    /// The state's epoch and seq (a reader's cursor).
    pub epoch: u64,
    /// See `epoch`.
    pub seq: u64,
    /// Next offset to consume.
    pub offset: Option<u64>,
    /// The partition's watermark.
    pub watermark: Option<i64>,
    /// Wall time of its last durable checkpoint (ms).
    pub last_checkpoint_ms: Option<i64>,
}

/// What `GET /internal/v1/speed/partitions` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ownership {
    /// The member's name.
    pub member: String,
    /// Rebalances it has taken part in.
    pub rebalances: u64,
    /// What it owns.
    pub partitions: Vec<OwnedPartition>,
}

impl GroupViews {
    /// The views of `member` (empty).
    pub fn new(member: &str) -> GroupViews {
        let views = GroupViews::default();
        views.0.write().member = member.to_string();
        views
    }

    /// Names the member (once its name is known).
    pub fn set_member(&self, member: &str) {
        self.0.write().member = member.to_string();
    }

    /// Tells every owned partition (and those claimed later) the batch
    /// boundary B.
    pub fn set_boundary(&self, boundary: Option<i64>) {
        let mut inner = self.0.write();
        if boundary.is_some() {
            inner.boundary = boundary;
        }
        for share in inner.partitions.values() {
            share.views.write().set_batch_boundary(boundary);
        }
    }

    /// The partition's share, if owned.
    pub fn share(&self, partition: &PartitionId) -> Option<Share> {
        self.0.read().partitions.get(partition).cloned()
    }

    /// Every owned partition's share.
    pub fn shares(&self) -> Vec<(PartitionId, Share)> {
        let inner = self.0.read();
        inner
            .partitions
            .iter()
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect()
    }

    /// What this member owns, for readers.
    pub fn ownership(&self) -> Ownership {
        let inner = self.0.read();
        Ownership {
            member: inner.member.clone(),
            rebalances: inner.rebalances,
            partitions: inner
                .partitions
                .iter()
                .map(|(p, share)| {
                    let state = share.views.read();
                    OwnedPartition {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        version: share.version,
                        epoch: state.epoch,
                        seq: state.seq,
                        offset: state.offsets.get(&(p.topic.clone(), p.partition)).copied(),
                        watermark: state.watermark(),
                        last_checkpoint_ms: state.last_checkpoint_ms,
                    }
                })
                .collect(),
        }
    }

    fn publish(&self, held: &BTreeMap<PartitionId, Held>, rebalances: u64) {
        let mut inner = self.0.write();
        inner.rebalances = rebalances;
        inner.partitions = held
            .iter()
            .map(|(p, h)| {
                (
                    p.clone(),
                    Share {
                        views: Arc::clone(&h.views),
                        version: h.version,
                    },
                )
            })
            .collect();
    }

    fn boundary(&self) -> Option<i64> {
        self.0.read().boundary
    }
}

/// A partition this instance owns and folds.
struct Held {
    views: SpeedViews,
    checkpointer: Checkpointer,
    /// The version this owner committed last.
    version: u64,
    position: FetchPosition,
    last_record: Instant,
    /// Its last checkpoint failed: the manifest may have become visible
    /// anyway, so the next one first reads which version is the newest.
    unsure: bool,
}

/// A partition restored from the store and claimed.
struct Claimed {
    state: crate::SpeedState,
    checkpointer: Checkpointer,
    version: u64,
}

/// What one partition's checkpoint did.
enum Outcome {
    /// Written, or fenced by another owner.
    Wrote(StoreWrite),
    /// After a failed checkpoint, the store holds a newer version than this
    /// owner's (that failed attempt's, or another owner's): restore it again.
    Superseded,
}

/// Checkpoints being written: `(partition, version, result)` each.
type Writing = tokio::task::JoinHandle<Vec<(PartitionId, u64, Result<Outcome, CheckpointError>)>>;

/// Refuses a member name another live instance announces from another URL
/// (its record rewritten within three announce intervals): two instances
/// under one name would overwrite each other's record, and serving would
/// find only one of them. A record of this URL (this instance restarted) is
/// fine.
pub async fn check_member_free(
    store: &CheckpointStore,
    member: &str,
    url: &str,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    let live = (ANNOUNCE_INTERVAL * 3).as_millis() as i64;
    for record in store.members().await? {
        let age = now.saturating_sub(record.updated_ms);
        anyhow::ensure!(
            record.member != member
                || record.url == url
                || age.unsigned_abs() >= live.unsigned_abs(),
            "--member {member}: another instance announced that name {} ms ago from {} (give each instance its own --member, or stop that one first)",
            age,
            record.url
        );
    }
    Ok(())
}

/// Runs this instance as a member of the group until `shutdown`: then it
/// checkpoints what it owns, leaves the group (its partitions go to the
/// others at once) and withdraws its member record.
#[tracing::instrument(name = "speed-group", skip_all, fields(member = %config.membership.member))]
pub async fn run(
    config: GroupConfig,
    log: Arc<dyn EventLog>,
    shared: GroupViews,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Arc::new(config.store.clone());
    let record = |now: i64| MemberRecord {
        member: config.membership.member.clone(),
        url: config.url.clone(),
        updated_ms: now,
    };
    store
        .announce(&record(chrono::Utc::now().timestamp_millis()))
        .await
        .context("announcing this member in the checkpoint store")?;
    let (member, changes) = GroupMember::join(&config.kafka, &config.membership)
        .context("joining the speed layer's consumer group")?;
    // The member's changes, from its thread onto this loop.
    let (forward, mut changed) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("group-changes".into())
        .spawn(move || {
            while let Ok(change) = changes.recv() {
                if forward.send(change).is_err() {
                    break;
                }
            }
        })
        .context("starting the group changes thread")?;
    tracing::info!(group = %config.membership.group, url = %config.url, "speed layer joined its group");

    let mut held: BTreeMap<PartitionId, Held> = BTreeMap::new();
    let mut fenced: HashMap<PartitionId, Instant> = HashMap::new();
    let mut writing: Option<Writing> = None;
    let mut next_checkpoint = tokio::time::Instant::now() + config.speed.checkpoint_interval;
    let mut announce = tokio::time::interval(ANNOUNCE_INTERVAL);
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let owns = member.ownership();
    loop {
        let positions: Vec<FetchPosition> = held.values().map(|h| h.position.clone()).collect();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            change = changed.recv() => match change {
                Some(Change::Assigned(partitions)) => {
                    tracing::info!(?partitions, "partitions assigned");
                    let ids: Vec<PartitionId> = partitions
                        .into_iter()
                        .map(|(t, p)| PartitionId::new(t, p))
                        .filter(|id| !held.contains_key(id))
                        .collect();
                    for id in &ids {
                        fenced.remove(id);
                    }
                    claim_all(&config, &store, &log, &shared, &owns, &mut held, ids).await;
                    shared.publish(&held, member.rebalances());
                }
                Some(Change::Revoked { partitions, released }) => {
                    tracing::info!(?partitions, "partitions revoked; checkpointing them before releasing");
                    if let Some(pending) = writing.take() {
                        let done = pending.await.context("checkpoint task")?;
                        finish(done, &mut held, &mut fenced, &member);
                    }
                    let ids: Vec<PartitionId> = partitions
                        .into_iter()
                        .map(|(t, p)| PartitionId::new(t, p))
                        .filter(|id| held.contains_key(id))
                        .collect();
                    let done = start_checkpoint(&store, &held, Some(&ids))
                        .await
                        .context("checkpoint task")?;
                    finish(done, &mut held, &mut fenced, &member);
                    for id in &ids {
                        held.remove(id);
                        // The group lets go of them only once acknowledged:
                        // not an orphan to claim back meanwhile.
                        fenced.insert(id.clone(), Instant::now());
                    }
                    shared.publish(&held, member.rebalances());
                    let _ = released.send(());
                }
                None => anyhow::bail!("the consumer group member stopped"),
            },
            done = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                writing = None;
                finish(done.context("checkpoint task")?, &mut held, &mut fenced, &member);
                shared.publish(&held, member.rebalances());
            }
            _ = tokio::time::sleep_until(next_checkpoint), if writing.is_none() => {
                next_checkpoint = tokio::time::Instant::now() + config.speed.checkpoint_interval;
                // Partitions the group says are ours but no one here holds:
                // a claim that failed, or a fence the broker has not
                // followed with a revocation.
                fenced.retain(|_, at| at.elapsed() < FENCE_GRACE);
                let orphans: Vec<PartitionId> = member
                    .owned()
                    .into_iter()
                    .map(|(t, p)| PartitionId::new(t, p))
                    .filter(|id| !held.contains_key(id) && !fenced.contains_key(id))
                    .collect();
                claim_all(&config, &store, &log, &shared, &owns, &mut held, orphans).await;
                mark_idle(&mut held, config.speed.idle_timeout);
                shared.publish(&held, member.rebalances());
                if !held.is_empty() {
                    writing = Some(start_checkpoint(&store, &held, None));
                }
            }
            fetched = log.fetch(&positions, FETCH_MAX_RECORDS, FETCH_MAX_WAIT), if !positions.is_empty() => {
                match fetched {
                    Ok(records) => {
                        let invalid = fold(&mut held, records).await?;
                        if config.speed.dead_letter_invalid && !invalid.is_empty() {
                            crate::consumer::dead_letter(log.as_ref(), invalid, &shutdown).await?;
                        }
                    }
                    Err(LogError::OffsetOutOfRange { topic, partition, start, offset, end, .. }) => {
                        let id = PartitionId::new(topic, partition);
                        anyhow::ensure!(
                            offset <= end,
                            "{id}: the checkpoint's offset {offset} is past the partition's end {end} (the log lost records, or was restored from an older copy); refusing to guess where to resume"
                        );
                        tracing::warn!(%id, offset, start, "offset fell out of retention; skipping ahead");
                        if let Some(h) = held.get_mut(&id) {
                            h.position.offset = start;
                        }
                    }
                    Err(error) if error.is_transient() => {
                        tracing::warn!(%error, "fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(error) => return Err(error).context("speed layer fetch"),
                }
            }
            _ = announce.tick() => {
                let now = chrono::Utc::now().timestamp_millis();
                if let Err(error) = store.announce(&record(now)).await {
                    tracing::warn!(error = %format!("{error:#}"), "announcing this member");
                }
            }
            _ = tokio::time::sleep(FETCH_MAX_WAIT), if positions.is_empty() => {}
        }
    }
    // Stopping: the last checkpoint of everything owned, then leave.
    if let Some(pending) = writing.take()
        && let Ok(done) = pending.await
    {
        finish(done, &mut held, &mut fenced, &member);
    }
    if let Ok(done) = start_checkpoint(&store, &held, None).await {
        finish(done, &mut held, &mut fenced, &member);
    }
    held.clear();
    shared.publish(&held, member.rebalances());
    // Leaving revokes what the member owned: already checkpointed.
    let acking = tokio::spawn(async move {
        while let Some(change) = changed.recv().await {
            if let Change::Revoked { released, .. } = change {
                let _ = released.send(());
            }
        }
    });
    tokio::task::spawn_blocking(move || member.leave())
        .await
        .context("leaving the group")?;
    acking.abort();
    if let Err(error) = store.withdraw(&config.membership.member).await {
        tracing::warn!(error = %format!("{error:#}"), "withdrawing this member's record");
    }
    tracing::info!("speed layer left its group");
    Ok(())
}

/// Claims `ids` at once (each a few store round trips: a failover's
/// partitions are restored side by side) and holds those it got.
async fn claim_all(
    config: &GroupConfig,
    store: &Arc<CheckpointStore>,
    log: &Arc<dyn EventLog>,
    shared: &GroupViews,
    owns: &Owns,
    held: &mut BTreeMap<PartitionId, Held>,
    ids: Vec<PartitionId>,
) {
    if ids.is_empty() {
        return;
    }
    // Each topic's offset ranges once for all of its partitions.
    let mut topics: Vec<&str> = ids.iter().map(|id| id.topic.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    let read = topics.iter().map(|topic| log.ranges(topic));
    let mut ranges = HashMap::new();
    for (topic, read) in topics.iter().zip(futures::future::join_all(read).await) {
        match read {
            Ok(read) => {
                ranges.insert(topic.to_string(), read);
            }
            Err(error) => {
                tracing::warn!(%topic, %error, "reading the topic's offset ranges; its partitions are claimed at the next checkpoint");
            }
        }
    }
    let claims = ids
        .iter()
        .filter_map(|id| Some((id, ranges.get(&id.topic)?.get(id.partition as usize)?)))
        .map(|(id, range)| claim_one(config, store, shared, owns, id.clone(), *range));
    for (id, claimed) in futures::future::join_all(claims)
        .await
        .into_iter()
        .flatten()
    {
        held.insert(id, claimed);
    }
}

/// Restores `id` from the store and claims it: held, reading from its
/// checkpoint's offset. A failure is logged (the next tick tries again
/// while the group says the partition is ours).
async fn claim_one(
    config: &GroupConfig,
    store: &Arc<CheckpointStore>,
    shared: &GroupViews,
    owns: &Owns,
    id: PartitionId,
    range: lambda_log::PartitionRange,
) -> Option<(PartitionId, Held)> {
    let started = Instant::now();
    let (claiming, speed, store) = (id.clone(), config.speed.clone(), Arc::clone(store));
    let handle = tokio::runtime::Handle::current();
    let owns = owns.clone();
    let still_ours = move |id: &PartitionId| owns.owns(&id.topic, id.partition);
    let claimed =
        tokio::task::spawn_blocking(move || claim(&store, &claiming, &speed, &handle, &still_ours))
            .await
            .map_err(|e| anyhow::anyhow!("the claim task: {e}"))
            .and_then(|r| r);
    let mut claimed = match claimed {
        Ok(claimed) => claimed,
        Err(error) => {
            tracing::warn!(%id, error = %format!("{error:#}"), "claiming a partition failed; trying again at the next checkpoint");
            return None;
        }
    };
    let key = (id.topic.clone(), id.partition);
    // Not lowered to the end the log reports: that end can lag (tansu's is
    // its last batch's base when a probe of the batch times out), and a
    // checkpoint's offset above it read again what the state had folded
    // (the rolling-restart test's owner once counted 14 duplicates twice).
    // A checkpoint truly past the end (the log lost records) is refused by
    // the first fetch.
    let offset = claimed
        .state
        .offsets
        .get(&key)
        .copied()
        .unwrap_or(range.start)
        .max(range.start);
    if offset < range.end {
        // Records to read: until the first arrives, the partition holds a
        // combined watermark back (see `export::combine`).
        claimed.state.expect_partition(&id.topic, id.partition);
    }
    claimed.state.set_batch_boundary(shared.boundary());
    claimed.state.last_checkpoint_ms = Some(chrono::Utc::now().timestamp_millis());
    tracing::info!(%id, version = claimed.version, offset, windows = claimed.state.windows.len(), took_ms = started.elapsed().as_millis() as u64, "partition restored and claimed");
    Some((
        id.clone(),
        Held {
            views: Arc::new(RwLock::new(claimed.state)),
            checkpointer: claimed.checkpointer,
            version: claimed.version,
            position: FetchPosition {
                topic: id.topic.clone(),
                partition: id.partition,
                offset,
            },
            last_record: Instant::now(),
            unsure: false,
        },
    ))
}

/// Loads `id`'s newest checkpoint (or an empty state) and commits it as
/// the next version: the claim. Lost to another writer, or a read that
/// failed (the old owner may have just removed a file it superseded), it
/// reloads and tries again — while `still_ours` says the group has not
/// moved the partition on meanwhile. Blocking.
fn claim(
    store: &CheckpointStore,
    id: &PartitionId,
    config: &SpeedConfig,
    handle: &tokio::runtime::Handle,
    still_ours: &dyn Fn(&PartitionId) -> bool,
) -> anyhow::Result<Claimed> {
    let mut last_error = None;
    for attempt in 0..CLAIM_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(100 << attempt.min(4)));
        }
        anyhow::ensure!(
            still_ours(id),
            "{id}: the group moved it on while it was being restored"
        );
        let loaded = match checkpoint::load_from_store(
            store,
            id,
            config.allowed_lateness_ms,
            config.horizon_ms,
            handle,
        ) {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::debug!(%id, %error, "restoring a partition failed; trying again");
                last_error = Some(error);
                continue;
            }
        };
        let (version, mut state) = match loaded {
            Some((version, mut state)) => {
                state.alerts.set_rules(config.alert_rules.clone());
                (version, state)
            }
            None => (0, crate::empty_state(config)),
        };
        let mut checkpointer = Checkpointer::new(Path::new(""), &mut state);
        let snapshot = checkpointer.snapshot(&state);
        let next = version
            .checked_add(1)
            .context("checkpoint version overflow")?;
        anyhow::ensure!(
            still_ours(id),
            "{id}: the group moved it on while it was being restored"
        );
        let written = match snapshot.write_to_store(None, store, id, next, handle) {
            Ok(written) => written,
            Err(error) => {
                tracing::debug!(%id, %error, "claiming a partition failed; trying again");
                last_error = Some(error);
                continue;
            }
        };
        match written {
            StoreWrite::Durable(durable) => {
                checkpointer.written(&durable);
                return Ok(Claimed {
                    state,
                    checkpointer,
                    version: next,
                });
            }
            StoreWrite::Fenced { newest } => {
                tracing::debug!(%id, newest, "claim lost to another writer; reloading");
            }
        }
    }
    match last_error {
        Some(error) => Err(error).with_context(|| format!("{id}: {CLAIM_ATTEMPTS} claims failed")),
        None => anyhow::bail!("{id}: another owner kept committing; {CLAIM_ATTEMPTS} claims lost"),
    }
}

/// Snapshots the held partitions (`only` these, if given) and writes them
/// to the store, each as its next version.
fn start_checkpoint(
    store: &Arc<CheckpointStore>,
    held: &BTreeMap<PartitionId, Held>,
    only: Option<&[PartitionId]>,
) -> Writing {
    let jobs: Vec<(PartitionId, u64, bool, checkpoint::Snapshot, SpeedViews)> = held
        .iter()
        .filter(|(id, _)| only.is_none_or(|only| only.contains(id)))
        .map(|(id, h)| {
            let snapshot = h.checkpointer.snapshot_lazily(&h.views.read());
            (
                id.clone(),
                h.version.saturating_add(1),
                h.unsure,
                snapshot,
                Arc::clone(&h.views),
            )
        })
        .collect();
    let store = Arc::clone(store);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        jobs.into_iter()
            .map(|(id, version, unsure, snapshot, live)| {
                let outcome = (|| {
                    if unsure {
                        let newest = handle
                            .block_on(store.versions(&id))
                            .map_err(CheckpointError::Store)?
                            .last()
                            .copied();
                        if newest.is_some_and(|n| n >= version) {
                            return Ok(Outcome::Superseded);
                        }
                    }
                    snapshot
                        .write_to_store(Some(&live), &store, &id, version, &handle)
                        .map(Outcome::Wrote)
                })();
                (id, version, outcome)
            })
            .collect()
    })
}

/// Takes in what a checkpoint did: durable ones move their partition's
/// version on and commit its offset to the group; a fenced partition is
/// another owner's now, and is dropped at once.
fn finish(
    done: Vec<(PartitionId, u64, Result<Outcome, CheckpointError>)>,
    held: &mut BTreeMap<PartitionId, Held>,
    fenced: &mut HashMap<PartitionId, Instant>,
    member: &GroupMember,
) {
    let now = chrono::Utc::now().timestamp_millis();
    let mut offsets = Vec::new();
    for (id, version, result) in done {
        let Some(h) = held.get_mut(&id) else { continue };
        if h.version.saturating_add(1) != version {
            continue;
        }
        match result {
            Ok(Outcome::Wrote(StoreWrite::Durable(durable))) => {
                h.checkpointer.written(&durable);
                h.version = version;
                h.unsure = false;
                let mut state = h.views.write();
                state.last_checkpoint_ms = Some(now);
                state.checkpoint_error = None;
                offsets.extend(
                    durable
                        .offsets
                        .iter()
                        .map(|((topic, partition), offset)| (topic.clone(), *partition, *offset)),
                );
            }
            Ok(Outcome::Superseded) => {
                // Restored again at once (not fenced: no grace), from
                // whichever manifest is the newest.
                tracing::warn!(%id, version, "a failed checkpoint's manifest, or another owner's, is newer than this owner's; restoring the partition again");
                held.remove(&id);
            }
            Ok(Outcome::Wrote(StoreWrite::Fenced { newest })) => {
                tracing::warn!(%id, version, newest, "another owner committed this partition's checkpoint first; letting it go");
                held.remove(&id);
                fenced.insert(id, Instant::now());
            }
            Err(error) => {
                h.checkpointer.failed();
                h.unsure = true;
                let message = error.to_string();
                tracing::warn!(%id, error = %message, "partition checkpoint failed; retrying at the next interval");
                let mut state = h.views.write();
                state.checkpoint_failures += 1;
                state.checkpoint_error = Some(message);
            }
        }
    }
    if !offsets.is_empty() {
        member.commit(offsets);
    }
}

/// Folds fetched records into their partitions' states (as blocking work,
/// `on_this_thread`: CPU work of milliseconds), moving each position past them.
/// Returns the dead-letter records of invalid ones.
async fn fold(
    held: &mut BTreeMap<PartitionId, Held>,
    records: Vec<lambda_log::StoredRecord>,
) -> anyhow::Result<Vec<lambda_log::Record>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_partition: BTreeMap<PartitionId, Vec<lambda_log::StoredRecord>> = BTreeMap::new();
    for record in records {
        by_partition
            .entry(PartitionId::new(record.topic.to_string(), record.partition))
            .or_default()
            .push(record);
    }
    let now = Instant::now();
    let mut work = Vec::new();
    for (id, records) in by_partition {
        if let Some(h) = held.get_mut(&id) {
            h.last_record = now;
            work.push((id, Arc::clone(&h.views), h.position.clone(), records));
        }
    }
    let folded = lambda_log::on_this_thread(move || {
        let mut invalid = Vec::new();
        let moved: Vec<(PartitionId, FetchPosition)> = work
            .into_iter()
            .map(|(id, views, position, records)| {
                // (A record wakes an idle partition's clock as it folds.)
                let mut positions = [position];
                invalid.extend(crate::consumer::apply(&views, &mut positions, records));
                let [position] = positions;
                (id, position)
            })
            .collect();
        (moved, invalid)
    })
    .await
    .map_err(|e| anyhow::anyhow!("the fold task: {e}"))?;
    let (moved, invalid) = folded;
    for (id, position) in moved {
        if let Some(h) = held.get_mut(&id) {
            h.position = position;
        }
    }
    Ok(invalid)
}

/// Marks idle the partitions that delivered nothing for `timeout`: their
/// watermark no longer holds back a combined view (see
/// [`crate::export::combine`]).
fn mark_idle(held: &mut BTreeMap<PartitionId, Held>, timeout: Duration) {
    for (id, h) in held.iter() {
        if h.last_record.elapsed() >= timeout {
            h.views.write().set_idle(&id.topic, id.partition, true);
        }
    }
}
