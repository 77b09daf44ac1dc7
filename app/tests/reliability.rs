//! Never lose data when a write fails, and never write to the input. Each test names the
//! protection it pins; removing the protection makes it fail:
//! - outputs go to a temporary file in the destination folder, are fsynced and renamed, and
//!   a failed write removes the temporary file and leaves an existing destination unchanged;
//! - the error says what happened (a full disk, permission denied) and that nothing was
//!   replaced;
//! - input files are only ever opened read-only.
//!
//! A full disk is real where the test can mount a small tmpfs (root); elsewhere a file-size
//! limit (`ulimit -f`, with SIGXFSZ ignored) makes the write fail the same way mid-file.
//! Permission denied runs the binary as `nobody` when the tests run as root (root ignores
//! permission bits), else uses a read-only folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::text;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cellforge")
}

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/demo/pbmcs_small.h5ad")
}

fn control() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/broken/control_valid.h5ad")
}

/// The binary as `nobody` can run it: the build's own path when every folder above it is
/// open to others, else a copy in a fresh world-readable folder (removed on drop).
struct NobodyBin {
    path: PathBuf,
    _copy: Option<tempfile::TempDir>,
}

fn nobody_bin() -> NobodyBin {
    let own = PathBuf::from(bin());
    let runs = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&own)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if runs {
        return NobodyBin {
            path: own,
            _copy: None,
        };
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("cellforge");
    std::fs::copy(&own, &copy).expect("copy the binary");
    Command::new("chmod")
        .arg("755")
        .arg(dir.path())
        .arg(&copy)
        .output()
        .expect("chmod");
    NobodyBin {
        path: copy,
        _copy: Some(dir),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".partial"))
                .collect()
        })
        .unwrap_or_default()
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        if !is_root() {
            return None;
        }
        let dir = tempfile::tempdir().ok()?.keep();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        ok.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Protection: temp file + rename, and a clear "disk is full" error that says nothing was
/// replaced. The demo (1.2 MB) is converted onto a 600 KiB disk holding an older output.
#[test]
fn a_full_disk_leaves_the_old_file_intact_and_says_so() {
    let old = std::fs::read(control()).expect("control file");
    let (o, dir, _keep_disk, _keep_tmp): (Output, PathBuf, Option<SmallDisk>, _) =
        match SmallDisk::mount("600k") {
            Some(disk) => {
                let dir = disk.0.clone();
                std::fs::write(dir.join("out.h5ad"), &old).expect("old output");
                let o = Command::new(bin())
                    .args(["convert"])
                    .arg(demo())
                    .arg("--output")
                    .arg(dir.join("out.h5ad"))
                    .output()
                    .expect("run");
                (o, dir, Some(disk), None)
            }
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let dir = t.path().to_path_buf();
                std::fs::write(dir.join("out.h5ad"), &old).expect("old output");
                let o = Command::new("bash")
                    .arg("-c")
                    .arg("trap '' XFSZ; ulimit -f 600; exec \"$0\" \"$@\"")
                    .arg(bin())
                    .arg("convert")
                    .arg(demo())
                    .arg("--output")
                    .arg(dir.join("out.h5ad"))
                    .output()
                    .expect("run");
                (o, dir, None, Some(t))
            }
        };
    let t = text(&o);
    assert!(!o.status.success(), "the write should have failed: {t}");
    assert!(
        t.contains("the disk is full") || t.contains("refused a file this large"),
        "{t}"
    );
    assert!(
        t.contains("an existing file at this path is unchanged"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
    assert_eq!(
        std::fs::read(dir.join("out.h5ad")).expect("old output"),
        old,
        "the old output changed"
    );
    assert!(partial_files(&dir).is_empty(), "{:?}", partial_files(&dir));
}

/// Protection: a destination folder cellforge may not write to fails before anything is
/// touched, with "permission denied" and the old file unchanged.
#[test]
fn permission_denied_leaves_the_old_file_intact_and_says_so() {
    let work = tempfile::tempdir().expect("tempdir");
    let input_dir = work.path().join("in");
    let out_dir = work.path().join("out");
    std::fs::create_dir_all(&input_dir).expect("mkdir");
    std::fs::create_dir_all(&out_dir).expect("mkdir");
    let input = input_dir.join("data.h5ad");
    std::fs::copy(control(), &input).expect("input");
    let old = b"an older result".to_vec();
    std::fs::write(out_dir.join("out.h5ad"), &old).expect("old output");
    let chmod = |p: &Path, mode: &str| {
        Command::new("chmod")
            .arg(mode)
            .arg(p)
            .output()
            .expect("chmod");
    };
    chmod(work.path(), "755");
    chmod(&input_dir, "755");
    chmod(&input, "644");
    let o = if is_root() {
        // Root ignores permission bits: run as nobody; the folder stays root's 0755.
        chmod(&out_dir, "755");
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                bin(),
                "convert",
            ])
            .arg(&input)
            .arg("--output")
            .arg(out_dir.join("out.h5ad"))
            .output()
            .expect("run setpriv")
    } else {
        chmod(&out_dir, "555");
        let o = Command::new(bin())
            .arg("convert")
            .arg(&input)
            .arg("--output")
            .arg(out_dir.join("out.h5ad"))
            .output()
            .expect("run");
        chmod(&out_dir, "755");
        o
    };
    let t = text(&o);
    assert!(!o.status.success(), "the write should have failed: {t}");
    assert!(t.to_lowercase().contains("permission denied"), "{t}");
    assert!(
        t.contains("an existing file at this path is unchanged"),
        "{t}"
    );
    assert_eq!(std::fs::read(out_dir.join("out.h5ad")).expect("old"), old);
    assert!(partial_files(&out_dir).is_empty());
}

