//! Tests for the `torch.save` checkpoint reader against real PyTorch output and hostile files.
//!
//! Fixtures live in `tests/fixtures/pt/` and are produced by
//! `scripts/reference/make_pt_fixtures.py` (valid ones by real `torch.save`).

use std::path::PathBuf;

use cellforge_core::checkpoint::{PtCheckpoint, PtDtype, PtError, PtLimits, PtTensor};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pt")
        .join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn load(name: &str) -> PtCheckpoint {
    PtCheckpoint::open(&fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn load_err(name: &str) -> PtError {
    match PtCheckpoint::open(&fixture_path(name)) {
        Ok(ck) => panic!(
            "{name} loaded but should have been refused: {:?}",
            ck.names().collect::<Vec<_>>()
        ),
        Err(e) => e,
    }
}

fn tensor<'a>(ck: &'a PtCheckpoint, name: &str) -> &'a PtTensor {
    ck.get(name).unwrap_or_else(|| {
        panic!(
            "no tensor {name:?}; have {:?}",
            ck.names().collect::<Vec<_>>()
        )
    })
}

fn assert_tensor(ck: &PtCheckpoint, name: &str, dtype: PtDtype, shape: &[usize], values: &[f32]) {
    let t = tensor(ck, name);
    assert_eq!(t.dtype, dtype, "{name} dtype");
    assert_eq!(t.shape(), shape, "{name} shape");
    assert_eq!(t.numel(), values.len(), "{name} numel");
    let got = t.to_f32();
    assert_eq!(got.len(), values.len(), "{name} length");
    for (i, (g, w)) in got.iter().zip(values).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || g == w,
            "{name}[{i}] = {g}, expected {w} (all: {got:?})"
        );
    }
}

fn range(start: u16, end: u16) -> Vec<f32> {
    (start..end).map(f32::from).collect()
}

// ----------------------------------------------------------------------------- valid files

#[test]
fn state_dict_names_in_pickle_order() {
    let ck = load("state_dict.pt");
    let names: Vec<&str> = ck.names().collect();
    assert_eq!(
        names,
        [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "extra.f16",
            "extra.bf16",
            "extra.f64",
            "extra.i32",
            "extra.i16",
            "extra.i8",
            "extra.u8",
            "extra.bool",
            "extra.base",
            "extra.transposed",
            "extra.row0",
            "extra.rows12",
            "extra.strided",
            "extra.expanded",
            "extra.empty",
        ]
    );
    assert_eq!(ck.len(), names.len());
    assert_eq!(ck.tensors().len(), names.len());
    // The OrderedDict's `_metadata` (set with BUILD) is accepted and ignored.
    assert!(ck.metadata().is_empty(), "{:?}", ck.metadata());
}

#[test]
fn state_dict_float_tensors() {
    let ck = load("state_dict.pt");
    assert_tensor(
        &ck,
        "0.weight",
        PtDtype::F32,
        &[2, 3],
        &[-0.5, -0.25, 0.0, 0.25, 0.5, 0.75],
    );
    assert_tensor(&ck, "0.bias", PtDtype::F32, &[2], &[0.25, -0.75]);
    assert_tensor(&ck, "1.weight", PtDtype::F32, &[2], &[1.0, 1.0]);
    assert_tensor(&ck, "1.bias", PtDtype::F32, &[2], &[0.0, 0.0]);
    assert_tensor(&ck, "1.running_mean", PtDtype::F32, &[2], &[1.5, -2.0]);
    assert_tensor(&ck, "1.running_var", PtDtype::F32, &[2], &[0.5, 4.0]);
}

#[test]
fn num_batches_tracked_is_an_int64_scalar() {
    let ck = load("state_dict.pt");
    let t = tensor(&ck, "1.num_batches_tracked");
    assert_eq!(t.dtype, PtDtype::I64);
    assert!(t.shape().is_empty());
    assert_eq!(t.numel(), 1);
    assert_eq!(t.as_f32(), &[7.0]);
}

#[test]
fn half_bfloat_double_are_converted() {
    let ck = load("state_dict.pt");
    let h = |x: f32| half::f16::from_f32(x).to_f32();
    assert_tensor(
        &ck,
        "extra.f16",
        PtDtype::F16,
        &[2, 3],
        &[0.5, -1.25, 3.0, 65504.0, -0.0, h(0.1)],
    );
    assert!(tensor(&ck, "extra.f16").as_f32()[4].is_sign_negative());
    assert_tensor(
        &ck,
        "extra.bf16",
        PtDtype::BF16,
        &[4],
        &[1.0, -2.5, 3.140625, half::bf16::from_f32(1e30).to_f32()],
    );
    assert_tensor(
        &ck,
        "extra.f64",
        PtDtype::F64,
        &[3],
        &[1.0, -1e-3_f64 as f32, 123_456.789_f64 as f32],
    );
}

