//! Typed numeric buffers, dense n-d arrays and CSR/CSC matrices, keeping the file's dtype.

use std::fmt;

/// The element type of a numeric buffer, named as numpy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "bool",
            Dtype::I8 => "int8",
            Dtype::I16 => "int16",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
            Dtype::U8 => "uint8",
            Dtype::U16 => "uint16",
            Dtype::U32 => "uint32",
            Dtype::U64 => "uint64",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F64)
    }

    pub fn is_integer(self) -> bool {
        !self.is_float() && self != Dtype::Bool
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A flat buffer of one numeric dtype. Equality treats NaN as equal to NaN (same data).
#[derive(Debug, Clone)]
pub enum ArrayData {
    Bool(Vec<bool>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl PartialEq for ArrayData {
    fn eq(&self, other: &Self) -> bool {
        fn same_f64(a: f64, b: f64) -> bool {
            a == b || (a.is_nan() && b.is_nan())
        }
        match (self, other) {
            (ArrayData::F32(a), ArrayData::F32(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(&x, &y)| same_f64(f64::from(x), f64::from(y)))
            }
            (ArrayData::F64(a), ArrayData::F64(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| same_f64(x, y))
            }
            (ArrayData::Bool(a), ArrayData::Bool(b)) => a == b,
            (ArrayData::I8(a), ArrayData::I8(b)) => a == b,
            (ArrayData::I16(a), ArrayData::I16(b)) => a == b,
            (ArrayData::I32(a), ArrayData::I32(b)) => a == b,
            (ArrayData::I64(a), ArrayData::I64(b)) => a == b,
            (ArrayData::U8(a), ArrayData::U8(b)) => a == b,
            (ArrayData::U16(a), ArrayData::U16(b)) => a == b,
            (ArrayData::U32(a), ArrayData::U32(b)) => a == b,
            (ArrayData::U64(a), ArrayData::U64(b)) => a == b,
            _ => false,
        }
    }
}

/// Runs `$body` with `$v` bound to the inner `Vec` of any variant.
#[macro_export]
#[doc(hidden)]
macro_rules! with_array_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::anndata::ArrayData::Bool($v) => $body,
            $crate::anndata::ArrayData::I8($v) => $body,
            $crate::anndata::ArrayData::I16($v) => $body,
            $crate::anndata::ArrayData::I32($v) => $body,
            $crate::anndata::ArrayData::I64($v) => $body,
            $crate::anndata::ArrayData::U8($v) => $body,
            $crate::anndata::ArrayData::U16($v) => $body,
            $crate::anndata::ArrayData::U32($v) => $body,
            $crate::anndata::ArrayData::U64($v) => $body,
            $crate::anndata::ArrayData::F32($v) => $body,
            $crate::anndata::ArrayData::F64($v) => $body,
        }
    };
}

/// Runs `$body` with `$v` bound to the inner `Vec` of any numeric (non-bool) variant, so
/// `as f64` casts work; bool is handled by `$bool`.
macro_rules! with_numeric {
    ($data:expr, $v:ident => $body:expr, $b:ident => $bool:expr) => {
        match $data {
            ArrayData::Bool($b) => $bool,
            ArrayData::I8($v) => $body,
            ArrayData::I16($v) => $body,
            ArrayData::I32($v) => $body,
            ArrayData::I64($v) => $body,
            ArrayData::U8($v) => $body,
            ArrayData::U16($v) => $body,
            ArrayData::U32($v) => $body,
            ArrayData::U64($v) => $body,
            ArrayData::F32($v) => $body,
            ArrayData::F64($v) => $body,
        }
    };
}

impl ArrayData {
    pub fn dtype(&self) -> Dtype {
        match self {
            ArrayData::Bool(_) => Dtype::Bool,
            ArrayData::I8(_) => Dtype::I8,
            ArrayData::I16(_) => Dtype::I16,
            ArrayData::I32(_) => Dtype::I32,
            ArrayData::I64(_) => Dtype::I64,
            ArrayData::U8(_) => Dtype::U8,
            ArrayData::U16(_) => Dtype::U16,
            ArrayData::U32(_) => Dtype::U32,
            ArrayData::U64(_) => Dtype::U64,
            ArrayData::F32(_) => Dtype::F32,
            ArrayData::F64(_) => Dtype::F64,
        }
    }

