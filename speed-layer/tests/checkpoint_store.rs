//! The partition checkpoint store on each kind of store it opens — a local
//! directory, memory, and a real S3 server (moto) — holds the fencing
//! contract: of two owners of one partition, the one that commits a version
//! first wins it, and the other is told it is fenced and writes nothing;
//! manifests are listed in version order, files are never overwritten, and
//! vacuuming keeps the newest manifests.

use bytes::Bytes;
use lambda_speed::store::{CheckpointStore, Commit, KEEP_MANIFESTS, PartitionId};

async fn fencing_holds(store: &CheckpointStore) {
    let p = PartitionId::new("iot-events", 2);
    let other = PartitionId::new("iot-events", 3);
    assert_eq!(store.latest(&p).await.unwrap(), None);

    // Owner A checkpoints versions 1 and 2 (files first, then the manifest).
    store
        .put_file(&p, "60000-a.json", Bytes::from_static(b"window"))
        .await
        .unwrap();
    for version in 1..=2 {
        let manifest = Bytes::from(format!("A{version}"));
        assert_eq!(
            store.commit(&p, version, manifest).await.unwrap(),
            Commit::Committed
        );
    }
    // A file name is never written twice.
    let again = store
        .put_file(&p, "60000-a.json", Bytes::from_static(b"other"))
        .await;
    assert!(again.is_err(), "a checkpoint file was overwritten");
    assert_eq!(
        store.get_file(&p, "60000-a.json").await.unwrap(),
        Bytes::from_static(b"window")
    );

    // A rebalance hands the partition to B while A still holds it: B
    // restores version 2 and claims the partition with version 3.
    let (restored, bytes) = store.latest(&p).await.unwrap().unwrap();
    assert_eq!((restored, bytes), (2, Bytes::from_static(b"A2")));
    assert_eq!(
        store
            .commit(&p, restored + 1, Bytes::from_static(b"B3"))
            .await
            .unwrap(),
        Commit::Committed
    );
    // A's next checkpoint (its own version 3) is fenced: B's claim stands.
    assert_eq!(
        store
            .commit(&p, 3, Bytes::from_static(b"A3"))
            .await
            .unwrap(),
        Commit::Fenced { newest: 3 }
    );
    assert_eq!(
        store.latest(&p).await.unwrap(),
        Some((3, Bytes::from_static(b"B3")))
    );
    // Another partition is untouched.
    assert_eq!(store.latest(&other).await.unwrap(), None);

    // Versions sort as numbers; vacuum keeps the newest.
    for version in 4..=12 {
        store
            .commit(&p, version, Bytes::from(format!("B{version}")))
            .await
            .unwrap();
    }
    assert_eq!(
        store.versions(&p).await.unwrap(),
        (1..=12).collect::<Vec<_>>()
    );
    assert_eq!(
        store.vacuum(&p, KEEP_MANIFESTS).await.unwrap(),
        12 - KEEP_MANIFESTS
    );
    assert_eq!(store.versions(&p).await.unwrap(), vec![10, 11, 12]);
    // A stale owner's version that vacuum freed is still fenced (and its
    // manifest does not stay).
    assert_eq!(
        store
            .commit(&p, 4, Bytes::from_static(b"A4"))
            .await
            .unwrap(),
        Commit::Fenced { newest: 12 }
    );
    assert_eq!(store.versions(&p).await.unwrap(), vec![10, 11, 12]);
    assert_eq!(
        store.latest(&p).await.unwrap(),
        Some((12, Bytes::from_static(b"B12")))
    );
    assert_eq!(
        store.files(&p).await.unwrap(),
        vec!["60000-a.json".to_string()]
    );
    store.delete_file(&p, "60000-a.json").await.unwrap();
    store.delete_file(&p, "60000-a.json").await.unwrap();
    assert!(store.files(&p).await.unwrap().is_empty());
    assert!(store.commit(&p, 0, Bytes::new()).await.is_err());
    members_are_listed(store).await;
}

/// Members announce themselves, are listed (a record that is not one is
/// skipped, not fatal), rewrite their record, and withdraw it; a member's
/// name must stay one plain path segment.
async fn members_are_listed(store: &CheckpointStore) {
    use lambda_speed::store::MemberRecord;
    let record = |member: &str, updated_ms: i64| MemberRecord {
        member: member.to_string(),
        url: format!("http://{member}:8082"),
        updated_ms,
    };
    assert!(store.members().await.unwrap().is_empty());
    store.announce(&record("speed-b", 1)).await.unwrap();
    store.announce(&record("speed-a", 2)).await.unwrap();
    store.announce(&record("speed-b", 3)).await.unwrap();
    assert_eq!(
        store.members().await.unwrap(),
        vec![record("speed-a", 2), record("speed-b", 3)]
    );
    for bad in ["", "../x", "a/b", ".hidden", "ü"] {
        let error = store.announce(&record(bad, 1)).await.unwrap_err();
        assert!(
            format!("{error:#}").contains("member"),
            "{bad:?}: {error:#}"
        );
    }
    store.withdraw("speed-b").await.unwrap();
    store.withdraw("speed-b").await.unwrap();
    assert_eq!(store.members().await.unwrap(), vec![record("speed-a", 2)]);
    store.withdraw("speed-a").await.unwrap();
}

#[tokio::test]
async fn fencing_holds_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("checkpoints").display());
    fencing_holds(&CheckpointStore::open(&url, Vec::new()).unwrap()).await;
    // What a store wrote, a store opened again on the same directory reads.
    let again = CheckpointStore::open(&url, Vec::new()).unwrap();
    let p = PartitionId::new("iot-events", 2);
    assert_eq!(again.latest(&p).await.unwrap().unwrap().0, 12);
}

#[tokio::test]
async fn fencing_holds_in_memory() {
    fencing_holds(&CheckpointStore::open("memory://", Vec::new()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_holds_on_a_real_s3_server() {
    let moto = tokio::task::spawn_blocking(|| lambda_testkit::Moto::start("checkpoints"))
        .await
        .unwrap();
    let options = moto.s3_options();
    let store = CheckpointStore::open("s3://checkpoints/speed", options).unwrap();
    fencing_holds(&store).await;
}

#[test]
fn an_unknown_url_is_refused_naming_it() {
    let error = CheckpointStore::open("ftp://host/x", Vec::new()).unwrap_err();
    let shown = format!("{error:#}");
    assert!(shown.contains("ftp://host/x"), "{shown}");
}
