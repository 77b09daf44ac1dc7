//! Fast path for the big 1-D arrays of an h5ad file (X's data and indices) and contiguous
//! dense matrices. When a dataset is little-endian and either contiguous, or chunked with no
//! filter or with gzip (deflate, optionally after shuffle), its chunks are located once and
//! read straight from the file with positioned reads, decompressed on several threads. The
//! HDF5 library would do the same work on one thread behind its global lock. Anything else
//! (lzf, checksums, big-endian, unallocated chunks) returns `None` and goes through HDF5.

use std::io::Read;
use std::os::unix::fs::FileExt;

use hdf5::Dataset;
use hdf5::filters::Filter;
use hdf5::types::TypeDescriptor;

/// Work smaller than this is not worth a thread.
const MIN_PART_BYTES: usize = 8 << 20;
const MAX_THREADS: usize = 4;
/// HDF5's own limit on a chunk's size; anything larger is not a real chunk.
const MAX_CHUNK_BYTES: usize = 4 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Plain,
    Deflate { shuffle: bool },
}

/// One stored piece: elements `start..start + len` at file offset `addr`, `stored` bytes.
#[derive(Debug, Clone, Copy)]
struct Extent {
    start: usize,
    len: usize,
    addr: u64,
    stored: usize,
}

/// Where a dataset's elements live in its file and how they are coded.
#[derive(Debug, Clone)]
pub(crate) struct DirectLayout {
    path: std::path::PathBuf,
    elem_size: usize,
    n_elems: usize,
    /// Elements per chunk (the whole dataset when contiguous).
    chunk_len: usize,
    coding: Coding,
    extents: Vec<Extent>,
}

fn plain_little_endian(ds: &Dataset) -> Option<usize> {
    let dtype = ds.dtype().ok()?;
    if dtype.byte_order() != hdf5::datatype::ByteOrder::LittleEndian {
        return None;
    }
    match dtype.to_descriptor().ok()? {
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) | TypeDescriptor::Float(_) => {
            Some(dtype.size())
        }
        _ => None,
    }
}

fn coding_of(filters: &[Filter]) -> Option<Coding> {
    match filters {
        [] => Some(Coding::Plain),
        [Filter::Deflate(_)] => Some(Coding::Deflate { shuffle: false }),
        [Filter::Shuffle, Filter::Deflate(_)] => Some(Coding::Deflate { shuffle: true }),
        _ => None,
    }
}

impl DirectLayout {
    /// The layout of `ds` when the fast path applies to it.
    pub(crate) fn of(ds: &Dataset) -> Option<Self> {
        if !cfg!(target_endian = "little") {
            return None;
        }
        let elem_size = plain_little_endian(ds)?;
        let n_elems = ds.size();
        let file = ds.file().ok()?;
        let base = file.userblock();
        let path = std::path::PathBuf::from(file.filename());
        if let Some(offset) = ds.offset() {
            let file_len = std::fs::metadata(&path).ok()?.len();
            if ds.storage_size() != (n_elems * elem_size) as u64
                || (base + offset).saturating_add((n_elems * elem_size) as u64) > file_len
            {
                return None;
            }
            return Some(Self {
                path,
                elem_size,
                n_elems,
                chunk_len: n_elems.max(1),
                coding: Coding::Plain,
                extents: vec![Extent {
                    start: 0,
                    len: n_elems,
                    addr: base + offset,
                    stored: n_elems * elem_size,
                }],
            });
        }
        // Chunked: only 1-D, every chunk allocated, a coding we can undo.
        let chunk = ds.chunk()?;
        if chunk.len() != 1 || chunk[0] == 0 {
            return None;
        }
        let coding = coding_of(&ds.filters())?;
        let chunk_len = chunk[0];
        let mut extents = Vec::with_capacity(n_elems.div_ceil(chunk_len));
        let mut ok = true;
        ds.chunks_visit(|info| {
            let Some(&start) = info.offset.first() else {
                ok = false;
                return -1;
            };
            let start = start as usize;
            let len = chunk_len.min(n_elems.saturating_sub(start));
            let stored = info.size as usize;
            // A set filter-mask bit means a filter was skipped for this chunk.
            if info.filter_mask != 0 || (coding == Coding::Plain && stored < len * elem_size) {
                ok = false;
                return -1;
            }
            extents.push(Extent {
                start,
                len,
                addr: base + info.addr,
                stored,
            });
            0
        })
        .ok()?;
        if !ok {
            return None;
        }
        // A chunk index pointing past the end of the file (truncated or crafted) is left to
        // HDF5, which reports it as an error.
        let file_len = std::fs::metadata(&path).ok()?.len();
        if extents
            .iter()
            .any(|e| e.addr.saturating_add(e.stored as u64) > file_len)
            || chunk_len.checked_mul(elem_size)? > MAX_CHUNK_BYTES
        {
            return None;
        }
        extents.sort_unstable_by_key(|e| e.start);
        // Every element must be covered exactly once (no unallocated chunks).
        let mut next = 0;
        for e in &extents {
            if e.start != next {
                return None;
            }
            next += e.len;
        }
        if next != n_elems {
            return None;
        }
        Some(Self {
            path,
            elem_size,
            n_elems,
            chunk_len,
            coding,
            extents,
        })
    }

