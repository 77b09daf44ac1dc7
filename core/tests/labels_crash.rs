//! Pins the annotation journal's crash safety (issue 8, "manual annotation edits are
//! journaled and recovered after a crash or kill -9"): a child process edits labels with a
//! journal attached as fast as it can and is killed with SIGKILL mid-stream; the journal
//! then recovers to exactly the state of the first `records` actions of the same
//! deterministic sequence, and accepts further edits. Without the per-edit flush + sync, or
//! with a recovery that trips over the torn last line, this fails.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cellforge_core::tl::labels::{
    DatasetIdentity, Edit, Journal, LabelColumn, LabelSession, Source,
};

const N_CELLS: usize = 50_000;
const CHILD_ENV: &str = "CELLFORGE_LABELS_CRASH_CHILD";

fn initial() -> LabelSession {
    let labels: Vec<Option<String>> = (0..N_CELLS)
        .map(|i| (i % 10 != 0).then(|| format!("type{}", i % 4)))
        .collect();
    LabelSession::with_source(
        LabelColumn::from_labels(&labels).expect("column"),
        Source::Model,
        None,
    )
}

/// Action `i` of the deterministic sequence: mostly assignments, some undos and redos,
/// renames and merges.
fn act(s: &mut LabelSession, i: u64) {
    let r = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    match i % 17 {
        5 | 11 if s.can_undo() => {
            s.undo().expect("undo");
        }
        7 if s.can_redo() => {
            s.redo().expect("redo");
        }
        13 => {
            let from = format!("L{}", r % 7);
            let into = format!("L{}", (r + 1) % 7);
            if s.column().category_index(&from).is_some() {
                s.apply(Edit::Merge {
                    from: vec![from],
                    into,
                })
                .expect("merge");
            }
        }
        _ => {
            let start = (r as usize) % N_CELLS;
            let cells: Vec<u32> = (0..200)
                .map(|k| ((start + k * 37) % N_CELLS) as u32)
                .collect();
            s.apply(Edit::Assign {
                cells,
                label: format!("L{}", r % 7),
            })
            .expect("assign");
        }
    }
}

/// The session after the actions that wrote the first `records` journal lines (a merge of
/// a missing category does nothing and writes nothing).
fn replay_to(records: u64) -> LabelSession {
    let mut s = initial();
    let mut i = 0u64;
    let mut written = 0u64;
    while written < records {
        let before = (
            s.undo_len(),
            s.redo_len(),
            s.column().clone(),
            s.sources().to_vec(),
        );
        act(&mut s, i);
        i += 1;
        let after = (s.undo_len(), s.redo_len());
        if after != (before.0, before.1) || s.column() != &before.2 || s.sources() != before.3 {
            written += 1;
        }
    }
    s
}

fn child(dir: &Path) {
    let mut s = initial();
    s.start_journal(
        dir.join("labels.journal"),
        DatasetIdentity {
            path: "demo.h5ad".into(),
            n_cells: N_CELLS as u64,
            fingerprint: "test".into(),
            label_column: "cell_type".into(),
        },
    )
    .expect("journal");
    // bounded, in case the parent dies without killing us
    let start = Instant::now();
    for i in 0..1_000_000 {
        act(&mut s, i);
        if start.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
}

/// Kills the child if the parent test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn journal_survives_kill_9() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("labels.journal");
    let mut proc = KillOnDrop(
        Command::new(std::env::current_exe().expect("test binary"))
            .args(["journal_survives_kill_9", "--exact", "--nocapture"])
            .env(CHILD_ENV, dir.path())
            .spawn()
            .expect("spawn child"),
    );
    // let it write a few hundred records, then SIGKILL it mid-stream
    let start = Instant::now();
    loop {
        let lines = std::fs::read(&journal)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        if lines > 300 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "child wrote {lines} lines"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    proc.0.kill().expect("SIGKILL");
    proc.0.wait().expect("reap");

    let rec = Journal::recover(&journal).expect("recover after kill -9");
    assert!(rec.records >= 300, "only {} records recovered", rec.records);
    assert!(rec.torn_lines <= 1);
    assert_eq!(rec.identity.n_cells, N_CELLS as u64);
    let expected = replay_to(rec.records);
    let mut got = rec.session;
    assert_eq!(got.column(), expected.column(), "labels after recovery");
    assert_eq!(
        got.sources(),
        expected.sources(),
        "provenance after recovery"
    );
    assert_eq!(got.undo_len(), expected.undo_len());
    assert_eq!(got.redo_len(), expected.redo_len());

    // the recovered journal takes further edits and recovers again
    got.apply(Edit::Assign {
        cells: vec![0, 1, 2],
        label: "after-crash".into(),
    })
    .expect("edit after recovery");
    drop(got);
    let again = Journal::recover(&journal).expect("second recovery");
    assert_eq!(again.records, rec.records + 1);
    assert_eq!(again.torn_lines, 0);
    assert_eq!(again.session.column().label_of(1), Some("after-crash"));
}