#[test]
fn integer_and_bool_tensors_are_converted() {
    let ck = load("state_dict.pt");
    assert_tensor(
        &ck,
        "extra.i32",
        PtDtype::I32,
        &[3],
        &[-3.0, 0.0, 2_147_483_648.0],
    );
    assert_tensor(&ck, "extra.i16", PtDtype::I16, &[2], &[-32768.0, 5.0]);
    assert_tensor(&ck, "extra.i8", PtDtype::I8, &[2], &[-128.0, 127.0]);
    assert_tensor(&ck, "extra.u8", PtDtype::U8, &[2], &[0.0, 255.0]);
    assert_tensor(&ck, "extra.bool", PtDtype::Bool, &[3], &[1.0, 0.0, 1.0]);
}

#[test]
fn transposed_view_is_materialised_row_major() {
    let ck = load("state_dict.pt");
    assert_tensor(&ck, "extra.base", PtDtype::F32, &[3, 4], &range(0, 12));
    assert_tensor(
        &ck,
        "extra.transposed",
        PtDtype::F32,
        &[4, 3],
        &[0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.],
    );
}

#[test]
fn tensors_sharing_a_storage_at_different_offsets() {
    let ck = load("state_dict.pt");
    assert_tensor(&ck, "extra.row0", PtDtype::F32, &[4], &range(100, 104));
    assert_tensor(&ck, "extra.rows12", PtDtype::F32, &[2, 4], &range(104, 112));
}

#[test]
fn strided_expanded_and_empty_views() {
    let ck = load("state_dict.pt");
    assert_tensor(
        &ck,
        "extra.strided",
        PtDtype::F32,
        &[3, 2],
        &[201., 203., 205., 207., 209., 211.],
    );
    assert_tensor(&ck, "extra.expanded", PtDtype::F32, &[2, 3], &[7.0; 6]);
    assert_tensor(&ck, "extra.empty", PtDtype::F32, &[0, 3], &[]);
}

#[test]
fn from_bytes_matches_open_and_into_tensors_keeps_order() {
    let a = load("state_dict.pt");
    let b = PtCheckpoint::from_bytes(&fixture("state_dict.pt")).unwrap();
    assert_eq!(a.tensors(), b.tensors());
    let names: Vec<String> = a.names().map(str::to_owned).collect();
    let owned = b.into_tensors();
    assert_eq!(
        owned.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        names
    );
    let (_, first) = owned.into_iter().next().unwrap();
    assert_eq!(first.into_f32().len(), 6);
}

#[test]
fn open_from_a_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.pt");
    std::fs::write(&path, fixture("proto4.pt")).unwrap();
    let ck = PtCheckpoint::open(&path).unwrap();
    assert_eq!(ck.len(), 2);
}

#[test]
fn nested_checkpoint_is_flattened_with_dots() {
    let ck = load("nested.pt");
    assert_tensor(
        &ck,
        "model.encoder.weight",
        PtDtype::F32,
        &[2, 2],
        &[1., 2., 3., 4.],
    );
    assert_tensor(&ck, "model.encoder.bias", PtDtype::F32, &[2], &[0.5, -0.5]);
    assert_tensor(
        &ck,
        "model.decoder.weight",
        PtDtype::F32,
        &[1, 2],
        &[-1., 1.],
    );
    // Optimizer state: int dict keys become path components.
    for name in [
        "optimizer.state.0.exp_avg",
        "optimizer.state.0.exp_avg_sq",
        "optimizer.state.2.exp_avg",
    ] {
        assert!(ck.get(name).is_some(), "missing {name}");
    }
    assert_eq!(tensor(&ck, "optimizer.state.0.exp_avg").shape(), &[2, 2]);
    let first: Vec<&str> = ck.names().take(3).collect();
    assert_eq!(
        first,
        [
            "model.encoder.weight",
            "model.encoder.bias",
            "model.decoder.weight"
        ]
    );
    // Non-tensor leaves are kept as text metadata.
    assert_eq!(ck.metadata_value("epoch"), Some("3"));
    assert_eq!(ck.metadata_value("lr"), Some("0.001"));
    assert_eq!(ck.metadata_value("name"), Some("run1"));
    assert_eq!(ck.metadata_value("done"), Some("False"));
    assert_eq!(
        ck.metadata_value("optimizer.param_groups.0.lr"),
        Some("0.001")
    );
    assert_eq!(
        ck.metadata_value("optimizer.param_groups.0.betas.0"),
        Some("0.9")
    );
    assert_eq!(
        ck.metadata_value("optimizer.param_groups.0.params.2"),
        Some("2")
    );
    assert_eq!(
        ck.metadata().first().map(|(n, _)| n.as_str()),
        Some("epoch")
    );
}

