//! Membership of a consumer group through Kafka's own group protocol
//! (cooperative-sticky), on a real Kafka-protocol broker (tansu) and on
//! librdkafka's mock cluster: one member owns every partition; a second
//! joins and they split them, each partition owned by exactly one member
//! once the group settles, the old owner told of each revocation (and the
//! rebalance waiting for its acknowledgement) before letting go; the second
//! leaves and the first owns them all again.

use std::collections::BTreeSet;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use lambda_log::KafkaConfig;
use lambda_log::kafka::{Change, GroupMember, MembershipConfig, MockKafka, Owned};
use lambda_testkit::{Tansu, eventually_blocking};

const TOPIC: &str = "group-events";
const PARTITIONS: u32 = 6;

/// Applies every change waiting on `changes` to `seen` (acknowledging
/// revocations at once) and returns what the member was told it owns.
fn drain(changes: &Receiver<Change>, seen: &mut BTreeSet<Owned>, revoked: &mut usize) {
    while let Ok(change) = changes.try_recv() {
        match change {
            Change::Assigned(partitions) => seen.extend(partitions),
            Change::Revoked {
                partitions,
                released,
            } => {
                *revoked += partitions.len();
                for p in &partitions {
                    seen.remove(p);
                }
                released.send(()).unwrap();
            }
        }
    }
}

fn all() -> BTreeSet<Owned> {
    (0..PARTITIONS).map(|p| (TOPIC.to_string(), p)).collect()
}

fn membership_holds(kafka: &KafkaConfig) {
    let settle = Duration::from_secs(60);
    let config = |member: &str| MembershipConfig {
        session_timeout: Duration::from_secs(6),
        ..MembershipConfig::new("speed-test", member, &[TOPIC])
    };
    let (a, a_changes) = GroupMember::join(kafka, &config("a")).unwrap();
    let (mut a_seen, mut a_revoked) = (BTreeSet::new(), 0);
    eventually_blocking("member a owning every partition", settle, || {
        drain(&a_changes, &mut a_seen, &mut a_revoked);
        if a_seen == all() && a.owned() == all() {
            Ok(())
        } else {
            Err(format!("told {a_seen:?}, owns {:?}", a.owned()))
        }
    });

    let (b, b_changes) = GroupMember::join(kafka, &config("b")).unwrap();
    let (mut b_seen, mut b_revoked) = (BTreeSet::new(), 0);
    eventually_blocking("members a and b splitting the partitions", settle, || {
        drain(&a_changes, &mut a_seen, &mut a_revoked);
        drain(&b_changes, &mut b_seen, &mut b_revoked);
        let split = a_seen.is_disjoint(&b_seen)
            && a_seen.union(&b_seen).cloned().collect::<BTreeSet<_>>() == all()
            && !a_seen.is_empty()
            && !b_seen.is_empty()
            && a.owned() == a_seen
            && b.owned() == b_seen;
        if split {
            Ok(())
        } else {
            Err(format!("a {a_seen:?}, b {b_seen:?}"))
        }
    });
    assert!(a_revoked > 0, "a was never told of a revocation");

    // b leaves (acknowledging its revocation on the way): a owns all again.
    let waiter = std::thread::spawn(move || {
        let (mut seen, mut revoked) = (b_seen, b_revoked);
        // Answer the revocation leaving brings, then stop.
        for _ in 0..200 {
            drain(&b_changes, &mut seen, &mut revoked);
            if seen.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    });
    b.leave();
    assert!(
        waiter.join().unwrap().is_empty(),
        "b still told it owns partitions"
    );
    eventually_blocking("member a owning every partition again", settle, || {
        drain(&a_changes, &mut a_seen, &mut a_revoked);
        if a_seen == all() && a.owned() == all() {
            Ok(())
        } else {
            Err(format!("a told {a_seen:?}"))
        }
    });
    drop(a_changes);
    a.leave();
}

#[test]
fn membership_on_a_real_broker() {
    let broker = Tansu::start();
    broker.create_topic(TOPIC, PARTITIONS);
    membership_holds(&KafkaConfig::new(broker.address.clone()));
}

#[test]
fn membership_on_the_mock_cluster() {
    let mock = MockKafka::new(1).unwrap();
    mock.create_topic(TOPIC, PARTITIONS).unwrap();
    membership_holds(&KafkaConfig::new(mock.bootstrap_servers()));
}