    pub fn len(&self) -> usize {
        with_array_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty buffer of the given dtype with room for `capacity` values.
    pub fn with_capacity(dtype: Dtype, capacity: usize) -> Self {
        match dtype {
            Dtype::Bool => ArrayData::Bool(Vec::with_capacity(capacity)),
            Dtype::I8 => ArrayData::I8(Vec::with_capacity(capacity)),
            Dtype::I16 => ArrayData::I16(Vec::with_capacity(capacity)),
            Dtype::I32 => ArrayData::I32(Vec::with_capacity(capacity)),
            Dtype::I64 => ArrayData::I64(Vec::with_capacity(capacity)),
            Dtype::U8 => ArrayData::U8(Vec::with_capacity(capacity)),
            Dtype::U16 => ArrayData::U16(Vec::with_capacity(capacity)),
            Dtype::U32 => ArrayData::U32(Vec::with_capacity(capacity)),
            Dtype::U64 => ArrayData::U64(Vec::with_capacity(capacity)),
            Dtype::F32 => ArrayData::F32(Vec::with_capacity(capacity)),
            Dtype::F64 => ArrayData::F64(Vec::with_capacity(capacity)),
        }
    }

    /// A buffer of `len` zeros (false for bool).
    pub fn zeros(dtype: Dtype, len: usize) -> Self {
        match dtype {
            Dtype::Bool => ArrayData::Bool(vec![false; len]),
            Dtype::I8 => ArrayData::I8(vec![0; len]),
            Dtype::I16 => ArrayData::I16(vec![0; len]),
            Dtype::I32 => ArrayData::I32(vec![0; len]),
            Dtype::I64 => ArrayData::I64(vec![0; len]),
            Dtype::U8 => ArrayData::U8(vec![0; len]),
            Dtype::U16 => ArrayData::U16(vec![0; len]),
            Dtype::U32 => ArrayData::U32(vec![0; len]),
            Dtype::U64 => ArrayData::U64(vec![0; len]),
            Dtype::F32 => ArrayData::F32(vec![0.0; len]),
            Dtype::F64 => ArrayData::F64(vec![0.0; len]),
        }
    }

    /// Value `i` as f64 (bool as 0/1).
    #[allow(clippy::unnecessary_cast)] // the macro casts every variant, f64 included
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        with_numeric!(self, v => v.get(i).map(|&x| x as f64), b => b.get(i).map(|&x| f64::from(u8::from(x))))
    }

    /// All values as f64 (bool as 0/1).
    #[allow(clippy::unnecessary_cast)] // the macro casts every variant, f64 included
    pub fn to_f64_vec(&self) -> Vec<f64> {
        with_numeric!(self, v => v.iter().map(|&x| x as f64).collect(), b => b.iter().map(|&x| f64::from(u8::from(x))).collect())
    }

    /// All values as f32 (bool as 0/1).
    #[allow(clippy::unnecessary_cast)] // the macro casts every variant, f64 included
    pub fn to_f32_vec(&self) -> Vec<f32> {
        with_numeric!(self, v => v.iter().map(|&x| x as f32).collect(), b => b.iter().map(|&x| f32::from(u8::from(x))).collect())
    }

    /// Values at the given positions, in that order, as a buffer of the same dtype.
    pub fn gather(&self, positions: &[usize]) -> ArrayData {
        macro_rules! g {
            ($variant:ident, $v:expr) => {
                ArrayData::$variant(positions.iter().map(|&p| $v[p]).collect())
            };
        }
        match self {
            ArrayData::Bool(v) => g!(Bool, v),
            ArrayData::I8(v) => g!(I8, v),
            ArrayData::I16(v) => g!(I16, v),
            ArrayData::I32(v) => g!(I32, v),
            ArrayData::I64(v) => g!(I64, v),
            ArrayData::U8(v) => g!(U8, v),
            ArrayData::U16(v) => g!(U16, v),
            ArrayData::U32(v) => g!(U32, v),
            ArrayData::U64(v) => g!(U64, v),
            ArrayData::F32(v) => g!(F32, v),
            ArrayData::F64(v) => g!(F64, v),
        }
    }