#[test]
fn protocol_4_pickle() {
    // FRAME, MEMOIZE, SHORT_BINUNICODE and STACK_GLOBAL.
    let ck = load("proto4.pt");
    assert_tensor(&ck, "a", PtDtype::F32, &[2, 2], &[1., 3., 2., 4.]);
    assert_tensor(&ck, "b", PtDtype::I64, &[], &[5.]);
}

#[test]
fn parameters_with_and_without_state() {
    let ck = load("parameters.pt");
    assert_tensor(&ck, "p", PtDtype::F32, &[2], &[1., 2.]);
    assert_tensor(&ck, "q", PtDtype::F32, &[1], &[3.]);
}

#[test]
fn bare_tensor_is_named_empty() {
    let ck = load("tensor_only.pt");
    assert_eq!(ck.names().collect::<Vec<_>>(), [""]);
    assert_tensor(&ck, "", PtDtype::F32, &[3], &[0., 1., 2.]);
}

#[test]
fn archive_folder_named_after_the_file() {
    let ck = load("stem_named.pt");
    assert_tensor(&ck, "w", PtDtype::F32, &[1], &[1.5]);
}

// ------------------------------------------------------------------------------- refusals

#[test]
fn refuses_posix_system() {
    let err = load_err("evil_posix_system.pt");
    match &err {
        PtError::ForbiddenGlobal { module, name } => {
            assert_eq!(module, "posix");
            assert_eq!(name, "system");
        }
        other => panic!("expected ForbiddenGlobal, got {other:?}"),
    }
    assert!(err.to_string().contains("posix.system"), "{err}");
}

#[test]
fn refuses_builtins_eval() {
    // Pickle protocol 2 spells the module the Python 2 way.
    let err = load_err("evil_builtins_eval.pt");
    assert!(
        matches!(&err, PtError::ForbiddenGlobal { module, name } if module == "__builtin__" && name == "eval"),
        "{err:?}"
    );
    assert!(err.to_string().contains("__builtin__.eval"), "{err}");
}

#[test]
fn refuses_stack_global_eval() {
    let err = load_err("evil_stack_global.pt");
    assert!(
        matches!(&err, PtError::ForbiddenGlobal { module, name } if module == "builtins" && name == "eval"),
        "{err:?}"
    );
    assert!(err.to_string().contains("builtins.eval"), "{err}");
}

