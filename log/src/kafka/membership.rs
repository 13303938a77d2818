//! Membership of a Kafka consumer group, for the speed layer across hosts
//! (issue 16): which partitions this member owns, decided by Kafka's own
//! group protocol (cooperative-sticky) — no home-made membership.
//!
//! The group's consumer only takes part in the group: every partition it
//! is given is paused, so it fetches nothing, and the member reads its
//! partitions at the offsets its checkpoints hold through the log's
//! ordinary fetch. Changes arrive on a channel: [`Change::Assigned`], and
//! [`Change::Revoked`] with an acknowledgement the member sends once it has
//! checkpointed those partitions — the rebalance waits for it (up to
//! [`MembershipConfig::revoke_timeout`]), so a partition is released only
//! after its state is saved. A broker may still hand a partition to its new
//! owner before the old one has let go (tansu does): the checkpoint store
//! fences (see `lambda_speed::store`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use super::{KafkaConfig, consumer_client, unavailable, with_client_options};
use crate::LogError;

/// How a member takes part in its group.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// The consumer group.
    pub group: String,
    /// This member's name in the group (`client.id`), e.g. its HTTP address.
    pub member: String,
    /// The topics whose partitions the group shares.
    pub topics: Vec<String>,
    /// A member not heard from for this long loses its partitions
    /// (`session.timeout.ms`): the failover time after a crash.
    pub session_timeout: Duration,
    /// Longest a rebalance waits for a revoked partition's checkpoint.
    pub revoke_timeout: Duration,
}

impl MembershipConfig {
    /// `member` of `group` sharing `topics`, with a 10 s session timeout
    /// and 30 s for a revocation's checkpoint.
    pub fn new(group: &str, member: &str, topics: &[&str]) -> MembershipConfig {
        MembershipConfig {
            group: group.to_string(),
            member: member.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            session_timeout: Duration::from_secs(10),
            revoke_timeout: Duration::from_secs(30),
        }
    }
}

/// A partition, `(topic, partition)`.
pub type Owned = (String, u32);

/// A change of what this member owns.
#[derive(Debug)]
pub enum Change {
    /// These partitions are now this member's.
    Assigned(Vec<Owned>),
    /// These partitions are taken away: checkpoint them, stop reading
    /// them, then send on `released` (the rebalance waits for it).
    Revoked {
        /// The partitions.
        partitions: Vec<Owned>,
        /// Acknowledge once their state is saved.
        released: mpsc::SyncSender<()>,
    },
}

/// This member's side of the rebalance.
struct Context {
    changes: mpsc::Sender<Change>,
    owned: Arc<Mutex<BTreeSet<Owned>>>,
    revoke_timeout: Duration,
    /// Whether a revocation waits for its acknowledgement: not once the
    /// member is dropped (the thread dropping it may be the one that
    /// would acknowledge).
    patient: Arc<AtomicBool>,
    /// Rebalances this member has taken part in (see [`GroupMember::rebalances`]).
    rebalances: Arc<AtomicU64>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions = owned_of(list);
        if partitions.is_empty() {
            return;
        }
        let (released, acked) = mpsc::sync_channel(1);
        let sent = self.changes.send(Change::Revoked {
            partitions: partitions.clone(),
            released,
        });
        if sent.is_ok()
            && self.patient.load(Ordering::SeqCst)
            && acked.recv_timeout(self.revoke_timeout).is_err()
        {
            tracing::warn!(
                ?partitions,
                timeout_ms = self.revoke_timeout.as_millis() as u64,
                "revoked partitions released before their checkpoint was acknowledged"
            );
        }
        let mut owned = self.owned.lock();
        for partition in &partitions {
            owned.remove(partition);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                self.rebalances.fetch_add(1, Ordering::SeqCst);
                // Taking part only: the member fetches through the log.
                if let Err(error) = consumer.pause(list) {
                    tracing::warn!(%error, "pausing assigned partitions");
                }
                let partitions = owned_of(list);
                if partitions.is_empty() {
                    return;
                }
                self.owned.lock().extend(partitions.iter().cloned());
                let _ = self.changes.send(Change::Assigned(partitions));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                // The client let go of everything: say so, as a revocation
                // already done (nothing waits for its acknowledgement).
                tracing::warn!(%error, "consumer group rebalance failed; partitions released");
                let lost: Vec<Owned> = std::mem::take(&mut *self.owned.lock())
                    .into_iter()
                    .collect();
                if !lost.is_empty() {
                    let (released, _) = mpsc::sync_channel(1);
                    let _ = self.changes.send(Change::Revoked {
                        partitions: lost,
                        released,
                    });
                }
            }
        }
    }
}

/// Commits `offsets` as the member's (asynchronously; a failure is logged).
fn commit(consumer: &BaseConsumer<Context>, offsets: &[(String, u32, u64)]) {
    let mut list = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        let (Ok(partition), Ok(offset)) = (i32::try_from(*partition), i64::try_from(*offset))
        else {
            continue;
        };
        if let Err(error) =
            list.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
        {
            tracing::warn!(%error, %topic, partition, "an offset to commit");
        }
    }
    if list.count() > 0
        && let Err(error) = consumer.commit(&list, rdkafka::consumer::CommitMode::Async)
    {
        tracing::warn!(%error, "committing the group member's offsets");
    }
}

fn owned_of(list: &TopicPartitionList) -> Vec<Owned> {
    list.elements()
        .iter()
        .filter_map(|e| Some((e.topic().to_string(), u32::try_from(e.partition()).ok()?)))
        .collect()
}

