use super::*;

fn ledger(dir: &std::path::Path, writer: &str) -> OffsetLedger {
    let loc = Location::open(dir.to_str().unwrap()).unwrap();
    OffsetLedger::new(loc, writer)
}

async fn stage(l: &OffsetLedger, seq: u64, name: &str) -> FileMove {
    let staged = l.staging_dir("cars topic", 3, seq).join(name);
    l.store()
        .put(&staged, PutPayload::from(name.as_bytes().to_vec()))
        .await
        .unwrap();
    let visible = l.location.path(&["cars", "dt=2026-11-27", name]);
    FileMove {
        staged: staged.to_string(),
        visible: visible.to_string(),
    }
}

async fn exists(l: &OffsetLedger, p: &str) -> bool {
    l.store().head(&Path::from(p)).await.is_ok()
}

#[tokio::test]
async fn a_commit_is_visible_and_survives_a_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger(tmp.path(), "a");
    let topic: Arc<str> = Arc::from("cars topic");
    let mut p = l.load(&topic, 3).await.unwrap();
    assert_eq!((p.seq, p.next_offset), (0, 0));
    let f = stage(&l, 1, "part-1.parquet").await;
    l.commit(&mut p, 100, vec![f.clone()]).await.unwrap();
    assert_eq!((p.seq, p.next_offset), (1, 100));
    assert!(exists(&l, &f.visible).await && !exists(&l, &f.staged).await);
    let again = ledger(tmp.path(), "b").load(&topic, 3).await.unwrap();
    assert_eq!(again, p);
}

#[tokio::test]
async fn a_second_writer_of_the_same_step_is_fenced() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (ledger(tmp.path(), "a"), ledger(tmp.path(), "b"));
    let topic: Arc<str> = Arc::from("cars topic");
    let mut pa = a.load(&topic, 3).await.unwrap();
    let mut pb = b.load(&topic, 3).await.unwrap();
    let fa = stage(&a, 1, "a.parquet").await;
    a.commit(&mut pa, 10, vec![fa]).await.unwrap();
    let fb = stage(&b, 1, "b.parquet").await;
    let err = b.commit(&mut pb, 20, vec![fb.clone()]).await.unwrap_err();
    assert!(matches!(err, LedgerError::Fenced { seq: 1, .. }), "{err}");
    assert!(
        !exists(&b, &fb.visible).await,
        "the fenced commit stays invisible"
    );
    // The loser reloads, sees the winner's position, and removes its orphan on the way.
    let reloaded = b.load(&topic, 3).await.unwrap();
    assert_eq!(reloaded.next_offset, 10);
    assert!(!exists(&b, &fb.staged).await);
}

#[tokio::test]
async fn a_crash_between_entry_and_rename_is_rolled_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger(tmp.path(), "a");
    let topic: Arc<str> = Arc::from("cars topic");
    let f = stage(&l, 1, "part.parquet").await;
    // Write the entry by hand, as if the process died right after its commit point.
    let entry = LedgerEntry {
        seq: 1,
        next_offset: 42,
        files: vec![f.clone()],
        writer: "a".into(),
        committed_at_ms: 0,
    };
    let path = l.entry_path("cars topic", 3, 1);
    l.store()
        .put(&path, PutPayload::from(serde_json::to_vec(&entry).unwrap()))
        .await
        .unwrap();
    assert!(!exists(&l, &f.visible).await);
    let p = ledger(tmp.path(), "b").load(&topic, 3).await.unwrap();
    assert_eq!(p.next_offset, 42);
    assert!(
        exists(&l, &f.visible).await,
        "roll forward made the file visible"
    );
}

#[tokio::test]
async fn old_entries_are_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger(tmp.path(), "a");
    let topic: Arc<str> = Arc::from("t");
    let mut p = l.load(&topic, 0).await.unwrap();
    for i in 1..=10 {
        l.commit(&mut p, i * 10, vec![]).await.unwrap();
    }
    let dir = l.entries_dir("t", 0);
    let n = l
        .store()
        .list(Some(&dir))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len();
    assert_eq!(n as u64, KEEP_ENTRIES);
    assert_eq!(l.latest("t", 0).await.unwrap().unwrap().next_offset, 100);
}