#[test]
fn refuses_unknown_opcode() {
    let err = load_err("unknown_opcode.pt");
    assert!(matches!(err, PtError::UnsupportedOpcode(0x8f)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("EMPTY_SET") && msg.contains("0x8f"), "{msg}");
}

#[test]
fn refuses_truncated_archive() {
    let bytes = fixture("state_dict.pt");
    let err = PtCheckpoint::from_bytes(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(err, PtError::Truncated(_)), "{err:?}");
    let err = PtCheckpoint::from_bytes(&bytes[..bytes.len() - 10]).unwrap_err();
    assert!(matches!(err, PtError::Truncated(_)), "{err:?}");
}

#[test]
fn refuses_truncated_pickle() {
    let err = load_err("truncated_pickle.pt");
    assert!(matches!(err, PtError::Truncated(_)), "{err:?}");
    assert!(err.to_string().contains("archive/data.pkl"), "{err}");
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = fixture("state_dict.pt");
    for len in 0..bytes.len() {
        assert!(
            PtCheckpoint::from_bytes(&bytes[..len]).is_err(),
            "prefix of {len} bytes loaded"
        );
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    for name in ["state_dict.pt", "nested.pt", "proto4.pt"] {
        let bytes = fixture(name);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            // Must return (Ok for a flipped tensor value, Err otherwise), never panic.
            let _ = PtCheckpoint::from_bytes(&b);
        }
    }
}

#[test]
fn refuses_corrupt_storage_crc() {
    let mut bytes = fixture("stem_named.pt");
    // Flip the last byte of the stored 1.5f32 (0x3fc00000 little-endian -> 00 00 c0 3f).
    let pos = bytes
        .windows(4)
        .position(|w| w == 1.5f32.to_le_bytes())
        .unwrap();
    bytes[pos + 3] ^= 0x01;
    let err = PtCheckpoint::from_bytes(&bytes).unwrap_err();
    assert!(matches!(err, PtError::Malformed(_)), "{err:?}");
    assert!(err.to_string().contains("stem_named/data/0"), "{err}");
}

#[test]
fn refuses_shape_larger_than_storage() {
    let err = load_err("oob_shape.pt");
    match &err {
        PtError::TensorOutOfBounds {
            name,
            storage,
            needed,
            available,
        } => {
            assert_eq!(name, "big");
            assert_eq!(storage, "archive/data/0");
            assert_eq!((*needed, *available), (16, 6));
        }
        other => panic!("expected TensorOutOfBounds, got {other:?}"),
    }
    assert!(err.to_string().contains("\"big\""), "{err}");
}

#[test]
fn refuses_offset_past_storage() {
    let err = load_err("oob_offset.pt");
    assert!(
        matches!(&err, PtError::TensorOutOfBounds { name, needed: 7, available: 6, .. } if name == "shifted"),
        "{err:?}"
    );
}

#[test]
fn refuses_stride_past_storage() {
    let err = load_err("oob_stride.pt");
    assert!(
        matches!(&err, PtError::TensorOutOfBounds { name, needed, available: 6, .. }
            if name == "strided" && *needed == (1u64 << 40) + 2),
        "{err:?}"
    );
}

#[test]
fn refuses_missing_storage_record() {
    let err = load_err("missing_storage.pt");
    assert!(matches!(err, PtError::MissingStorage(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("ghost") && msg.contains("archive/data/1"),
        "{msg}"
    );
}

#[test]
fn refuses_storage_shorter_than_declared() {
    let err = load_err("short_storage.pt");
    assert!(matches!(err, PtError::Malformed(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("short") && msg.contains("archive/data/0"),
        "{msg}"
    );
}

#[test]
fn refuses_path_traversal_entry() {
    let err = load_err("traversal.pt");
    assert!(
        matches!(&err, PtError::UnsafeEntryName(n) if n == "archive/../../../tmp/evil.sh"),
        "{err:?}"
    );
    assert!(err.to_string().contains("../../../tmp/evil.sh"), "{err}");
}

#[test]
fn refuses_absolute_entry() {
    let err = load_err("absolute_path.pt");
    assert!(
        matches!(&err, PtError::UnsafeEntryName(n) if n == "/etc/cron.d/evil"),
        "{err:?}"
    );
}

#[test]
fn refuses_zip_bomb_before_inflating() {
    let err = load_err("zip_bomb.pt");
    match &err {
        PtError::ZipBomb {
            entry,
            uncompressed,
            compressed,
            ..
        } => {
            assert_eq!(entry, "archive/data/0");
            assert_eq!(*uncompressed, 0x7fff_ffff);
            assert!(*compressed < 1000);
        }
        other => panic!("expected ZipBomb, got {other:?}"),
    }
    assert!(err.to_string().contains("archive/data/0"), "{err}");
}

#[test]
fn refuses_big_endian() {
    let err = load_err("big_endian.pt");
    assert!(matches!(err, PtError::BigEndian), "{err:?}");
}

#[test]
fn refuses_legacy_format() {
    let err = load_err("legacy.pt");
    assert!(matches!(err, PtError::LegacyFormat), "{err:?}");
    assert!(err.to_string().contains("1.6"), "{err}");
}

#[test]
fn refuses_non_zip_inputs() {
    let err = load_err("lfs_pointer.pt");
    assert!(matches!(err, PtError::NotZip(_)), "{err:?}");
    assert!(err.to_string().contains("Git LFS"), "{err}");

    let err = PtCheckpoint::from_bytes(b"<html>404 not found</html>").unwrap_err();
    assert!(matches!(err, PtError::NotZip(_)), "{err:?}");
    assert!(err.to_string().contains("3c 68 74 6d"), "{err}");

    let err = PtCheckpoint::from_bytes(b"").unwrap_err();
    assert!(matches!(err, PtError::NotZip(_)), "{err:?}");
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let err = PtCheckpoint::open(&fixture_path("does_not_exist.pt")).unwrap_err();
    assert!(matches!(err, PtError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("does_not_exist.pt"), "{err}");
}

#[test]
fn limits_are_enforced() {
    let bytes = fixture("state_dict.pt");
    let limits = PtLimits {
        max_output_elements: 5,
        ..PtLimits::default()
    };
    let err = PtCheckpoint::from_bytes_with_limits(&bytes, &limits).unwrap_err();
    assert!(
        matches!(
            err,
            PtError::TooLarge {
                size: 6,
                limit: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("0.weight"), "{err}");

    let limits = PtLimits {
        max_pickle_bytes: 100,
        ..PtLimits::default()
    };
    let err = PtCheckpoint::from_bytes_with_limits(&bytes, &limits).unwrap_err();
    assert!(
        matches!(err, PtError::TooLarge { limit: 100, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("archive/data.pkl"), "{err}");

    let limits = PtLimits {
        max_total_uncompressed_bytes: 1000,
        ..PtLimits::default()
    };
    let err = PtCheckpoint::from_bytes_with_limits(&bytes, &limits).unwrap_err();
    assert!(
        matches!(err, PtError::TooLarge { limit: 1000, .. }),
        "{err:?}"
    );
}
