//! Fast path for the big 1-D arrays of an h5ad file (X's data and indices) and contiguous
//! dense matrices. When a dataset is stored unfiltered and little-endian, either contiguously
//! or in chunks (anndata writes sparse arrays chunked so they can grow), its bytes are read
//! straight from the file with positioned reads spread over threads, instead of through the
//! HDF5 library, which serialises every call behind one global lock. Anything else (filters,
//! big-endian, unallocated chunks) returns `None` and goes through HDF5.

use std::os::unix::fs::FileExt;

use hdf5::Dataset;
use hdf5::types::TypeDescriptor;

/// Parts smaller than this are not worth a thread.
const MIN_PART_BYTES: usize = 8 << 20;
const MAX_THREADS: usize = 4;

/// Where a dataset's elements live in its file.
#[derive(Debug, Clone)]
pub(crate) struct RawLayout {
    path: std::path::PathBuf,
    elem_size: usize,
    n_elems: usize,
    /// Extents of stored bytes: (first element, element count, absolute file offset), sorted.
    extents: Vec<(usize, usize, u64)>,
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

impl RawLayout {
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
        let extents = if let Some(offset) = ds.offset() {
            if ds.storage_size() != (n_elems * elem_size) as u64 {
                return None;
            }
            vec![(0, n_elems, base + offset)]
        } else {
            // Chunked: only 1-D, unfiltered, with every chunk allocated.
            let chunk = ds.chunk()?;
            if chunk.len() != 1 || !ds.filters().is_empty() || chunk[0] == 0 {
                return None;
            }
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
                if info.filter_mask != 0 || (info.size as usize) < len * elem_size {
                    ok = false;
                    return -1;
                }
                extents.push((start, len, base + info.addr));
                0
            })
            .ok()?;
            if !ok {
                return None;
            }
            extents.sort_unstable_by_key(|e| e.0);
            // Every element must be covered exactly once (no unallocated chunks).
            let mut next = 0;
            for &(start, len, _) in &extents {
                if start != next {
                    return None;
                }
                next += len;
            }
            if next != n_elems {
                return None;
            }
            extents
        };
        Some(Self {
            path,
            elem_size,
            n_elems,
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
        // The pieces to read: (destination byte offset, file offset, byte length).
        let first = self.extents.partition_point(|e| e.0 + e.1 <= range.start);
        let mut pieces = Vec::new();
        for &(start, len, addr) in &self.extents[first..] {
            if start >= range.end {
                break;
            }
            let a = range.start.max(start);
            let b = range.end.min(start + len);
            pieces.push((
                (a - range.start) * elem,
                addr + ((a - start) * elem) as u64,
                (b - a) * elem,
            ));
        }
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        let total = bytes.len();
        let threads = (total / MIN_PART_BYTES).clamp(1, MAX_THREADS);
        // Split the destination into `threads` contiguous spans, each with its pieces.
        let span = total.div_ceil(threads).max(1);
        let mut spans: Vec<(&mut [u8], usize)> = Vec::new();
        let mut rest = bytes;
        let mut at = 0;
        while !rest.is_empty() {
            let take = span.min(rest.len());
            let (head, tail) = rest.split_at_mut(take);
            spans.push((head, at));
            at += take;
            rest = tail;
        }
        let pieces = &pieces;
        let file = &file;
        let ok = std::thread::scope(|scope| {
            let handles: Vec<_> = spans
                .into_iter()
                .map(|(dst, dst_start)| {
                    scope.spawn(move || {
                        let dst_end = dst_start + dst.len();
                        for &(p_dst, p_file, p_len) in pieces {
                            let a = p_dst.max(dst_start);
                            let b = (p_dst + p_len).min(dst_end);
                            if a >= b {
                                continue;
                            }
                            let file_at = p_file + (a - p_dst) as u64;
                            if file
                                .read_exact_at(&mut dst[a - dst_start..b - dst_start], file_at)
                                .is_err()
                            {
                                return false;
                            }
                        }
                        true
                    })
                })
                .collect();
            handles.into_iter().all(|h| h.join().unwrap_or(false))
        });
        ok.then_some(out)
    }
}