    /// Appends `other` (same dtype) to self; returns false on a dtype mismatch.
    pub fn extend_from(&mut self, other: &ArrayData) -> bool {
        macro_rules! ext {
            ($($variant:ident),*) => {
                match (self, other) {
                    $((ArrayData::$variant(a), ArrayData::$variant(b)) => { a.extend_from_slice(b); true })*
                    _ => false,
                }
            };
        }
        ext!(Bool, I8, I16, I32, I64, U8, U16, U32, U64, F32, F64)
    }

    /// Counts of (NaN, +-Inf) values; zero for integer types.
    pub fn count_non_finite(&self) -> (usize, usize) {
        let count = |it: &mut dyn Iterator<Item = f64>| {
            let mut nan = 0;
            let mut inf = 0;
            for x in it {
                if x.is_nan() {
                    nan += 1;
                } else if x.is_infinite() {
                    inf += 1;
                }
            }
            (nan, inf)
        };
        // Fast vectorisable pre-check: almost all data is finite.
        let any_bad = match self {
            ArrayData::F32(v) => v.iter().fold(false, |acc, x| acc | !x.is_finite()),
            ArrayData::F64(v) => v.iter().fold(false, |acc, x| acc | !x.is_finite()),
            _ => false,
        };
        if !any_bad {
            return (0, 0);
        }
        match self {
            ArrayData::F32(v) => count(&mut v.iter().map(|&x| f64::from(x))),
            ArrayData::F64(v) => count(&mut v.iter().copied()),
            _ => (0, 0),
        }
    }

    /// (min, max) over finite values, `None` when there are none.
    #[allow(clippy::unnecessary_cast)] // the macro casts every variant, f64 included
    pub fn finite_range(&self) -> Option<(f64, f64)> {
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        let mut any = false;
        let mut visit = |x: f64| {
            if x.is_finite() {
                any = true;
                lo = lo.min(x);
                hi = hi.max(x);
            }
        };
        with_numeric!(self, v => v.iter().for_each(|&x| visit(x as f64)), b => b.iter().for_each(|&x| visit(f64::from(u8::from(x)))));
        any.then_some((lo, hi))
    }

    /// True when every value is a non-negative whole number (what raw UMI counts look like).
    pub fn looks_like_counts(&self) -> bool {
        match self {
            ArrayData::F32(v) => v.iter().all(|&x| x >= 0.0 && x.fract() == 0.0),
            ArrayData::F64(v) => v.iter().all(|&x| x >= 0.0 && x.fract() == 0.0),
            ArrayData::Bool(_) => false,
            other => other.to_f64_vec().iter().all(|&x| x >= 0.0),
        }
    }
}

/// A dense row-major n-dimensional array (0-d for scalars).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseArray {
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

impl DenseArray {
    pub fn new(shape: Vec<usize>, data: ArrayData) -> Option<Self> {
        (shape.iter().product::<usize>() == data.len()).then_some(Self { shape, data })
    }

    pub fn scalar(data: ArrayData) -> Self {
        Self {
            shape: vec![],
            data,
        }
    }

    /// Number of rows (first axis); 1 for a scalar.
    pub fn n_rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row (product of the trailing axes).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
}

/// Compressed sparse row or column layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseFormat {
    Csr,
    Csc,
}

impl SparseFormat {
    pub fn name(self) -> &'static str {
        match self {
            SparseFormat::Csr => "csr",
            SparseFormat::Csc => "csc",
        }
    }
}

/// A CSR or CSC matrix. For CSR, `indptr` has `n_rows + 1` entries and `indices` are column
/// numbers; for CSC the roles of rows and columns swap.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseMatrix {
    pub format: SparseFormat,
    pub shape: [usize; 2],
    pub data: ArrayData,
    pub indices: Vec<u32>,
    pub indptr: Vec<u64>,
}

