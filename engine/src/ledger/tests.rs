use super::*;

fn ledger(dir: &std::path::Path, writer: &str) -> OffsetLedger {
    let loc = Location::open(dir.to_str().unwrap()).unwrap();
    OffsetLedger::new(loc, writer)
}

fn tp() -> TopicPartition {
    TopicPartition::new("cars topic", 3)
}

async fn stage(l: &OffsetLedger, seq: u64, name: &str) -> FileMove {
    let staged = l.staging_dir(&tp(), seq).join(name);
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

fn staging_is_empty(root: &std::path::Path) -> bool {
    let dir = root.join("_carflow/staging");
    !dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none()
}

#[tokio::test]
async fn a_commit_is_visible_survives_a_reload_and_leaves_no_staging_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger(tmp.path(), "a");
    let (mut p, entry) = l.load(&tp()).await.unwrap();
    assert_eq!((p.seq, p.next_offset, entry), (0, 0, None));
    let f = stage(&l, 1, "part-1.parquet").await;
    l.commit(&mut p, 100, vec![f.clone()], CommitState::default())
        .await
        .unwrap();
    assert_eq!((p.seq, p.next_offset), (1, 100));
    assert!(exists(&l, &f.visible).await && !exists(&l, &f.staged).await);
    assert!(
        staging_is_empty(tmp.path()),
        "the commit's staging directory is gone"
    );
    let (again, entry) = ledger(tmp.path(), "b").load(&tp()).await.unwrap();
    assert_eq!(
        (&again.tp, again.seq, again.next_offset, &again.topic_id),
        (&p.tp, p.seq, p.next_offset, &p.topic_id)
    );
    assert_eq!(entry.unwrap().next_offset, 100);
}

#[tokio::test]
async fn a_second_writer_of_the_same_step_is_fenced() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (ledger(tmp.path(), "a"), ledger(tmp.path(), "b"));
    let (mut pa, _) = a.load(&tp()).await.unwrap();
    let (mut pb, _) = b.load(&tp()).await.unwrap();
    let fa = stage(&a, 1, "a.parquet").await;
    a.commit(&mut pa, 10, vec![fa], CommitState::default())
        .await
        .unwrap();
    let fb = stage(&b, 1, "b.parquet").await;
    let err = b
        .commit(&mut pb, 20, vec![fb.clone()], CommitState::default())
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Fenced { seq: 1, .. }), "{err}");
    assert!(
        !exists(&b, &fb.visible).await,
        "the fenced commit stays invisible"
    );
    // The loser reloads and sees the winner's position; nothing of its commit is left.
    let (reloaded, _) = b.load(&tp()).await.unwrap();
    assert_eq!(reloaded.next_offset, 10);
    assert!(!exists(&b, &fb.staged).await);
    assert!(staging_is_empty(tmp.path()));
}

#[tokio::test]
async fn a_writer_frozen_while_others_went_on_cannot_publish_into_a_pruned_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let (zombie, owner) = (ledger(tmp.path(), "zombie"), ledger(tmp.path(), "owner"));
    let (mut pz, _) = zombie.load(&tp()).await.unwrap();
    let first = stage(&zombie, 1, "z1.parquet").await;
    zombie
        .commit(&mut pz, 10, vec![first], CommitState::default())
        .await
        .unwrap();
    // The zombie freezes; the new owner commits many steps (old entries are pruned).
    let (mut po, _) = owner.load(&tp()).await.unwrap();
    for i in 2..=9 {
        owner
            .commit(&mut po, i * 10, vec![], CommitState::default())
            .await
            .unwrap();
    }
    assert!(
        !exists(&owner, owner.entry_path(&tp(), 2).as_ref()).await,
        "entry 2 was pruned: its slot is free"
    );
    // The zombie wakes up and commits its next step, 2.
    let late = stage(&zombie, 2, "z2.parquet").await;
    let err = zombie
        .commit(&mut pz, 20, vec![late.clone()], CommitState::default())
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Fenced { seq: 2, .. }), "{err}");
    assert!(
        !exists(&zombie, &late.visible).await,
        "none of its files is visible"
    );
    assert!(
        !exists(&owner, owner.entry_path(&tp(), 2).as_ref()).await,
        "its entry was taken back"
    );
    let (now, _) = owner.load(&tp()).await.unwrap();
    assert_eq!((now.seq, now.next_offset), (9, 90));
}

#[tokio::test]
async fn a_crash_between_entry_and_rename_is_rolled_forward_by_loaders_and_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger(tmp.path(), "a");
    let f = stage(&l, 1, "part.parquet").await;
    // Write the entry by hand, as if the process died right after its commit point. The entry is
    // in the format of an older carflow (no progress, no windows): it still reads.
    let entry = serde_json::json!({
        "seq": 1, "next_offset": 42, "files": [f], "writer": "a", "committed_at_ms": 0
    });
    let path = l.entry_path(&tp(), 1);
    l.store()
        .put(&path, PutPayload::from(serde_json::to_vec(&entry).unwrap()))
        .await
        .unwrap();
    assert!(!exists(&l, &f.visible).await);
    assert_eq!(
        ledger(tmp.path(), "reader")
            .roll_forward_all()
            .await
            .unwrap(),
        1
    );
    assert!(
        exists(&l, &f.visible).await,
        "a reader made the file visible"
    );
    let (p, _) = ledger(tmp.path(), "b").load(&tp()).await.unwrap();
    assert_eq!(p.next_offset, 42);
}