    /// Reads elements `range` as `T` (whose size must be the stored element size).
    pub(crate) fn read<T: bytemuck::Pod>(&self, range: std::ops::Range<usize>) -> Option<Vec<T>> {
        let elem = std::mem::size_of::<T>();
        if elem != self.elem_size || range.start > range.end || range.end > self.n_elems {
            return None;
        }
        let file = std::fs::File::open(&self.path).ok()?;
        let mut out: Vec<T> = bytemuck::zeroed_vec(range.end - range.start);
        let first = self
            .extents
            .partition_point(|e| e.start + e.len <= range.start);
        let last = self.extents.partition_point(|e| e.start < range.end);
        let extents = &self.extents[first..last.max(first)];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        // Cut the output at extent boundaries, so each thread owns whole extents.
        let mut jobs: Vec<(Extent, &mut [u8], usize)> = Vec::with_capacity(extents.len());
        let mut rest = bytes;
        for e in extents {
            let a = range.start.max(e.start);
            let b = range.end.min(e.start + e.len);
            let (head, tail) = rest.split_at_mut((b - a) * elem);
            jobs.push((*e, head, a - e.start));
            rest = tail;
        }
        // Inflating costs far more per byte than copying: split compressed work finer.
        let part = match self.coding {
            Coding::Plain => MIN_PART_BYTES,
            Coding::Deflate { .. } => MIN_PART_BYTES / 8,
        };
        let total: usize = jobs.iter().map(|j| j.1.len()).sum();
        let threads = (total / part).clamp(1, MAX_THREADS).min(jobs.len().max(1));
        let per = jobs.len().div_ceil(threads).max(1);
        let file = &file;
        let ok = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            let mut jobs = jobs;
            while !jobs.is_empty() {
                let batch: Vec<_> = jobs.drain(..per.min(jobs.len())).collect();
                handles.push(scope.spawn(move || {
                    let mut scratch = Vec::new();
                    batch
                        .into_iter()
                        .all(|(e, dst, skip)| self.read_extent(file, e, dst, skip, &mut scratch))
                }));
            }
            handles.into_iter().all(|h| h.join().unwrap_or(false))
        });
        ok.then_some(out)
    }

    /// Fills `dst` with the extent's elements starting at element `skip` within it.
    fn read_extent(
        &self,
        file: &std::fs::File,
        e: Extent,
        dst: &mut [u8],
        skip: usize,
        scratch: &mut Vec<u8>,
    ) -> bool {
        let elem = self.elem_size;
        match self.coding {
            Coding::Plain => file
                .read_exact_at(dst, e.addr + (skip * elem) as u64)
                .is_ok(),
            Coding::Deflate { shuffle } => {
                let mut compressed = vec![0u8; e.stored];
                if file.read_exact_at(&mut compressed, e.addr).is_err() {
                    return false;
                }
                // Chunks are stored full size, even the last, partly used one.
                let full = self.chunk_len * elem;
                scratch.clear();
                scratch.reserve(full.min(64 << 20));
                // Never inflate past one chunk, whatever the stream claims.
                let mut dec =
                    flate2::read::ZlibDecoder::new(compressed.as_slice()).take(full as u64);
                if dec.read_to_end(scratch).is_err() || scratch.len() < e.len * elem {
                    return false;
                }
                let from = skip * elem;
                if shuffle {
                    // Shuffle stores byte k of every element together: plane k is
                    // scratch[k * n .. (k + 1) * n] for the n elements of the chunk.
                    let n = scratch.len() / elem;
                    for (i, out) in dst.chunks_exact_mut(elem).enumerate() {
                        for (k, byte) in out.iter_mut().enumerate() {
                            *byte = scratch[k * n + skip + i];
                        }
                    }
                    true
                } else {
                    match scratch.get(from..from + dst.len()) {
                        Some(src) => {
                            dst.copy_from_slice(src);
                            true
                        }
                        None => false,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DirectLayout;

    type Build = Box<dyn Fn(hdf5::DatasetBuilderEmptyShape) -> hdf5::DatasetBuilderEmptyShape>;

    fn write(
        path: &std::path::Path,
        values: &[f32],
        build: impl Fn(hdf5::DatasetBuilderEmptyShape) -> hdf5::DatasetBuilderEmptyShape,
    ) {
        let f = hdf5::File::create(path).expect("create");
        let ds = build(f.new_dataset::<f32>().shape(values.len()))
            .create("x")
            .expect("dataset");
        ds.write_raw(values).expect("write");
    }

    fn values() -> Vec<f32> {
        (0..100_003)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.5)
            .collect()
    }

    #[test]
    fn reads_plain_deflate_and_shuffled_deflate_chunks_like_hdf5() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values();
        let cases: Vec<(&str, Build)> = vec![
            ("contiguous", Box::new(|b| b)),
            ("chunked", Box::new(|b| b.chunk(4096))),
            ("deflate", Box::new(|b| b.chunk(4096).deflate(4))),
            (
                "shuffle_deflate",
                Box::new(|b| b.chunk(5000).shuffle().deflate(6)),
            ),
        ];
        for (name, build) in cases {
            let path = dir.path().join(format!("{name}.h5"));
            write(&path, &v, build);
            let f = hdf5::File::open(&path).expect("open");
            let ds = f.dataset("x").expect("x");
            let layout =
                DirectLayout::of(&ds).unwrap_or_else(|| panic!("{name}: no direct layout"));
            assert_eq!(
                layout.read::<f32>(0..v.len()).expect("read all"),
                v,
                "{name}"
            );
            // Ranges that start and end inside chunks.
            for r in [10..20, 4090..8200, 99_990..100_003, 0..0] {
                assert_eq!(
                    layout.read::<f32>(r.clone()).expect("range"),
                    v[r.clone()].to_vec(),
                    "{name} {r:?}"
                );
            }
            // Wrong element size or out-of-range requests are refused, not misread.
            assert!(layout.read::<f64>(0..10).is_none());
            assert!(layout.read::<f32>(0..v.len() + 1).is_none());
        }
    }

    #[test]
    fn other_filters_fall_back_to_hdf5() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lzf.h5");
        write(&path, &values(), |b| b.chunk(4096).lzf());
        let f = hdf5::File::open(&path).expect("open");
        assert!(DirectLayout::of(&f.dataset("x").expect("x")).is_none());
    }
}