impl SparseMatrix {
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Length of the compressed axis (rows for CSR).
    pub fn n_major(&self) -> usize {
        match self.format {
            SparseFormat::Csr => self.shape[0],
            SparseFormat::Csc => self.shape[1],
        }
    }

    /// Length of the other axis (columns for CSR).
    pub fn n_minor(&self) -> usize {
        match self.format {
            SparseFormat::Csr => self.shape[1],
            SparseFormat::Csc => self.shape[0],
        }
    }

    /// Checks the structural invariants; returns a message naming the first violation.
    pub fn check_structure(&self) -> Result<(), String> {
        let n_major = self.n_major();
        let n_minor = self.n_minor();
        if self.indptr.len() != n_major + 1 {
            return Err(format!(
                "indptr has {} entries, expected {} (the {} axis has {} entries, plus one)",
                self.indptr.len(),
                n_major + 1,
                if self.format == SparseFormat::Csr {
                    "row"
                } else {
                    "column"
                },
                n_major
            ));
        }
        if self.data.len() != self.indices.len() {
            return Err(format!(
                "data has {} values but indices has {}; they must be the same length",
                self.data.len(),
                self.indices.len()
            ));
        }
        if self.indptr.first() != Some(&0) {
            return Err(format!(
                "indptr must start at 0, starts at {}",
                self.indptr.first().copied().unwrap_or(0)
            ));
        }
        if let Some(i) = self.indptr.windows(2).position(|w| w[1] < w[0]) {
            return Err(format!(
                "indptr decreases at position {} ({} -> {})",
                i + 1,
                self.indptr[i],
                self.indptr[i + 1]
            ));
        }
        let last = self.indptr.last().copied().unwrap_or(0);
        if last != self.nnz() as u64 {
            return Err(format!(
                "indptr ends at {last} but there are {} stored values",
                self.nnz()
            ));
        }
        let limit = u32::try_from(n_minor).unwrap_or(u32::MAX);
        let out_of_bounds = self.indices.iter().fold(false, |acc, &j| {
            acc | (j >= limit && (j as usize) >= n_minor)
        });
        if out_of_bounds && let Some(&bad) = self.indices.iter().find(|&&j| j as usize >= n_minor) {
            return Err(if bad > i32::MAX as u32 && n_minor <= i32::MAX as usize {
                format!("indices out of bounds: negative index {}", bad as i32)
            } else {
                format!(
                    "indices out of bounds: index {bad} >= {n_minor} (the size of the indexed axis)"
                )
            });
        }
        Ok(())
    }

    /// The same matrix in the other layout (CSR <-> CSC), indices sorted within each line.
    pub fn transpose_layout(&self) -> SparseMatrix {
        let n_major = self.n_major();
        let n_minor = self.n_minor();
        let mut counts = vec![0u64; n_minor + 1];
        for &j in &self.indices {
            counts[j as usize + 1] += 1;
        }
        for k in 0..n_minor {
            counts[k + 1] += counts[k];
        }
        let indptr = counts.clone();
        let mut next = counts;
        let mut order = vec![0usize; self.nnz()];
        let mut indices = vec![0u32; self.nnz()];
        for i in 0..n_major {
            let (a, b) = (self.indptr[i] as usize, self.indptr[i + 1] as usize);
            for p in a..b {
                let j = self.indices[p] as usize;
                let dst = next[j] as usize;
                next[j] += 1;
                indices[dst] = i as u32;
                order[dst] = p;
            }
        }
        SparseMatrix {
            format: match self.format {
                SparseFormat::Csr => SparseFormat::Csc,
                SparseFormat::Csc => SparseFormat::Csr,
            },
            shape: self.shape,
            data: self.data.gather(&order),
            indices,
            indptr,
        }
    }

    /// Converts to the requested layout (a no-op clone when it already is).
    pub fn to_format(&self, format: SparseFormat) -> SparseMatrix {
        if self.format == format {
            self.clone()
        } else {
            self.transpose_layout()
        }
    }