#[tokio::test]
async fn old_entries_are_pruned_and_state_is_carried_by_each_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger(tmp.path(), "a");
    let (mut p, _) = l.load(&TopicPartition::new("t", 0)).await.unwrap();
    for i in 1..=10 {
        let mut state = CommitState {
            topic_id: Some("id-1".into()),
            ..Default::default()
        };
        state
            .progress
            .max_event_ms
            .insert("sold_at".into(), i * 1000);
        l.commit(&mut p, i * 10, vec![], state).await.unwrap();
    }
    let seqs = l.sequences(&TopicPartition::new("t", 0)).await.unwrap();
    assert_eq!(seqs.len() as u64, KEEP_ENTRIES);
    let latest = l
        .latest(&TopicPartition::new("t", 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.next_offset, 100);
    assert_eq!(latest.progress.max_event_ms["sold_at"], 10_000);
    assert_eq!(latest.topic_id.as_deref(), Some("id-1"));
}

/// Found by the short fault run (seed 20787, 2026-11-30): a writer killed while staging the
/// commit after the latest entry leaves files that the next owner's load does not sweep (they are
/// beyond the loaded step). Once that owner has taken the step itself, they are garbage.
#[tokio::test]
async fn a_dead_writers_staging_for_the_next_step_is_swept_after_the_new_owner_takes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = ledger(tmp.path(), "dead");
    let (_, _) = dead.load(&tp()).await.unwrap();
    // Killed while staging step 1: files, no entry.
    let _ = stage(&dead, 1, "dead.parquet").await;
    let owner = ledger(tmp.path(), "owner");
    let (mut p, _) = owner.load(&tp()).await.unwrap();
    assert!(
        !staging_is_empty(tmp.path()),
        "the load leaves step 1 alone"
    );
    let f = stage(&owner, 1, "owner.parquet").await;
    owner
        .commit(&mut p, 10, vec![f], CommitState::default())
        .await
        .unwrap();
    assert!(
        staging_is_empty(tmp.path()),
        "the dead writer's staged step 1 is gone"
    );
    // Later commits do not list the staging area again.
    let f = stage(&owner, 2, "owner2.parquet").await;
    owner
        .commit(&mut p, 20, vec![f], CommitState::default())
        .await
        .unwrap();
    assert!(staging_is_empty(tmp.path()));
}

/// A writer that stages a batch's commit while the previous one is still going on
/// (`lake.prestage`) can die with two steps staged beyond the latest entry: the one in flight
/// and the next. The new owner's first commit takes the first of those steps, its second commit
/// the other; each sweeps what the dead writer left for it.
#[tokio::test]
async fn a_dead_writers_two_staged_steps_are_swept_by_the_new_owners_first_two_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = ledger(tmp.path(), "dead");
    let (_, _) = dead.load(&tp()).await.unwrap();
    // Killed with step 1 in flight and step 2 staged early: files, no entries.
    let _ = stage(&dead, 1, "dead1.parquet").await;
    let _ = stage(&dead, 2, "dead2.parquet").await;
    let owner = ledger(tmp.path(), "owner");
    let (mut p, _) = owner.load(&tp()).await.unwrap();
    for (seq, next) in [(1, 10), (2, 20)] {
        let f = stage(&owner, seq, &format!("owner{seq}.parquet")).await;
        let expected = p.after_commit(next, &CommitState::default());
        owner
            .commit(&mut p, next, vec![f], CommitState::default())
            .await
            .unwrap();
        assert_eq!(
            p, expected,
            "the ledger after a commit is the one predicted"
        );
    }
    assert!(
        staging_is_empty(tmp.path()),
        "the dead writer's staged steps 1 and 2 are gone"
    );
}

fn record(l: &OffsetLedger, run: &str, staged: String) -> backfill::BackfillRecord {
    backfill::BackfillRecord {
        seq: 1,
        dataset: "x".into(),
        query: "queries/x.sql".into(),
        fingerprint: "f".into(),
        offsets: [("t/0".to_string(), vec![(0, 10)])].into_iter().collect(),
        rows: 10,
        files: vec![FileMove {
            staged,
            visible: l
                .location
                .path(&["x", &format!("backfill-{run}.parquet")])
                .to_string(),
        }],
        writer: run.into(),
        committed_at_ms: 0,
    }
}