/// Protection: inputs are opened read-only. The input is a file its reader may not write
/// (as root: run as nobody on a root-owned 0644 file; otherwise a 0444 file), and every
/// command that reads a dataset still works and leaves it byte for byte the same.
#[test]
fn inputs_are_never_opened_for_writing() {
    let work = tempfile::tempdir().expect("tempdir");
    let input = work.path().join("demo.h5ad");
    std::fs::copy(demo(), &input).expect("copy");
    let out_dir = work.path().join("out");
    std::fs::create_dir_all(&out_dir).expect("mkdir");
    let as_nobody = is_root().then(nobody_bin);
    let run = |args: &[&std::ffi::OsStr]| -> Output {
        if let Some(b) = &as_nobody {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&b.path)
                .args(args)
                .output()
                .expect("run")
        } else {
            Command::new(bin()).args(args).output().expect("run")
        }
    };
    let chmod = |p: &Path, mode: &str| {
        Command::new("chmod")
            .arg(mode)
            .arg(p)
            .output()
            .expect("chmod");
    };
    chmod(work.path(), "755");
    chmod(&out_dir, "777");
    chmod(&input, if is_root() { "644" } else { "444" });
    let before = std::fs::read(&input).expect("read");
    let mtime = std::fs::metadata(&input).and_then(|m| m.modified()).ok();
    let out = |n: &str| out_dir.join(n);
    let cases: Vec<Vec<std::ffi::OsString>> = vec![
        vec!["inspect".into(), input.clone().into()],
        vec![
            "convert".into(),
            input.clone().into(),
            "--output".into(),
            out("c.h5ad").into(),
        ],
        vec![
            "preprocess".into(),
            input.clone().into(),
            "--output".into(),
            out("p.h5ad").into(),
            "--layer".into(),
            "counts".into(),
            "--n-hvg".into(),
            "200".into(),
        ],
        vec![
            "pca".into(),
            input.clone().into(),
            "-o".into(),
            out("pca.h5ad").into(),
            "--n-comps".into(),
            "10".into(),
        ],
    ];
    for args in &cases {
        let a: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_os_str()).collect();
        let o = run(&a);
        assert!(o.status.success(), "{:?}: {}", args[0], text(&o));
    }
    assert_eq!(
        std::fs::read(&input).expect("read"),
        before,
        "the input changed"
    );
    assert_eq!(
        std::fs::metadata(&input).and_then(|m| m.modified()).ok(),
        mtime,
        "the input's modification time changed"
    );
}

/// Protection: when the device runs out of memory in training, the step is retried on half
/// the cells (the weights are only touched after a step succeeds) and training carries on,
/// saying so; in embedding, the batch is halved. The failure is injected
/// (`CELLFORGE_FAULT_OOM_ABOVE`) on the path a backend's allocation panic takes.
#[test]
fn out_of_memory_backs_off_in_training_and_embedding() {
    let work = tempfile::tempdir().expect("tempdir");
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/demo/model");
    let o = Command::new(bin())
        .env("CELLFORGE_FAULT_OOM_ABOVE", "10")
        .arg("finetune")
        .arg("--reference")
        .arg(demo())
        .args(["--label-key", "cell_type", "--model"])
        .arg(&model)
        .arg("--output")
        .arg(work.path().join("tuned"))
        .args([
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--max-len",
            "32",
            "--device",
            "cpu",
            "--lr",
            "1e-3",
        ])
        .output()
        .expect("run finetune");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // 32 -> 16 -> 8 cells per step.
    assert!(
        t.contains("the device ran out of memory: continuing with steps of about 16 cells"),
        "{t}"
    );
    assert!(t.contains("continuing with steps of about 8 cells"), "{t}");
    let log: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join("tuned/train_log.json")).expect("train log"),
    )
    .expect("json");
    let steps = log["steps"].as_u64().expect("steps");
    // About 1,080 training cells in minibatches of 32 (34 of them), each taken in 4 pieces.
    assert!(steps >= 4 * 33, "{steps} steps");
    assert!(work.path().join("tuned/model.safetensors").is_file());

    let o = Command::new(bin())
        .env("CELLFORGE_FAULT_OOM_ABOVE", "10")
        .arg("embed")
        .arg(demo())
        .arg("--model")
        .arg(&model)
        .arg("--output")
        .arg(work.path().join("embedded.h5ad"))
        .args([
            "--max-length",
            "32",
            "--batch-size",
            "32",
            "--device",
            "cpu",
        ])
        .output()
        .expect("run embed");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("the device ran out of memory: continuing with 8 cells per batch"),
        "{t}"
    );
}
