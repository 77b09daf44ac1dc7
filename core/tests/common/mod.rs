//! Shared helpers for core's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

/// The project's shared data folder (`../shared/data` beside the repository), or the folder
/// named by `CELLFORGE_SHARED_DATA`. Missing data is a test failure, never a skip.
pub fn shared_data() -> PathBuf {
    let dir = std::env::var_os("CELLFORGE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    assert!(
        dir.join("README.md").is_file(),
        "shared data not found at {} (set CELLFORGE_SHARED_DATA)",
        dir.display()
    );
    dir
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// SHA-256-free content fingerprint: length + FNV-1a of the bytes.
pub fn fingerprint(path: &std::path::Path) -> (u64, u64) {
    let bytes = std::fs::read(path).expect("read file");
    let mut h: u64 = 0xcbf29ce484222325;
    for b in &bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (bytes.len() as u64, h)
}

/// Named arrays of an `io.safetensors` file: `(shape, f64 values)`.
pub struct Io(pub BTreeMap<String, (Vec<usize>, Vec<f64>)>);

impl Io {
    pub fn read(path: &Path) -> Io {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut map = BTreeMap::new();
        for (name, view) in st.tensors() {
            let d = view.data();
            let vals: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                    .collect(),
                safetensors::Dtype::I64 => d
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::U8 => d.iter().map(|&b| b as f64).collect(),
                other => panic!("unexpected dtype {other:?} for {name}"),
            };
            map.insert(name, (view.shape().to_vec(), vals));
        }
        Io(map)
    }
    pub fn get(&self, k: &str) -> &(Vec<usize>, Vec<f64>) {
        self.0
            .get(k)
            .unwrap_or_else(|| panic!("io.safetensors has no {k}"))
    }
    pub fn has(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }
    pub fn ints<B: Backend>(&self, k: &str, dev: &B::Device) -> Tensor<B, 2, Int> {
        let (s, v) = self.get(k);
        let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
        Tensor::from_data(TensorData::new(v, [s[0], s[1]]), dev)
    }
    pub fn floats<B: Backend>(&self, k: &str, dev: &B::Device) -> Tensor<B, 2> {
        let (s, v) = self.get(k);
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(v, [s[0], s[1]]), dev)
    }
    pub fn mask<B: Backend>(&self, k: &str, dev: &B::Device) -> Tensor<B, 2, Bool> {
        let (s, v) = self.get(k);
        let v: Vec<bool> = v.iter().map(|&x| x != 0.0).collect();
        Tensor::from_data(TensorData::new(v, [s[0], s[1]]), dev)
    }
}

/// `n` points in `d` dimensions around `n_centres` random centres (deterministic LCG), with
/// each point's centre as its label.
pub fn synthetic_clusters(n: usize, d: usize, n_centres: usize) -> (Vec<f32>, Vec<u32>) {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) as f32
    };
    let centres: Vec<f32> = (0..n_centres * d).map(|_| (next() - 0.5) * 10.0).collect();
    let mut x = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % n_centres;
        labels.push(c as u32);
        for t in 0..d {
            // sum of 3 uniforms ~ roughly normal
            let noise = next() + next() + next() - 1.5;
            x.push(centres[c * d + t] + noise * 1.5);
        }
    }
    (x, labels)
}
