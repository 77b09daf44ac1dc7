//! Where tokenised cells live while training: in memory, or in a token-cache file that is
//! memory-mapped, so a corpus larger than RAM trains (the OS pages cells in and out).
//!
//! Cache file layout (little-endian): magic `CFTOKv1\0`, `n_cells: u64`, `n_tokens: u64`,
//! `offsets: [u64; n_cells + 1]`, `genes: [u32; n_tokens]`, `values: [f32; n_tokens]`.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::tokenize::CellTokens;

const MAGIC: &[u8; 8] = b"CFTOKv1\0";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("token cache {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("token cache {path} is damaged: {message}")]
    Damaged { path: String, message: String },
}

/// Tokenised cells, in memory or memory-mapped from a cache file.
#[derive(Debug)]
pub enum TokenStore {
    Memory(Vec<CellTokens>),
    Mapped(MappedCache),
}

impl Default for TokenStore {
    fn default() -> Self {
        TokenStore::Memory(Vec::new())
    }
}

impl TokenStore {
    pub fn len(&self) -> usize {
        match self {
            TokenStore::Memory(v) => v.len(),
            TokenStore::Mapped(m) => m.n_cells,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cell `i` (a copy). Panics only on an index out of range, like a slice.
    pub fn get(&self, i: usize) -> CellTokens {
        match self {
            TokenStore::Memory(v) => v[i].clone(),
            TokenStore::Mapped(m) => m.cell(i),
        }
    }

    /// Tokens of cell `i` (`<cls>` included).
    pub fn cell_len(&self, i: usize) -> usize {
        match self {
            TokenStore::Memory(v) => v[i].genes.len(),
            TokenStore::Mapped(m) => (m.offset(i + 1) - m.offset(i)) as usize,
        }
    }
}

/// Receives cells while a dataset is tokenised.
pub enum TokenSink {
    Memory(Vec<CellTokens>),
    File(CacheWriter),
}

impl TokenSink {
    pub fn push(&mut self, cell: CellTokens) -> Result<(), CacheError> {
        match self {
            TokenSink::Memory(v) => {
                v.push(cell);
                Ok(())
            }
            TokenSink::File(w) => w.push(&cell),
        }
    }

    /// Finish writing and open the result for reading.
    pub fn finish(self) -> Result<TokenStore, CacheError> {
        match self {
            TokenSink::Memory(v) => Ok(TokenStore::Memory(v)),
            TokenSink::File(w) => Ok(TokenStore::Mapped(w.finish()?)),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a cache: genes and values go to two temporary files while the offsets stay in
/// memory (8 bytes per cell), then the pieces are joined into the final file.
pub struct CacheWriter {
    path: PathBuf,
    genes: BufWriter<tempfile::NamedTempFile>,
    values: BufWriter<tempfile::NamedTempFile>,
    offsets: Vec<u64>,
}

impl CacheWriter {
    pub fn create(path: &Path) -> Result<Self, CacheError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp = || tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir));
        Ok(Self {
            path: path.to_path_buf(),
            genes: BufWriter::new(tmp()?),
            values: BufWriter::new(tmp()?),
            offsets: vec![0],
        })
    }

    pub fn push(&mut self, cell: &CellTokens) -> Result<(), CacheError> {
        let p = self.path.clone();
        for g in &cell.genes {
            self.genes.write_all(&g.to_le_bytes()).map_err(io_err(&p))?;
        }
        for v in &cell.values {
            self.values
                .write_all(&v.to_le_bytes())
                .map_err(io_err(&p))?;
        }
        let last = self.offsets.last().copied().unwrap_or(0);
        self.offsets.push(last + cell.genes.len() as u64);
        Ok(())
    }

    pub fn finish(self) -> Result<MappedCache, CacheError> {
        let p = self.path.clone();
        let dir = p.parent().unwrap_or(Path::new("."));
        let mut out = BufWriter::new(tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?);
        let n_cells = self.offsets.len() as u64 - 1;
        let n_tokens = self.offsets.last().copied().unwrap_or(0);
        out.write_all(MAGIC).map_err(io_err(&p))?;
        out.write_all(&n_cells.to_le_bytes()).map_err(io_err(&p))?;
        out.write_all(&n_tokens.to_le_bytes()).map_err(io_err(&p))?;
        for o in &self.offsets {
            out.write_all(&o.to_le_bytes()).map_err(io_err(&p))?;
        }
        for part in [self.genes, self.values] {
            let mut f = part
                .into_inner()
                .map_err(|e| io_err(&p)(e.into_error()))?
                .into_file();
            f.seek(SeekFrom::Start(0)).map_err(io_err(&p))?;
            std::io::copy(&mut f, &mut out).map_err(io_err(&p))?;
        }
        let tmp = out.into_inner().map_err(|e| io_err(&p)(e.into_error()))?;
        tmp.as_file().sync_all().map_err(io_err(&p))?;
        tmp.persist(&p).map_err(|e| io_err(&p)(e.error))?;
        MappedCache::open(&p)
    }
}

/// A cache file mapped into memory.
#[derive(Debug)]
pub struct MappedCache {
    map: memmap2::Mmap,
    pub n_cells: usize,
    n_tokens: usize,
    pub path: PathBuf,
}

impl MappedCache {
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: the file is opened read-only and cellforge never writes a cache in place
        // (new caches are written to a temporary file and renamed over the old one).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let damaged = |message: String| CacheError::Damaged {
            path: path.display().to_string(),
            message,
        };
        if map.len() < 24 || &map[..8] != MAGIC {
            return Err(damaged("not a cellforge token cache".into()));
        }
        let u64_at = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().unwrap_or([0; 8]));
        let n_cells = usize::try_from(u64_at(8)).map_err(|e| damaged(e.to_string()))?;
        let n_tokens = usize::try_from(u64_at(16)).map_err(|e| damaged(e.to_string()))?;
        let need = n_cells
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|o| n_tokens.checked_mul(8).and_then(|t| o.checked_add(t)))
            .and_then(|x| x.checked_add(24));
        if need != Some(map.len()) {
            return Err(damaged(format!(
                "{} bytes for {n_cells} cells and {n_tokens} tokens",
                map.len()
            )));
        }
        let cache = Self {
            map,
            n_cells,
            n_tokens,
            path: path.to_path_buf(),
        };
        // Offsets must rise to n_tokens.
        let mut prev = 0;
        for i in 0..=n_cells {
            let o = cache.offset(i);
            if o < prev || o > n_tokens as u64 || (i == 0 && o != 0) {
                return Err(damaged(format!("offset {i} is {o}")));
            }
            prev = o;
        }
        if prev != n_tokens as u64 {
            return Err(damaged("the last offset is not the token count".into()));
        }
        Ok(cache)
    }

    fn offset(&self, i: usize) -> u64 {
        let o = 24 + 8 * i;
        u64::from_le_bytes(self.map[o..o + 8].try_into().unwrap_or([0; 8]))
    }

    fn cell(&self, i: usize) -> CellTokens {
        let (a, b) = (self.offset(i) as usize, self.offset(i + 1) as usize);
        let genes_at = 24 + 8 * (self.n_cells + 1);
        let values_at = genes_at + 4 * self.n_tokens;
        let genes = self.map[genes_at + 4 * a..genes_at + 4 * b]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let values = self.map[values_at + 4 * a..values_at + 4 * b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        CellTokens { genes, values }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip_and_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.cftok");
        let cells = vec![
            CellTokens {
                genes: vec![5, 1, 2],
                values: vec![-2.0, 3.0, 7.0],
            },
            CellTokens {
                genes: vec![5],
                values: vec![-2.0],
            },
            CellTokens {
                genes: vec![5, 9],
                values: vec![-2.0, 50.0],
            },
        ];
        let mut sink = TokenSink::File(CacheWriter::create(&path).expect("create"));
        for c in &cells {
            sink.push(c.clone()).expect("push");
        }
        let store = sink.finish().expect("finish");
        assert_eq!(store.len(), 3);
        for (i, c) in cells.iter().enumerate() {
            assert_eq!(&store.get(i), c);
            assert_eq!(store.cell_len(i), c.genes.len());
        }
        // Truncation is refused, not read past the end.
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 4]).expect("write");
        let err = MappedCache::open(&path).expect_err("truncated");
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