/// See [`GroupMember::ownership`].
#[derive(Debug, Clone)]
pub struct Ownership(Arc<Mutex<BTreeSet<Owned>>>);

impl Ownership {
    /// Whether the member owns `partition` of `topic` now.
    pub fn owns(&self, topic: &str, partition: u32) -> bool {
        self.0
            .lock()
            .iter()
            .any(|(t, p)| *p == partition && t == topic)
    }
}

/// A member of a consumer group: joined on [`GroupMember::join`], left
/// when dropped (or stopped with [`GroupMember::leave`]).
pub struct GroupMember {
    /// Offsets for the polling thread to commit (it alone holds the consumer,
    /// so dropping it there leaves the group as before).
    commits: mpsc::Sender<Vec<(String, u32, u64)>>,
    rebalances: Arc<AtomicU64>,
    owned: Arc<Mutex<BTreeSet<Owned>>>,
    stop: Arc<AtomicBool>,
    patient: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
    group: String,
    member: String,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember")
            .field("group", &self.group)
            .field("member", &self.member)
            .field("owned", &*self.owned.lock())
            .finish()
    }
}

impl GroupMember {
    /// Joins `membership.group` on the brokers of `kafka`; what it owns
    /// and every change to it arrive on the returned channel.
    pub fn join(
        kafka: &KafkaConfig,
        membership: &MembershipConfig,
    ) -> Result<(GroupMember, mpsc::Receiver<Change>), LogError> {
        let (changes, receiver) = mpsc::channel();
        let owned = Arc::new(Mutex::new(BTreeSet::new()));
        let patient = Arc::new(AtomicBool::new(true));
        let rebalances = Arc::new(AtomicU64::new(0));
        let context = Context {
            changes,
            owned: Arc::clone(&owned),
            revoke_timeout: membership.revoke_timeout,
            patient: Arc::clone(&patient),
            rebalances: Arc::clone(&rebalances),
        };
        let session_ms = membership
            .session_timeout
            .as_millis()
            .clamp(1_000, 3_600_000);
        let mut c = consumer_client(kafka, &membership.group);
        c.set("client.id", &membership.member);
        c.set("partition.assignment.strategy", "cooperative-sticky");
        c.set("session.timeout.ms", session_ms.to_string());
        // A rebalance reaches the other members with their next heartbeat:
        // at most a second apart, so partitions move within seconds of a
        // member leaving (Kafka's default is 3 s).
        c.set(
            "heartbeat.interval.ms",
            (session_ms / 3).clamp(100, 1_000).to_string(),
        );
        let consumer: BaseConsumer<Context> = with_client_options(c, kafka)
            .create_with_context(context)
            .map_err(unavailable("creating a group member"))?;
        let topics: Vec<&str> = membership.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(unavailable("joining the consumer group"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let (commits, to_commit) = mpsc::channel::<Vec<(String, u32, u64)>>();
        // Rebalance callbacks run inside poll: poll until told to stop,
        // then leave the group (close sends LeaveGroup).
        let poller = std::thread::Builder::new()
            .name("group-member".into())
            .spawn(move || {
                while !stopping.load(Ordering::SeqCst) {
                    if let Some(Err(error)) = consumer.poll(Duration::from_millis(100)) {
                        tracing::debug!(%error, "group member poll");
                    }
                    while let Ok(offsets) = to_commit.try_recv() {
                        commit(&consumer, &offsets);
                    }
                }
                drop(consumer);
            })
            .map_err(|e| {
                LogError::Unavailable(format!("starting the group member's thread: {e}"))
            })?;
        Ok((
            GroupMember {
                commits,
                rebalances,
                owned,
                stop,
                patient,
                poller: Some(poller),
                group: membership.group.clone(),
                member: membership.member.clone(),
            },
            receiver,
        ))
    }

    /// The partitions this member owns now.
    pub fn owned(&self) -> BTreeSet<Owned> {
        self.owned.lock().clone()
    }

    /// A handle that answers whether this member owns a partition now
    /// (for work on other threads, e.g. a long restore that must stop once
    /// the partition has moved on).
    pub fn ownership(&self) -> Ownership {
        Ownership(Arc::clone(&self.owned))
    }

    /// How many rebalances (assignments, empty ones included) this member
    /// has taken part in: its view of the group's generation. (librdkafka's
    /// generation id is only reachable through its C API, and this
    /// workspace forbids `unsafe`; the checkpoint store's versions fence.)
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::SeqCst)
    }

    /// Commits `offsets` (`(topic, partition, next offset)`) as this
    /// member's, for lag reporting — after the checkpoint holding them is
    /// durable. A member commits through its own membership: a broker
    /// refuses commits to an active group from outside it. Does not wait;
    /// a failure is logged (the checkpoint, not the group's offsets, is
    /// what a partition resumes from).
    pub fn commit(&self, offsets: Vec<(String, u32, u64)>) {
        let _ = self.commits.send(offsets);
    }

    /// Leaves the group (its partitions go to the others at once) and
    /// waits until it has. Blocking. Leaving revokes what it owns: answer
    /// that [`Change::Revoked`] (or drop the receiver), or leaving waits
    /// [`MembershipConfig::revoke_timeout`] for it.
    pub fn leave(mut self) {
        self.stop_polling();
    }

    fn stop_polling(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}

impl Drop for GroupMember {
    /// Leaves without waiting for the revocation's acknowledgement (use
    /// [`GroupMember::leave`] to checkpoint before letting go).
    fn drop(&mut self) {
        self.patient.store(false, Ordering::SeqCst);
        self.stop_polling();
    }
}