/// Two backfills of one dataset racing for the same step: one commits, the other publishes
/// nothing and leaves no staged file; coverage of every entry is carried forward.
#[tokio::test]
async fn two_backfills_of_a_dataset_cannot_both_commit_a_step() {
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger(tmp.path(), "a");
    let b = backfill::Backfills::new(l.clone(), "x");
    let s1 = b
        .stage_file("run1", 0, bytes::Bytes::from_static(b"1"))
        .await
        .unwrap();
    let s2 = b
        .stage_file("run2", 0, bytes::Bytes::from_static(b"2"))
        .await
        .unwrap();
    let (r1, r2) = (record(&l, "run1", s1), record(&l, "run2", s2));
    b.publish("run1", &r1).await.unwrap();
    let err = b.publish("run2", &r2).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::BackfillRace { seq: 1, .. }),
        "{err}"
    );
    assert!(exists(&l, &r1.files[0].visible).await);
    assert!(
        !exists(&l, &r2.files[0].visible).await,
        "the loser publishes nothing"
    );
    assert!(
        !exists(&l, &r2.files[0].staged).await,
        "and leaves nothing staged"
    );
    assert_eq!(b.records().await.unwrap(), vec![r1]);
}

/// A backfill that died between its commit point and its renames is finished by readers.
#[tokio::test]
async fn readers_finish_a_backfill_whose_writer_died_before_its_renames() {
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger(tmp.path(), "a");
    let b = backfill::Backfills::new(l.clone(), "x");
    let staged = b
        .stage_file("run1", 0, bytes::Bytes::from_static(b"1"))
        .await
        .unwrap();
    let r = record(&l, "run1", staged);
    // The commit point without the renames: the record in place, its file still staged.
    let path = l
        .location
        .path(&["_carflow/backfill/x", &format!("{:020}.json", 1)]);
    l.store()
        .put(&path, PutPayload::from(serde_json::to_vec(&r).unwrap()))
        .await
        .unwrap();
    assert!(!exists(&l, &r.files[0].visible).await);
    assert_eq!(l.roll_forward_all().await.unwrap(), 1);
    assert!(exists(&l, &r.files[0].visible).await);
    assert_eq!(l.roll_forward_all().await.unwrap(), 0);
}

/// Each commit carries the datasets' runs of offsets forward, so pruning loses none.
#[tokio::test]
async fn coverage_is_carried_by_every_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger(tmp.path(), "a");
    let (mut p, _) = l.load(&tp()).await.unwrap();
    let with = |d: &[&str]| CommitState {
        datasets: d.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    l.commit(&mut p, 10, vec![], with(&["cars"])).await.unwrap();
    l.commit(&mut p, 20, vec![], with(&["cars", "x"]))
        .await
        .unwrap();
    for i in 3..=10 {
        l.commit(&mut p, i * 10, vec![], with(&["cars", "x"]))
            .await
            .unwrap();
    }
    l.commit(&mut p, 110, vec![], with(&["cars"]))
        .await
        .unwrap();
    let (p, latest) = l.load(&tp()).await.unwrap();
    let c = latest.unwrap().coverage.unwrap();
    assert_eq!(p.coverage.as_ref(), Some(&c));
    assert_eq!(c.runs("cars", 110), vec![(0, 110)]);
    assert_eq!(c.runs("x", 110), vec![(10, 100)]);
}

/// A merge committed with an entry whose writer died at the commit point (entry in place,
/// nothing renamed): the next owner's load, or a reader, shows the merged file and removes its
/// sources, once; before that the sources are what is visible.
#[tokio::test]
async fn a_merge_whose_writer_died_at_the_commit_point_is_finished_by_the_next_load_or_a_reader() {
    for by_reader in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let l = ledger(tmp.path(), "a");
        let (mut p, _) = l.load(&tp()).await.unwrap();
        let a = stage(&l, 1, "a.parquet").await;
        let b = stage(&l, 1, "b.parquet").await;
        l.commit(
            &mut p,
            10,
            vec![a.clone(), b.clone()],
            CommitState::default(),
        )
        .await
        .unwrap();
        // Step 2 merges a and b into ab, and its writer dies right after the commit point.
        let merged = stage(&l, 2, "ab.parquet").await;
        let c = Compaction {
            file: merged.clone(),
            replaces: vec!["a.parquet".into(), "b.parquet".into()],
            rows: 2,
        };
        let e = l
            .next_entry(&p, 10, Vec::new(), vec![c], CommitState::default())
            .unwrap();
        l.stage_entry(&e).await.unwrap();
        l.store()
            .rename_if_not_exists(&e.staged, &e.path)
            .await
            .unwrap();
        assert!(exists(&l, &a.visible).await && exists(&l, &b.visible).await);
        assert!(!exists(&l, &merged.visible).await);
        if by_reader {
            l.roll_forward_all().await.unwrap();
        } else {
            let (p2, entry) = ledger(tmp.path(), "b").load(&tp()).await.unwrap();
            assert_eq!((p2.seq, entry.unwrap().compactions.len()), (2, 1));
        }
        assert!(
            exists(&l, &merged.visible).await,
            "the merged file is visible"
        );
        assert!(
            !exists(&l, &a.visible).await && !exists(&l, &b.visible).await,
            "its sources are gone"
        );
        // Finishing again changes nothing.
        l.roll_forward_all().await.unwrap();
        assert!(exists(&l, &merged.visible).await);
        let dir = tmp.path().join("cars/dt=2026-11-27");
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
    }
}