    /// Expands to a dense row-major array of the same dtype.
    pub fn to_dense(&self) -> DenseArray {
        let [n_rows, n_cols] = self.shape;
        let mut positions = Vec::with_capacity(self.nnz());
        for i in 0..self.n_major() {
            for p in self.indptr[i] as usize..self.indptr[i + 1] as usize {
                let j = self.indices[p] as usize;
                positions.push(match self.format {
                    SparseFormat::Csr => i * n_cols + j,
                    SparseFormat::Csc => j * n_cols + i,
                });
            }
        }
        let mut data = ArrayData::zeros(self.data.dtype(), n_rows * n_cols);
        macro_rules! scatter {
            ($($variant:ident),*) => {
                match (&mut data, &self.data) {
                    $((ArrayData::$variant(dst), ArrayData::$variant(src)) => {
                        for (p, &pos) in positions.iter().enumerate() { dst[pos] = src[p]; }
                    })*
                    _ => {}
                }
            };
        }
        scatter!(Bool, I8, I16, I32, I64, U8, U16, U32, U64, F32, F64);
        DenseArray {
            shape: vec![n_rows, n_cols],
            data,
        }
    }

    /// Builds a CSR or CSC matrix from a dense 2-D array, keeping non-zero values.
    pub fn from_dense(dense: &DenseArray, format: SparseFormat) -> Option<SparseMatrix> {
        if dense.shape.len() != 2 {
            return None;
        }
        let (n_rows, n_cols) = (dense.shape[0], dense.shape[1]);
        let (n_major, n_minor) = match format {
            SparseFormat::Csr => (n_rows, n_cols),
            SparseFormat::Csc => (n_cols, n_rows),
        };
        let values = dense.data.to_f64_vec();
        let mut positions = Vec::new();
        let mut indices = Vec::new();
        let mut indptr = Vec::with_capacity(n_major + 1);
        indptr.push(0u64);
        for i in 0..n_major {
            for j in 0..n_minor {
                let pos = match format {
                    SparseFormat::Csr => i * n_cols + j,
                    SparseFormat::Csc => j * n_cols + i,
                };
                if values[pos] != 0.0 {
                    positions.push(pos);
                    indices.push(j as u32);
                }
            }
            indptr.push(indices.len() as u64);
        }
        Some(SparseMatrix {
            format,
            shape: [n_rows, n_cols],
            data: dense.data.gather(&positions),
            indices,
            indptr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> SparseMatrix {
        // [[1, 0, 2], [0, 0, 3]]
        SparseMatrix {
            format: SparseFormat::Csr,
            shape: [2, 3],
            data: ArrayData::F32(vec![1.0, 2.0, 3.0]),
            indices: vec![0, 2, 2],
            indptr: vec![0, 2, 3],
        }
    }

    #[test]
    fn csr_to_csc_and_back_is_identity() {
        let csr = example();
        let csc = csr.transpose_layout();
        assert_eq!(csc.format, SparseFormat::Csc);
        assert_eq!(csc.indptr, vec![0, 1, 1, 3]);
        assert_eq!(csc.indices, vec![0, 0, 1]);
        assert_eq!(csc.data, ArrayData::F32(vec![1.0, 2.0, 3.0]));
        assert_eq!(csc.transpose_layout(), csr);
        assert_eq!(csc.to_dense(), csr.to_dense());
    }

    #[test]
    fn dense_round_trip() {
        let d = example().to_dense();
        assert_eq!(d.data, ArrayData::F32(vec![1.0, 0.0, 2.0, 0.0, 0.0, 3.0]));
        assert_eq!(
            SparseMatrix::from_dense(&d, SparseFormat::Csr),
            Some(example())
        );
    }

    #[test]
    fn structure_errors_name_the_problem() {
        let mut m = example();
        m.indices[1] = 3;
        assert!(m.check_structure().unwrap_err().contains("out of bounds"));
        let mut m = example();
        m.indptr = vec![0, 3, 2];
        assert!(m.check_structure().unwrap_err().contains("decreases"));
        let mut m = example();
        m.indptr = vec![1, 2, 3];
        assert!(m.check_structure().unwrap_err().contains("start at 0"));
        let mut m = example();
        m.indptr = vec![0, 3];
        assert!(
            m.check_structure()
                .unwrap_err()
                .contains("indptr has 2 entries")
        );
        assert!(example().check_structure().is_ok());
    }
}
