//! Label-editing engine for curating cell-type annotations.
//!
//! A [`LabelSession`] holds one categorical [`LabelColumn`] (one code per
//! cell, `-1` = unlabelled, like a pandas `Categorical`) together with the
//! per-cell provenance ([`Source`]) of every label.  Biologists change labels
//! through reversible [`Edit`]s; the session keeps an undo stack and a redo
//! stack and can mirror every action into a crash-safe append-only
//! [`Journal`].
//!
//! # Category order
//!
//! * A category created by an edit (`Assign` to an unknown label, `Merge`
//!   into an unknown target, `Rename`) is **appended** at the end of the
//!   category list (`Rename` keeps the position of the renamed category).
//! * `Merge` first appends `into` if it does not exist yet, moves all cells of
//!   the `from` categories to it, then removes the `from` categories.  The
//!   remaining categories keep their relative order and are re-numbered
//!   `0..k` in that order; every cell's code is remapped accordingly.
//! * `Clear` never removes categories, even when they become empty.
//! * Undo restores the exact previous category list and codes.
//!
//! # Names and cells
//!
//! Category names are trimmed of surrounding whitespace; a name that is empty
//! after trimming is rejected.  Cell index lists are sorted and deduplicated
//! before they are applied and recorded.  Every edit is validated completely
//! before anything is changed, so a failed edit leaves the session untouched.
//!
//! # Undo memory
//!
//! Each applied edit stores the normalised edit plus a compact inverse: the
//! previous codes and sources of the cells whose label or source actually
//! changed, and only the category-list change that is needed to go back (a
//! truncation length, one old name, or — for `Merge` only — the previous
//! category names).  The column itself is never cloned.
//!
//! # Journal format (version 1)
//!
//! UTF-8 text, one JSON object per line, each line terminated by `\n`.
//!
//! Line 1, the header:
//! ```text
//! {"type":"header","format":"cellforge-labels-journal","version":1,
//!  "dataset":{"path":"/data/pbmc.h5ad","n_cells":3,"fingerprint":"sha256:…",
//!             "label_column":"cell_type"},
//!  "metadata":{"model":"scGPT","threshold":0.8},
//!  "categories":["B","T"],
//!  "codes":[[0,2],[-1,1]],
//!  "sources":[["model",3]]}
//! ```
//! `codes` and `sources` are run-length encoded as `[value, run_length]`
//! pairs whose lengths sum to `n_cells`; they describe the state when the
//! journal was started.
//!
//! Following lines, one per action, with `seq` counting from 1 without gaps:
//! ```text
//! {"type":"edit","seq":1,"edit":{"op":"assign","cells":[0,2],"label":"NK"}}
//! {"type":"undo","seq":2}
//! {"type":"redo","seq":3}
//! ```
//! Edits are stored normalised (trimmed names, sorted unique cells).  A line
//! is written with one `write_all`, then the file is flushed and
//! `sync_data()`'d before the editing call returns; the in-memory session is
//! only changed after the line is durable.  On replay, a final segment
//! without a terminating newline is a torn write: it is ignored and counted
//! ([`Recovered::torn_lines`]), and [`Journal::recover`] truncates it away
//! before appending again.  Any other unparsable or inconsistent line is a
//! [`LabelError::JournalMalformed`] error carrying its 1-based line number.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Code of an unlabelled cell.
pub const UNLABELLED: i32 = -1;
/// Value of the `format` field of a journal header.
pub const JOURNAL_FORMAT: &str = "cellforge-labels-journal";
/// Journal format version written by this module.
pub const JOURNAL_VERSION: u32 = 1;

/// Everything that can go wrong while building, editing or journaling labels.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("category name is empty after trimming whitespace")]
    EmptyName,
    #[error("duplicate category name {0:?}")]
    DuplicateCategory(String),
    #[error("cell {cell} has code {code}, but there are {n_categories} categories")]
    CodeOutOfRange {
        cell: usize,
        code: i32,
        n_categories: usize,
    },
    #[error("length mismatch: expected {expected} cells, found {found}")]
    LengthMismatch { expected: usize, found: usize },
    #[error("too many cells ({0}); at most u32::MAX are supported")]
    TooManyCells(usize),
    #[error("too many categories ({0}); at most i32::MAX are supported")]
    TooManyCategories(usize),
    #[error("cell index {cell} is out of range for {n_cells} cells")]
    CellOutOfRange { cell: u32, n_cells: usize },
    #[error("the edit selects no cells")]
    EmptySelection,
    #[error("unknown category {0:?}")]
    UnknownCategory(String),
    #[error("category {0:?} already exists (use Merge to combine categories)")]
    CategoryExists(String),
    #[error("merge has no source category other than its target")]
    EmptyMerge,
    #[error("journal I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("journal line {line}: {reason}")]
    JournalMalformed { line: usize, reason: String },
    #[error("unsupported journal format {format:?} version {version}")]
    UnsupportedJournal { format: String, version: u64 },
    #[error("a journal is already attached to this session")]
    JournalAlreadyAttached,
    #[error("a journal can only be started on a session without undo/redo history")]
    HistoryNotEmpty,
    #[error("the journal could not be rolled back after a failed write; recover it from disk")]
    JournalPoisoned,
}

/// Trims a category name and rejects empty names.
pub fn clean_name(name: &str) -> Result<String, LabelError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        Err(LabelError::EmptyName)
    } else {
        Ok(trimmed.to_owned())
    }
}

fn check_n_cells(n: usize) -> Result<(), LabelError> {
    if n > u32::MAX as usize {
        Err(LabelError::TooManyCells(n))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// LabelColumn
// ---------------------------------------------------------------------------

/// A categorical label column: unique category names and one code per cell
/// (`-1` = unlabelled).  The invariants are checked on construction and kept
/// by every edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawColumn")]
pub struct LabelColumn {
    categories: Vec<String>,
    codes: Vec<i32>,
}

#[derive(Deserialize)]
struct RawColumn {
    categories: Vec<String>,
    codes: Vec<i32>,
}

impl TryFrom<RawColumn> for LabelColumn {
    type Error = LabelError;
    fn try_from(raw: RawColumn) -> Result<Self, LabelError> {
        LabelColumn::new(raw.categories, raw.codes)
    }
}

impl LabelColumn {
    /// Builds a column; names are trimmed and must be non-empty and unique
    /// after trimming, codes must lie in `-1..categories.len()`.
    pub fn new(categories: Vec<String>, codes: Vec<i32>) -> Result<Self, LabelError> {
        check_n_cells(codes.len())?;
        if categories.len() > i32::MAX as usize {
            return Err(LabelError::TooManyCategories(categories.len()));
        }
        let mut seen = HashSet::with_capacity(categories.len());
        let mut cleaned = Vec::with_capacity(categories.len());
        for name in &categories {
            let name = clean_name(name)?;
            if !seen.insert(name.clone()) {
                return Err(LabelError::DuplicateCategory(name));
            }
            cleaned.push(name);
        }
        let n_categories = cleaned.len();
        if let Some((cell, &code)) = codes
            .iter()
            .enumerate()
            .find(|&(_, &c)| c < UNLABELLED || (c >= 0 && c as usize >= n_categories))
        {
            return Err(LabelError::CodeOutOfRange {
                cell,
                code,
                n_categories,
            });
        }
        Ok(Self {
            categories: cleaned,
            codes,
        })
    }

    /// A column of `n_cells` unlabelled cells without categories.
    pub fn unlabelled(n_cells: usize) -> Result<Self, LabelError> {
        check_n_cells(n_cells)?;
        Ok(Self {
            categories: Vec::new(),
            codes: vec![UNLABELLED; n_cells],
        })
    }

    /// Builds a column from per-cell labels; categories are numbered in order
    /// of first appearance, names are trimmed.
    pub fn from_labels<S: AsRef<str>>(labels: &[Option<S>]) -> Result<Self, LabelError> {
        check_n_cells(labels.len())?;
        let mut index: HashMap<String, i32> = HashMap::new();
        let mut categories = Vec::new();
        let mut codes = Vec::with_capacity(labels.len());
        for label in labels {
            let code = match label {
                None => UNLABELLED,
                Some(name) => {
                    let name = clean_name(name.as_ref())?;
                    match index.get(&name) {
                        Some(&code) => code,
                        None => {
                            let code = i32::try_from(categories.len())
                                .map_err(|_| LabelError::TooManyCategories(categories.len()))?;
                            index.insert(name.clone(), code);
                            categories.push(name);
                            code
                        }
                    }
                }
            };
            codes.push(code);
        }
        Ok(Self { categories, codes })
    }

    /// Category names; position = code.
    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    /// One code per cell, `-1` = unlabelled.
    pub fn codes(&self) -> &[i32] {
        &self.codes
    }

    /// Splits the column into `(categories, codes)`.
    pub fn into_parts(self) -> (Vec<String>, Vec<i32>) {
        (self.categories, self.codes)
    }

    pub fn n_cells(&self) -> usize {
        self.codes.len()
    }

    pub fn n_categories(&self) -> usize {
        self.categories.len()
    }

    /// Position of a category (the name is trimmed before lookup).
    pub fn category_index(&self, name: &str) -> Option<usize> {
        let name = name.trim();
        self.categories.iter().position(|c| c == name)
    }

    /// Label of a cell; `None` if unlabelled or out of range.
    pub fn label_of(&self, cell: usize) -> Option<&str> {
        let code = *self.codes.get(cell)?;
        let code = usize::try_from(code).ok()?;
        self.categories.get(code).map(String::as_str)
    }

    /// Number of cells per category (same order as [`Self::categories`]).
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.categories.len()];
        for &code in &self.codes {
            if let Ok(i) = usize::try_from(code)
                && let Some(slot) = counts.get_mut(i)
            {
                *slot += 1;
            }
        }
        counts
    }

    /// Number of unlabelled cells.
    pub fn n_unlabelled(&self) -> usize {
        self.codes.iter().filter(|&&c| c < 0).count()
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.categories.iter().position(|c| c == name)
    }
}

// ---------------------------------------------------------------------------
// Provenance
// ---------------------------------------------------------------------------

/// Where a cell's current label came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Source {
    /// Present in the loaded dataset.
    Original,
    /// Predicted by a model (e.g. scGPT).
    Model,
    /// Transferred from a reference by label mapping.
    Mapped,
    /// Set or changed by the user in this session.
    Manual,
}

impl Source {
    /// `"original"`, `"model"`, `"mapped"` or `"manual"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Original => "original",
            Source::Model => "model",
            Source::Mapped => "mapped",
            Source::Manual => "manual",
        }
    }

    /// Inverse of [`Self::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "original" => Some(Source::Original),
            "model" => Some(Source::Model),
            "mapped" => Some(Source::Mapped),
            "manual" => Some(Source::Manual),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Edits
// ---------------------------------------------------------------------------

/// A reversible change of the label column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Edit {
    /// Give `label` (created if new) to `cells`; their source becomes Manual.
    Assign { cells: Vec<u32>, label: String },
    /// Rename a category; fails if `to` already exists (use `Merge`).
    Rename { from: String, to: String },
    /// Move every cell of the `from` categories to `into` (created if new)
    /// and remove the `from` categories.  Moved cells become Manual.  A name
    /// in `from` equal to `into` is ignored.
    Merge { from: Vec<String>, into: String },
    /// Make `cells` unlabelled; their source becomes Manual.
    Clear { cells: Vec<u32> },
}

impl Edit {
    fn heap_bytes(&self) -> usize {
        match self {
            Edit::Assign { cells, label } => cells.capacity() * 4 + label.capacity(),
            Edit::Rename { from, to } => from.capacity() + to.capacity(),
            Edit::Merge { from, into } => {
                from.capacity() * std::mem::size_of::<String>()
                    + from.iter().map(String::capacity).sum::<usize>()
                    + into.capacity()
            }
            Edit::Clear { cells } => cells.capacity() * 4,
        }
    }
}

/// What an edit, undo or redo changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditSummary {
    /// Cells whose code or source changed.
    pub cells_changed: usize,
    /// Category names that appeared (a rename reports the new name here).
    pub categories_added: Vec<String>,
    /// Category names that disappeared (a rename reports the old name here).
    pub categories_removed: Vec<String>,
}

/// Serialisable edit history for provenance export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Applied edits, oldest first (normalised).
    pub applied: Vec<Edit>,
    /// Undone edits that can be redone, next redo first.
    pub redoable: Vec<Edit>,
    /// Session metadata (model name, thresholds, …).
    pub metadata: Option<Value>,
}

/// How to restore the category list on undo.
#[derive(Debug, Clone)]
enum CategoryUndo {
    Unchanged,
    /// Drop the categories appended by the edit.
    Truncate(usize),
    /// Give the category at `index` its previous name back.
    Rename {
        index: usize,
        previous: String,
    },
    /// Put back this category list (codes of untouched cells are remapped
    /// by name).
    Restore(Vec<String>),
}

/// Compact inverse of one applied edit: previous state of changed cells only.
#[derive(Debug, Clone)]
struct Inverse {
    cells: Vec<u32>,
    codes: Vec<i32>,
    sources: Vec<Source>,
    categories: CategoryUndo,
}

impl Inverse {
    fn new(categories: CategoryUndo) -> Self {
        Self {
            cells: Vec::new(),
            codes: Vec::new(),
            sources: Vec::new(),
            categories,
        }
    }

    fn record(&mut self, cell: usize, code: i32, source: Source) {
        // `cell < n_cells <= u32::MAX`, checked when the column was built.
        self.cells.push(cell as u32);
        self.codes.push(code);
        self.sources.push(source);
    }

    fn finish(mut self) -> Self {
        self.cells.shrink_to_fit();
        self.codes.shrink_to_fit();
        self.sources.shrink_to_fit();
        self
    }

    fn heap_bytes(&self) -> usize {
        let categories = match &self.categories {
            CategoryUndo::Unchanged | CategoryUndo::Truncate(_) => 0,
            CategoryUndo::Rename { previous, .. } => previous.capacity(),
            CategoryUndo::Restore(names) => {
                names.capacity() * std::mem::size_of::<String>()
                    + names.iter().map(String::capacity).sum::<usize>()
            }
        };
        self.cells.capacity() * 4
            + self.codes.capacity() * 4
            + self.sources.capacity() * std::mem::size_of::<Source>()
            + categories
    }
}

#[derive(Debug)]
struct Applied {
    edit: Edit,
    inverse: Inverse,
}

// ---------------------------------------------------------------------------
// LabelSession
// ---------------------------------------------------------------------------

/// Labels being curated: current column, per-cell provenance, undo/redo
/// stacks and an optional journal.
#[derive(Debug)]
pub struct LabelSession {
    column: LabelColumn,
    sources: Vec<Source>,
    metadata: Option<Value>,
    undo: Vec<Applied>,
    redo: Vec<Edit>,
    journal: Option<Journal>,
}

impl LabelSession {
    /// Starts a session; `sources` must have one entry per cell.
    pub fn new(
        column: LabelColumn,
        sources: Vec<Source>,
        metadata: Option<Value>,
    ) -> Result<Self, LabelError> {
        if sources.len() != column.n_cells() {
            return Err(LabelError::LengthMismatch {
                expected: column.n_cells(),
                found: sources.len(),
            });
        }
        Ok(Self::fresh(column, sources, metadata))
    }

    /// Starts a session in which every cell has the same source.
    pub fn with_source(column: LabelColumn, source: Source, metadata: Option<Value>) -> Self {
        let sources = vec![source; column.n_cells()];
        Self::fresh(column, sources, metadata)
    }

    /// A session without history or journal (`sources` has one entry per cell).
    fn fresh(column: LabelColumn, sources: Vec<Source>, metadata: Option<Value>) -> Self {
        Self {
            column,
            sources,
            metadata,
            undo: Vec::new(),
            redo: Vec::new(),
            journal: None,
        }
    }

    pub fn column(&self) -> &LabelColumn {
        &self.column
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    pub fn metadata(&self) -> Option<&Value> {
        self.metadata.as_ref()
    }

    pub fn n_cells(&self) -> usize {
        self.column.n_cells()
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Number of edits that can be undone.
    pub fn undo_len(&self) -> usize {
        self.undo.len()
    }

    /// Number of edits that can be redone.
    pub fn redo_len(&self) -> usize {
        self.redo.len()
    }

    /// The edit the next `undo()` would revert.
    pub fn peek_undo(&self) -> Option<&Edit> {
        self.undo.last().map(|a| &a.edit)
    }

    /// The edit the next `redo()` would re-apply.
    pub fn peek_redo(&self) -> Option<&Edit> {
        self.redo.last()
    }

    /// Copy of the current column (for export).
    pub fn to_column(&self) -> LabelColumn {
        self.column.clone()
    }

    /// Per-cell provenance as `"original"`/`"model"`/`"mapped"`/`"manual"`.
    pub fn sources_as_strings(&self) -> Vec<&'static str> {
        self.sources.iter().map(|s| s.as_str()).collect()
    }

    /// Applied and redoable edits plus metadata, for provenance export.
    pub fn history(&self) -> History {
        History {
            applied: self.undo.iter().map(|a| a.edit.clone()).collect(),
            redoable: self.redo.iter().rev().cloned().collect(),
            metadata: self.metadata.clone(),
        }
    }

    /// Heap bytes held by the undo and redo stacks (edits plus inverses).
    pub fn history_heap_bytes(&self) -> usize {
        let undo: usize = self
            .undo
            .iter()
            .map(|a| std::mem::size_of::<Applied>() + a.edit.heap_bytes() + a.inverse.heap_bytes())
            .sum();
        let redo: usize = self
            .redo
            .iter()
            .map(|e| std::mem::size_of::<Edit>() + e.heap_bytes())
            .sum();
        undo + redo
    }

    /// The attached journal, if any.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Stops journaling and returns the journal (the file stays on disk).
    pub fn detach_journal(&mut self) -> Option<Journal> {
        self.journal.take()
    }

    /// Creates a new journal file (it must not exist yet) whose header holds
    /// `identity`, the metadata and the current state, and attaches it.  Only
    /// allowed while the undo and redo stacks are empty.
    pub fn start_journal(
        &mut self,
        path: impl AsRef<Path>,
        identity: DatasetIdentity,
    ) -> Result<(), LabelError> {
        if self.journal.is_some() {
            return Err(LabelError::JournalAlreadyAttached);
        }
        if !self.undo.is_empty() || !self.redo.is_empty() {
            return Err(LabelError::HistoryNotEmpty);
        }
        if identity.n_cells != self.n_cells() as u64 {
            return Err(LabelError::LengthMismatch {
                expected: self.n_cells(),
                found: usize::try_from(identity.n_cells).unwrap_or(usize::MAX),
            });
        }
        let header = Header {
            kind: "header".to_owned(),
            format: JOURNAL_FORMAT.to_owned(),
            version: JOURNAL_VERSION,
            dataset: identity,
            metadata: self.metadata.clone(),
            categories: self.column.categories.clone(),
            codes: rle_encode(&self.column.codes),
            sources: rle_encode(&self.sources),
        };
        self.journal = Some(Journal::create(path.as_ref(), &header)?);
        Ok(())
    }

    /// Validates and applies an edit (journaling it first if a journal is
    /// attached).  Clears the redo stack.  On error nothing changes.
    pub fn apply(&mut self, edit: Edit) -> Result<EditSummary, LabelError> {
        let edit = self.validate(edit)?;
        self.log(RecordOut::Edit {
            seq: self.next_seq(),
            edit: &edit,
        })?;
        let (inverse, summary) = self.commit(&edit);
        self.undo.push(Applied { edit, inverse });
        self.redo.clear();
        Ok(summary)
    }

    /// Reverts the last applied edit; `Ok(None)` if there is nothing to undo.
    pub fn undo(&mut self) -> Result<Option<EditSummary>, LabelError> {
        if self.undo.is_empty() {
            return Ok(None);
        }
        self.log(RecordOut::Undo {
            seq: self.next_seq(),
        })?;
        let Some(applied) = self.undo.pop() else {
            return Ok(None);
        };
        let summary = self.revert(applied.inverse);
        self.redo.push(applied.edit);
        Ok(Some(summary))
    }

    /// Re-applies the last undone edit; `Ok(None)` if there is nothing to redo.
    pub fn redo(&mut self) -> Result<Option<EditSummary>, LabelError> {
        let Some(edit) = self.redo.last() else {
            return Ok(None);
        };
        // The state equals the one the edit was first applied to, so this
        // succeeds; it is still checked rather than assumed.
        let edit = self.validate(edit.clone())?;
        self.log(RecordOut::Redo {
            seq: self.next_seq(),
        })?;
        self.redo.pop();
        let (inverse, summary) = self.commit(&edit);
        self.undo.push(Applied { edit, inverse });
        Ok(Some(summary))
    }

    fn next_seq(&self) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.next_seq)
    }

    fn log(&mut self, record: RecordOut<'_>) -> Result<(), LabelError> {
        match &mut self.journal {
            Some(journal) => journal.append(&record),
            None => Ok(()),
        }
    }

    fn check_room(&self) -> Result<(), LabelError> {
        let n = self.column.categories.len();
        if n >= i32::MAX as usize {
            Err(LabelError::TooManyCategories(n + 1))
        } else {
            Ok(())
        }
    }

    fn clean_cells(&self, mut cells: Vec<u32>) -> Result<Vec<u32>, LabelError> {
        if cells.is_empty() {
            return Err(LabelError::EmptySelection);
        }
        cells.sort_unstable();
        cells.dedup();
        let n_cells = self.n_cells();
        if let Some(&cell) = cells.last()
            && cell as usize >= n_cells
        {
            return Err(LabelError::CellOutOfRange { cell, n_cells });
        }
        cells.shrink_to_fit();
        Ok(cells)
    }

    /// Checks an edit against the current state and returns it normalised.
    fn validate(&self, edit: Edit) -> Result<Edit, LabelError> {
        match edit {
            Edit::Assign { cells, label } => {
                let label = clean_name(&label)?;
                let cells = self.clean_cells(cells)?;
                if self.column.position(&label).is_none() {
                    self.check_room()?;
                }
                Ok(Edit::Assign { cells, label })
            }
            Edit::Rename { from, to } => {
                let from = clean_name(&from)?;
                let to = clean_name(&to)?;
                if self.column.position(&from).is_none() {
                    return Err(LabelError::UnknownCategory(from));
                }
                if self.column.position(&to).is_some() {
                    return Err(LabelError::CategoryExists(to));
                }
                Ok(Edit::Rename { from, to })
            }
            Edit::Merge { from, into } => {
                let into = clean_name(&into)?;
                let mut seen = HashSet::new();
                let mut sources = Vec::new();
                for name in &from {
                    let name = clean_name(name)?;
                    if self.column.position(&name).is_none() {
                        return Err(LabelError::UnknownCategory(name));
                    }
                    if name != into && seen.insert(name.clone()) {
                        sources.push(name);
                    }
                }
                if sources.is_empty() {
                    return Err(LabelError::EmptyMerge);
                }
                if self.column.position(&into).is_none() {
                    self.check_room()?;
                }
                Ok(Edit::Merge {
                    from: sources,
                    into,
                })
            }
            Edit::Clear { cells } => Ok(Edit::Clear {
                cells: self.clean_cells(cells)?,
            }),
        }
    }

    /// Applies a validated, normalised edit.  Cannot fail.
    fn commit(&mut self, edit: &Edit) -> (Inverse, EditSummary) {
        let mut summary = EditSummary::default();
        let inverse = match edit {
            Edit::Assign { cells, label } => {
                let (index, undo) = match self.column.position(label) {
                    Some(i) => (i, CategoryUndo::Unchanged),
                    None => {
                        let n = self.column.categories.len();
                        self.column.categories.push(label.clone());
                        summary.categories_added.push(label.clone());
                        (n, CategoryUndo::Truncate(n))
                    }
                };
                self.set_cells(cells, index as i32, undo)
            }
            Edit::Clear { cells } => self.set_cells(cells, UNLABELLED, CategoryUndo::Unchanged),
            Edit::Rename { from, to } => {
                let mut undo = CategoryUndo::Unchanged;
                if let Some(index) = self.column.position(from)
                    && let Some(slot) = self.column.categories.get_mut(index)
                {
                    let previous = std::mem::replace(slot, to.clone());
                    summary.categories_removed.push(previous.clone());
                    summary.categories_added.push(to.clone());
                    undo = CategoryUndo::Rename { index, previous };
                }
                Inverse::new(undo)
            }
            Edit::Merge { from, into } => self.merge(from, into, &mut summary),
        };
        let inverse = inverse.finish();
        summary.cells_changed = inverse.cells.len();
        (inverse, summary)
    }

    fn set_cells(&mut self, cells: &[u32], code: i32, undo: CategoryUndo) -> Inverse {
        let mut inverse = Inverse::new(undo);
        for &cell in cells {
            let cell = cell as usize;
            if let (Some(c), Some(s)) =
                (self.column.codes.get_mut(cell), self.sources.get_mut(cell))
                && (*c != code || *s != Source::Manual)
            {
                inverse.record(cell, *c, *s);
                *c = code;
                *s = Source::Manual;
            }
        }
        inverse
    }

    fn merge(&mut self, from: &[String], into: &str, summary: &mut EditSummary) -> Inverse {
        let previous = self.column.categories.clone();
        let target = match self.column.position(into) {
            Some(i) => i,
            None => {
                self.column.categories.push(into.to_owned());
                summary.categories_added.push(into.to_owned());
                self.column.categories.len() - 1
            }
        };
        let extended = std::mem::take(&mut self.column.categories);
        let mut is_from = vec![false; extended.len()];
        for name in from {
            if let Some(i) = extended.iter().position(|c| c == name)
                && i != target
                && let Some(flag) = is_from.get_mut(i)
            {
                *flag = true;
            }
        }
        // Old index -> new index; removed categories map to the target.
        let mut map = vec![UNLABELLED; extended.len()];
        let mut kept = Vec::with_capacity(extended.len());
        for (i, name) in extended.into_iter().enumerate() {
            if is_from[i] {
                summary.categories_removed.push(name);
            } else {
                map[i] = kept.len() as i32;
                kept.push(name);
            }
        }
        let new_target = map[target];
        for (m, &removed) in map.iter_mut().zip(&is_from) {
            if removed {
                *m = new_target;
            }
        }
        self.column.categories = kept;
        let mut inverse = Inverse::new(CategoryUndo::Restore(previous));
        let cells = self.column.codes.iter_mut().zip(self.sources.iter_mut());
        for (cell, (code, source)) in cells.enumerate() {
            let Ok(old) = usize::try_from(*code) else {
                continue;
            };
            if is_from.get(old).copied().unwrap_or(false) {
                inverse.record(cell, *code, *source);
                *source = Source::Manual;
            }
            *code = map.get(old).copied().unwrap_or(UNLABELLED);
        }
        inverse
    }

    /// Applies an inverse.  Cannot fail.
    fn revert(&mut self, inverse: Inverse) -> EditSummary {
        let mut summary = EditSummary {
            cells_changed: inverse.cells.len(),
            ..EditSummary::default()
        };
        let categories = &mut self.column.categories;
        match inverse.categories {
            CategoryUndo::Unchanged => {}
            CategoryUndo::Truncate(n) => {
                if n <= categories.len() {
                    summary.categories_removed = categories.split_off(n);
                }
            }
            CategoryUndo::Rename { index, previous } => {
                if let Some(slot) = categories.get_mut(index) {
                    let current = std::mem::replace(slot, previous.clone());
                    summary.categories_removed.push(current);
                    summary.categories_added.push(previous);
                }
            }
            CategoryUndo::Restore(previous) => {
                let map: Vec<i32> = {
                    let lookup: HashMap<&str, i32> = previous
                        .iter()
                        .enumerate()
                        .map(|(i, name)| (name.as_str(), i as i32))
                        .collect();
                    categories
                        .iter()
                        .map(|name| lookup.get(name.as_str()).copied().unwrap_or(UNLABELLED))
                        .collect()
                };
                for code in &mut self.column.codes {
                    if let Ok(c) = usize::try_from(*code) {
                        *code = map.get(c).copied().unwrap_or(UNLABELLED);
                    }
                }
                let now: HashSet<&str> = categories.iter().map(String::as_str).collect();
                let before: HashSet<&str> = previous.iter().map(String::as_str).collect();
                summary.categories_added = previous
                    .iter()
                    .filter(|n| !now.contains(n.as_str()))
                    .cloned()
                    .collect();
                summary.categories_removed = categories
                    .iter()
                    .filter(|n| !before.contains(n.as_str()))
                    .cloned()
                    .collect();
                *categories = previous;
            }
        }
        let cells = inverse
            .cells
            .iter()
            .zip(&inverse.codes)
            .zip(&inverse.sources);
        for ((&cell, &code), &source) in cells {
            let cell = cell as usize;
            if let (Some(c), Some(s)) =
                (self.column.codes.get_mut(cell), self.sources.get_mut(cell))
            {
                *c = code;
                *s = source;
            }
        }
        summary
    }
}

// ---------------------------------------------------------------------------
// Journal
// ---------------------------------------------------------------------------

/// Identity of the dataset a journal belongs to, supplied by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetIdentity {
    /// Dataset file path as the app shows it.
    pub path: String,
    pub n_cells: u64,
    /// Caller-defined content fingerprint (e.g. a hash).
    pub fingerprint: String,
    /// Name of the obs column being curated.
    pub label_column: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    #[serde(rename = "type")]
    kind: String,
    format: String,
    version: u32,
    dataset: DatasetIdentity,
    metadata: Option<Value>,
    categories: Vec<String>,
    codes: Vec<(i32, u64)>,
    sources: Vec<(Source, u64)>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RecordOut<'a> {
    Edit { seq: u64, edit: &'a Edit },
    Undo { seq: u64 },
    Redo { seq: u64 },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RecordIn {
    Edit { seq: u64, edit: Edit },
    Undo { seq: u64 },
    Redo { seq: u64 },
}

fn rle_encode<T: Copy + PartialEq>(values: &[T]) -> Vec<(T, u64)> {
    let mut runs: Vec<(T, u64)> = Vec::new();
    for &v in values {
        match runs.last_mut() {
            Some((last, n)) if *last == v => *n += 1,
            _ => runs.push((v, 1)),
        }
    }
    runs
}

fn rle_decode<T: Copy>(
    runs: &[(T, u64)],
    n_cells: usize,
    what: &str,
) -> Result<Vec<T>, LabelError> {
    let malformed = |reason: String| LabelError::JournalMalformed { line: 1, reason };
    let total = runs
        .iter()
        .try_fold(0u64, |acc, &(_, n)| acc.checked_add(n))
        .ok_or_else(|| malformed(format!("{what} run lengths overflow")))?;
    if total != n_cells as u64 {
        return Err(malformed(format!(
            "{what} runs cover {total} cells, header says {n_cells}"
        )));
    }
    let mut out = Vec::with_capacity(n_cells);
    for &(value, n) in runs {
        // `n <= total == n_cells`, so it fits in usize.
        out.extend(std::iter::repeat_n(value, n as usize));
    }
    Ok(out)
}

/// An append-only journal file attached to a [`LabelSession`].
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Length of the file up to the last complete record.
    len: u64,
    next_seq: u64,
    poisoned: bool,
}

/// Result of replaying a journal.
#[derive(Debug)]
pub struct Recovered {
    /// The replayed session (with the journal attached after
    /// [`Journal::recover`], without after [`Journal::replay`]).
    pub session: LabelSession,
    /// Dataset identity from the header; compare it with the loaded data.
    pub identity: DatasetIdentity,
    /// Number of action records replayed (header excluded).
    pub records: u64,
    /// 1 if the last line was torn (no trailing newline) and ignored, else 0.
    pub torn_lines: usize,
    /// Bytes of the file up to the end of the last complete line.
    pub valid_bytes: u64,
}

impl Journal {
    fn create(path: &Path, header: &Header) -> Result<Self, LabelError> {
        let mut line = serde_json::to_vec(header).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)?;
        let written = file
            .write_all(&line)
            .and_then(|()| file.flush())
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e.into());
        }
        sync_parent_dir(path)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            len: line.len() as u64,
            next_seq: 1,
            poisoned: false,
        })
    }

    /// Path of the journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of action records in the file (header excluded).
    pub fn records(&self) -> u64 {
        self.next_seq - 1
    }

    /// Bytes of the file covered by complete records.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    fn append(&mut self, record: &RecordOut<'_>) -> Result<(), LabelError> {
        if self.poisoned {
            return Err(LabelError::JournalPoisoned);
        }
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += line.len() as u64;
                self.next_seq += 1;
                Ok(())
            }
            Err(e) => {
                // Drop whatever part of the line reached the file so the
                // journal keeps matching the (unchanged) session.
                let rolled_back = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data());
                if rolled_back.is_err() {
                    self.poisoned = true;
                }
                Err(e.into())
            }
        }
    }

    /// Replays a journal into a session without attaching it (read-only).
    pub fn replay(path: impl AsRef<Path>) -> Result<Recovered, LabelError> {
        let data = std::fs::read(path.as_ref())?;
        let mut lines = Vec::new();
        let mut pos = 0usize;
        let mut torn_lines = 0usize;
        while pos < data.len() {
            let rest = &data[pos..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    lines.push(&rest[..end]);
                    pos += end + 1;
                }
                None => {
                    torn_lines = 1;
                    break;
                }
            }
        }
        let Some((first, records)) = lines.split_first() else {
            return Err(LabelError::JournalMalformed {
                line: 1,
                reason: "missing or incomplete header".to_owned(),
            });
        };
        let header = parse_header(first)?;
        let n_cells = usize::try_from(header.dataset.n_cells)
            .map_err(|_| LabelError::TooManyCells(usize::MAX))?;
        check_n_cells(n_cells)?;
        let codes = rle_decode(&header.codes, n_cells, "codes")?;
        let sources = rle_decode(&header.sources, n_cells, "sources")?;
        let column = LabelColumn::new(header.categories, codes).map_err(|e| {
            LabelError::JournalMalformed {
                line: 1,
                reason: e.to_string(),
            }
        })?;
        let mut session = LabelSession::new(column, sources, header.metadata)?;
        for (i, raw) in records.iter().enumerate() {
            let line = i + 2;
            let malformed = |reason: String| LabelError::JournalMalformed { line, reason };
            let record: RecordIn =
                serde_json::from_slice(raw).map_err(|e| malformed(e.to_string()))?;
            let (seq, done) = match record {
                RecordIn::Edit { seq, edit } => (
                    seq,
                    session
                        .apply(edit)
                        .map(|_| true)
                        .map_err(|e| malformed(format!("edit cannot be applied: {e}")))?,
                ),
                RecordIn::Undo { seq } => (seq, session.undo()?.is_some()),
                RecordIn::Redo { seq } => (seq, session.redo()?.is_some()),
            };
            if seq != i as u64 + 1 {
                return Err(malformed(format!("expected seq {}, found {seq}", i + 1)));
            }
            if !done {
                return Err(malformed("undo/redo with an empty stack".to_owned()));
            }
        }
        Ok(Recovered {
            session,
            identity: header.dataset,
            records: records.len() as u64,
            torn_lines,
            valid_bytes: pos as u64,
        })
    }

    /// Replays a journal and re-attaches it to the session for further
    /// appends, truncating a torn last line away first.
    pub fn recover(path: impl AsRef<Path>) -> Result<Recovered, LabelError> {
        let path = path.as_ref();
        let mut recovered = Self::replay(path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        if recovered.torn_lines > 0 {
            file.set_len(recovered.valid_bytes)?;
            file.sync_all()?;
        }
        recovered.session.journal = Some(Journal {
            file,
            path: path.to_owned(),
            len: recovered.valid_bytes,
            next_seq: recovered.records + 1,
            poisoned: false,
        });
        Ok(recovered)
    }
}

fn parse_header(raw: &[u8]) -> Result<Header, LabelError> {
    let malformed = |reason: String| LabelError::JournalMalformed { line: 1, reason };
    let value: Value = serde_json::from_slice(raw).map_err(|e| malformed(e.to_string()))?;
    if value.get("type").and_then(Value::as_str) != Some("header") {
        return Err(malformed("first line is not a header".to_owned()));
    }
    let format = value.get("format").and_then(Value::as_str).unwrap_or("");
    let version = value.get("version").and_then(Value::as_u64).unwrap_or(0);
    if format != JOURNAL_FORMAT || version != u64::from(JOURNAL_VERSION) {
        return Err(LabelError::UnsupportedJournal {
            format: format.to_owned(),
            version,
        });
    }
    serde_json::from_value(value).map_err(|e| malformed(e.to_string()))
}

#[cfg(unix)]
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

#[cfg(not(unix))]
fn sync_parent_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// 6 cells: A A B C - B ; sources model.
    fn small() -> LabelSession {
        let col = LabelColumn::new(names(&["A", "B", "C"]), vec![0, 0, 1, 2, -1, 1]).unwrap();
        LabelSession::with_source(col, Source::Model, None)
    }

    fn assign(cells: &[u32], label: &str) -> Edit {
        Edit::Assign {
            cells: cells.to_vec(),
            label: label.to_string(),
        }
    }

    fn state(s: &LabelSession) -> (LabelColumn, Vec<Source>, usize, usize) {
        (
            s.to_column(),
            s.sources().to_vec(),
            s.undo_len(),
            s.redo_len(),
        )
    }

    fn identity(n: usize) -> DatasetIdentity {
        DatasetIdentity {
            path: "/data/pbmc.h5ad".into(),
            n_cells: n as u64,
            fingerprint: "sha256:abc".into(),
            label_column: "cell_type".into(),
        }
    }

    #[test]
    fn column_validation_and_helpers() {
        assert!(matches!(
            LabelColumn::new(names(&["A", " A "]), vec![]),
            Err(LabelError::DuplicateCategory(n)) if n == "A"
        ));
        assert!(matches!(
            LabelColumn::new(names(&["A", "  "]), vec![]),
            Err(LabelError::EmptyName)
        ));
        assert!(matches!(
            LabelColumn::new(names(&["A"]), vec![0, 1]),
            Err(LabelError::CodeOutOfRange {
                cell: 1,
                code: 1,
                ..
            })
        ));
        assert!(matches!(
            LabelColumn::new(names(&["A"]), vec![-2]),
            Err(LabelError::CodeOutOfRange { cell: 0, .. })
        ));
        let col = LabelColumn::new(names(&[" A", "B"]), vec![0, -1, 1, 1]).unwrap();
        assert_eq!(col.categories(), &names(&["A", "B"])[..]);
        assert_eq!(col.n_cells(), 4);
        assert_eq!(col.label_of(0), Some("A"));
        assert_eq!(col.label_of(1), None);
        assert_eq!(col.label_of(99), None);
        assert_eq!(col.counts(), vec![1, 2]);
        assert_eq!(col.n_unlabelled(), 1);
        let from = LabelColumn::from_labels(&[Some("T"), None, Some(" B "), Some("T")]).unwrap();
        assert_eq!(from.categories(), &names(&["T", "B"])[..]);
        assert_eq!(from.codes(), &[0, -1, 1, 0]);
        let json = serde_json::to_string(&col).unwrap();
        assert_eq!(serde_json::from_str::<LabelColumn>(&json).unwrap(), col);
        assert!(
            serde_json::from_str::<LabelColumn>(r#"{"categories":["A"],"codes":[3]}"#).is_err()
        );
    }

    #[test]
    fn assign_semantics_undo_redo() {
        let mut s = small();
        let before = state(&s);
        let sum = s.apply(assign(&[5, 4, 4, 0], " NK ")).unwrap();
        assert_eq!(sum.cells_changed, 3);
        assert_eq!(sum.categories_added, names(&["NK"]));
        assert_eq!(s.column().categories(), &names(&["A", "B", "C", "NK"])[..]);
        assert_eq!(s.column().codes(), &[3, 0, 1, 2, 3, 3]);
        assert_eq!(s.column().counts(), vec![1, 1, 1, 3]);
        assert_eq!(s.sources()[0], Source::Manual);
        assert_eq!(s.sources()[1], Source::Model);
        assert_eq!(
            s.peek_undo(),
            Some(&assign(&[0, 4, 5], "NK")),
            "stored normalised"
        );
        let after = state(&s);
        // Re-assigning identical values changes nothing but is recorded.
        assert_eq!(s.apply(assign(&[0], "NK")).unwrap().cells_changed, 0);
        s.undo().unwrap();
        let undone = s.undo().unwrap().unwrap();
        assert_eq!(undone.cells_changed, 3);
        assert_eq!(undone.categories_removed, names(&["NK"]));
        assert_eq!(state(&s).0, before.0);
        assert_eq!(state(&s).1, before.1);
        assert_eq!(s.redo_len(), 2);
        s.redo().unwrap().unwrap();
        assert_eq!(state(&s).0, after.0);
        assert_eq!(state(&s).1, after.1);
        // New edit clears redo.
        s.apply(assign(&[1], "B")).unwrap();
        assert_eq!(s.redo_len(), 0);
        assert_eq!(s.redo().unwrap(), None);
        assert_eq!(s.column().label_of(1), Some("B"));
    }

    #[test]
    fn rename_semantics() {
        let mut s = small();
        let before = state(&s);
        let sum = s
            .apply(Edit::Rename {
                from: "B".into(),
                to: "B cell".into(),
            })
            .unwrap();
        assert_eq!(sum.cells_changed, 0);
        assert_eq!(s.column().categories(), &names(&["A", "B cell", "C"])[..]);
        assert_eq!(s.column().codes(), before.0.codes());
        assert_eq!(s.sources(), &before.1[..], "rename keeps provenance");
        assert!(matches!(
            s.apply(Edit::Rename {
                from: "A".into(),
                to: "C".into()
            }),
            Err(LabelError::CategoryExists(n)) if n == "C"
        ));
        s.undo().unwrap();
        assert_eq!(state(&s).0, before.0);
        assert_eq!(state(&s).1, before.1);
        assert_eq!(s.redo_len(), 1);
    }

    #[test]
    fn merge_semantics_and_reindexing() {
        let col =
            LabelColumn::new(names(&["A", "B", "C", "D"]), vec![0, 1, 2, 3, -1, 1, 3]).unwrap();
        let sources = vec![
            Source::Original,
            Source::Model,
            Source::Mapped,
            Source::Model,
            Source::Original,
            Source::Original,
            Source::Mapped,
        ];
        let mut s = LabelSession::new(col, sources, None).unwrap();
        let before = state(&s);
        // Into a new category: appended, then A and C removed, rest re-numbered.
        let sum = s
            .apply(Edit::Merge {
                from: names(&["C", "A", "C"]),
                into: "AC".into(),
            })
            .unwrap();
        assert_eq!(sum.cells_changed, 2);
        assert_eq!(sum.categories_added, names(&["AC"]));
        assert_eq!(sum.categories_removed, names(&["A", "C"]));
        assert_eq!(s.column().categories(), &names(&["B", "D", "AC"])[..]);
        assert_eq!(s.column().codes(), &[2, 0, 2, 1, -1, 0, 1]);
        assert_eq!(s.sources()[0], Source::Manual);
        assert_eq!(s.sources()[2], Source::Manual);
        assert_eq!(s.sources()[1], Source::Model, "unmoved cells keep source");
        let merged = state(&s);
        // Into an existing category that is also listed in `from`.
        s.apply(Edit::Merge {
            from: names(&["B", "D"]),
            into: "D".into(),
        })
        .unwrap();
        assert_eq!(s.column().categories(), &names(&["D", "AC"])[..]);
        assert_eq!(s.column().codes(), &[1, 0, 1, 0, -1, 0, 0]);
        assert_eq!(
            s.sources()[3],
            Source::Model,
            "cells already in target keep source"
        );
        assert_eq!(s.sources()[5], Source::Manual);
        s.undo().unwrap();
        assert_eq!(state(&s).0, merged.0);
        assert_eq!(state(&s).1, merged.1);
        s.undo().unwrap();
        assert_eq!(state(&s).0, before.0);
        assert_eq!(state(&s).1, before.1);
        s.redo().unwrap();
        assert_eq!(state(&s).0, merged.0);
        assert!(matches!(
            s.apply(Edit::Merge {
                from: names(&["D"]),
                into: "D".into()
            }),
            Err(LabelError::EmptyMerge)
        ));
    }

    #[test]
    fn clear_semantics() {
        let mut s = small();
        let before = state(&s);
        let sum = s
            .apply(Edit::Clear {
                cells: vec![2, 4, 2, 3],
            })
            .unwrap();
        assert_eq!(sum.cells_changed, 3, "cell 4 changes source only");
        assert_eq!(s.column().codes(), &[0, 0, -1, -1, -1, 1]);
        assert_eq!(s.column().categories().len(), 3, "clear keeps categories");
        assert_eq!(s.column().counts(), vec![2, 1, 0]);
        assert_eq!(s.sources()[4], Source::Manual);
        s.undo().unwrap();
        assert_eq!(state(&s).0, before.0);
        assert_eq!(state(&s).1, before.1);
    }

    #[test]
    fn invalid_edits_leave_session_unchanged() {
        let mut s = small();
        s.apply(assign(&[0], "X")).unwrap();
        s.apply(assign(&[1], "Y")).unwrap();
        s.undo().unwrap();
        let before = state(&s);
        let bad = [
            (assign(&[0, 6], "A"), "out of range"),
            (assign(&[], "A"), "empty selection"),
            (assign(&[0], "  "), "empty label"),
            (
                Edit::Clear {
                    cells: vec![1, 100],
                },
                "clear oob",
            ),
            (
                Edit::Rename {
                    from: "Z".into(),
                    to: "Q".into(),
                },
                "unknown",
            ),
            (
                Edit::Rename {
                    from: "A".into(),
                    to: "B".into(),
                },
                "exists",
            ),
            (
                Edit::Rename {
                    from: "A".into(),
                    to: "".into(),
                },
                "empty to",
            ),
            (
                Edit::Merge {
                    from: names(&["A", "Z"]),
                    into: "N".into(),
                },
                "merge unknown",
            ),
            (
                Edit::Merge {
                    from: vec![],
                    into: "A".into(),
                },
                "merge empty",
            ),
        ];
        for (edit, what) in bad {
            assert!(s.apply(edit).is_err(), "{what} accepted");
            assert_eq!(state(&s), before, "{what} changed the session");
        }
        assert!(matches!(
            s.apply(assign(&[3, 9], "A")),
            Err(LabelError::CellOutOfRange {
                cell: 9,
                n_cells: 6
            })
        ));
        assert!(matches!(
            LabelSession::new(
                LabelColumn::unlabelled(3).unwrap(),
                vec![Source::Model],
                None
            ),
            Err(LabelError::LengthMismatch {
                expected: 3,
                found: 1
            })
        ));
    }

    #[test]
    fn exports() {
        let mut s = small();
        s.apply(assign(&[1], "A")).unwrap();
        s.apply(assign(&[2], "NK")).unwrap();
        s.undo().unwrap();
        let strings = s.sources_as_strings();
        assert_eq!(
            strings,
            vec!["model", "manual", "model", "model", "model", "model"]
        );
        for src in [
            Source::Original,
            Source::Model,
            Source::Mapped,
            Source::Manual,
        ] {
            assert_eq!(Source::from_name(src.as_str()), Some(src));
        }
        let h = s.history();
        assert_eq!(h.applied, vec![assign(&[1], "A")]);
        assert_eq!(h.redoable, vec![assign(&[2], "NK")]);
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains(r#""op":"assign""#), "{json}");
        assert_eq!(serde_json::from_str::<History>(&json).unwrap(), h);
    }

    fn journaled(dir: &Path) -> (LabelSession, PathBuf) {
        let path = dir.join("labels.journal");
        let col = LabelColumn::new(names(&["A", "B"]), vec![0, 0, 0, 1, -1, -1, 1, 0]).unwrap();
        let meta = serde_json::json!({"model": "scGPT", "threshold": 0.8});
        let mut s = LabelSession::with_source(col, Source::Model, Some(meta));
        s.start_journal(&path, identity(8)).unwrap();
        (s, path)
    }

    #[test]
    fn journal_recover_matches_live() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, path) = journaled(dir.path());
        s.apply(assign(&[7, 1, 1], "NK")).unwrap();
        s.apply(Edit::Rename {
            from: "A".into(),
            to: "T".into(),
        })
        .unwrap();
        s.apply(Edit::Merge {
            from: names(&["B"]),
            into: "NK".into(),
        })
        .unwrap();
        s.apply(Edit::Clear { cells: vec![0] }).unwrap();
        s.undo().unwrap();
        s.undo().unwrap();
        s.redo().unwrap();
        assert_eq!(s.undo().unwrap().map(|x| x.cells_changed), Some(2));
        assert!(s.undo().unwrap().is_some());
        assert_eq!(s.journal().unwrap().records(), 9);
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        assert!(
            first.contains(r#""codes":[[0,3],[1,1],[-1,2],[1,1],[0,1]]"#),
            "{first}"
        );
        let r = Journal::recover(&path).unwrap();
        assert_eq!(r.torn_lines, 0);
        assert_eq!(r.records, 9);
        assert_eq!(r.identity, identity(8));
        assert_eq!(state(&r.session), state(&s));
        assert_eq!(r.session.history(), s.history());
        assert_eq!(r.session.metadata(), s.metadata());
        // Starting a journal twice or over an existing file fails.
        assert!(matches!(
            s.start_journal(&path, identity(8)),
            Err(LabelError::JournalAlreadyAttached)
        ));
        let mut other = small();
        other.apply(assign(&[0], "A")).unwrap();
        assert!(matches!(
            other.start_journal(dir.path().join("x"), identity(6)),
            Err(LabelError::HistoryNotEmpty)
        ));
        assert!(small().start_journal(&path, identity(6)).is_err());
    }

    #[test]
    fn journal_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, path) = journaled(dir.path());
        s.apply(assign(&[0], "X")).unwrap();
        let expected = state(&s);
        s.apply(assign(&[1, 2], "Y")).unwrap();
        drop(s);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 7).unwrap();
        drop(f);
        let r = Journal::replay(&path).unwrap();
        assert_eq!(r.torn_lines, 1);
        assert_eq!(r.records, 1);
        assert_eq!(state(&r.session), expected);
        // Recover truncates the torn tail; appending afterwards stays valid.
        let mut r = Journal::recover(&path).unwrap();
        assert_eq!(r.torn_lines, 1);
        r.session.apply(assign(&[3], "Z")).unwrap();
        let live = state(&r.session);
        let again = Journal::recover(&path).unwrap();
        assert_eq!(again.torn_lines, 0);
        assert_eq!(again.records, 2);
        assert_eq!(state(&again.session), live);
    }

    #[test]
    fn journal_corrupt_middle_line() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, path) = journaled(dir.path());
        s.apply(assign(&[0], "X")).unwrap();
        s.apply(assign(&[1], "Y")).unwrap();
        s.undo().unwrap();
        drop(s);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[2] = r#"{"type":"edit","seq":2,"edit":{"op":"assi"#;
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        assert!(matches!(
            Journal::recover(&path),
            Err(LabelError::JournalMalformed { line: 3, .. })
        ));
        // Parseable but inconsistent: an undo on an empty stack.
        let lines: Vec<&str> = text.lines().collect();
        let bad = format!("{}\n{}\n", lines[0], r#"{"type":"undo","seq":1}"#);
        std::fs::write(&path, bad).unwrap();
        assert!(matches!(
            Journal::replay(&path),
            Err(LabelError::JournalMalformed { line: 2, .. })
        ));
        // Gap in sequence numbers.
        let bad = format!("{}\n{}\n", lines[0], lines[2]);
        std::fs::write(&path, bad).unwrap();
        let err = Journal::replay(&path).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            Journal::replay(&path),
            Err(LabelError::JournalMalformed { line: 1, .. })
        ));
    }

    // ---- property test against a naive reference ----

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[derive(Clone, PartialEq, Debug)]
    struct Naive {
        cats: Vec<String>,
        codes: Vec<i32>,
        sources: Vec<Source>,
    }

    impl Naive {
        fn labels(&self) -> Vec<Option<String>> {
            self.codes
                .iter()
                .map(|&c| (c >= 0).then(|| self.cats[c as usize].clone()))
                .collect()
        }
        fn set_labels(&mut self, labels: Vec<Option<String>>) {
            self.codes = labels
                .iter()
                .map(|l| match l {
                    None => -1,
                    Some(n) => self.cats.iter().position(|c| c == n).unwrap() as i32,
                })
                .collect();
        }
        fn apply(&mut self, edit: &Edit) -> bool {
            let n = self.codes.len();
            match edit {
                Edit::Assign { cells, .. } | Edit::Clear { cells } if !cells.is_empty() => {
                    if cells.iter().any(|&c| c as usize >= n) {
                        return false;
                    }
                    let label = match edit {
                        Edit::Assign { label, .. } => {
                            let l = label.trim().to_string();
                            if l.is_empty() {
                                return false;
                            }
                            Some(l)
                        }
                        _ => None,
                    };
                    let _ = label.as_ref().map(|l| {
                        if !self.cats.contains(l) {
                            self.cats.push(l.clone())
                        }
                    });
                    let mut labels = self.labels();
                    for &c in cells {
                        labels[c as usize] = label.clone();
                        self.sources[c as usize] = Source::Manual;
                    }
                    self.set_labels(labels);
                    true
                }
                Edit::Assign { .. } | Edit::Clear { .. } => false,
                Edit::Rename { from, to } => {
                    let (from, to) = (from.trim(), to.trim());
                    if from.is_empty() || to.is_empty() || self.cats.iter().any(|c| c == to) {
                        return false;
                    }
                    match self.cats.iter_mut().find(|c| *c == from) {
                        Some(c) => {
                            *c = to.to_string();
                            true
                        }
                        None => false,
                    }
                }
                Edit::Merge { from, into } => {
                    let into = into.trim().to_string();
                    let from: Vec<String> = from.iter().map(|f| f.trim().to_string()).collect();
                    if into.is_empty() || from.iter().any(|f| !self.cats.contains(f)) {
                        return false;
                    }
                    let from: Vec<String> = from.into_iter().filter(|f| *f != into).collect();
                    if from.is_empty() {
                        return false;
                    }
                    let mut labels = self.labels();
                    for (i, l) in labels.iter_mut().enumerate() {
                        if l.as_ref().is_some_and(|x| from.contains(x)) {
                            *l = Some(into.clone());
                            self.sources[i] = Source::Manual;
                        }
                    }
                    if !self.cats.contains(&into) {
                        self.cats.push(into.clone());
                    }
                    self.cats.retain(|c| !from.contains(c));
                    self.set_labels(labels);
                    true
                }
            }
        }
    }

    #[test]
    fn random_edits_match_naive_reference() {
        const N: usize = 10_000;
        let pool = [
            "T cell", "B cell", " NK ", "Mono", "DC", "Platelet", "Erythro", "  ", "pDC",
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let init_cats = names(&["T cell", "B cell", "NK", "Mono"]);
        let codes: Vec<i32> = (0..N).map(|_| rng.below(5) as i32 - 1).collect();
        let sources: Vec<Source> = (0..N)
            .map(|_| [Source::Original, Source::Model, Source::Mapped][rng.below(3) as usize])
            .collect();
        let col = LabelColumn::new(init_cats.clone(), codes.clone()).unwrap();
        let mut s = LabelSession::new(col, sources.clone(), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prop.journal");
        s.start_journal(&path, identity(N)).unwrap();
        let mut cur = Naive {
            cats: init_cats,
            codes,
            sources,
        };
        let mut undo: Vec<Naive> = Vec::new();
        let mut redo: Vec<Naive> = Vec::new();
        let (mut ok, mut failed, mut undos, mut redos) = (0, 0, 0, 0);
        let mut ok_by_kind = [0usize; 4];
        for step in 0..500 {
            let pick = |rng: &mut XorShift| pool[rng.below(pool.len() as u64) as usize].to_string();
            let cells = |rng: &mut XorShift| -> Vec<u32> {
                let k = rng.below(40);
                (0..k)
                    .map(|_| {
                        if rng.below(200) == 0 {
                            N as u32 + 3
                        } else {
                            rng.below(N as u64) as u32
                        }
                    })
                    .collect()
            };
            match rng.below(10) {
                0 | 1 => {
                    let r = s.undo().unwrap();
                    assert_eq!(r.is_some(), !undo.is_empty());
                    if let Some(prev) = undo.pop() {
                        redo.push(std::mem::replace(&mut cur, prev));
                        undos += 1;
                    }
                }
                2 => {
                    let r = s.redo().unwrap();
                    assert_eq!(r.is_some(), !redo.is_empty());
                    if let Some(next) = redo.pop() {
                        undo.push(std::mem::replace(&mut cur, next));
                        redos += 1;
                    }
                }
                op => {
                    let edit = match op {
                        3..=5 => Edit::Assign {
                            cells: cells(&mut rng),
                            label: pick(&mut rng),
                        },
                        6 => Edit::Rename {
                            from: pick(&mut rng),
                            to: pick(&mut rng),
                        },
                        7 => {
                            let k = 1 + rng.below(3);
                            Edit::Merge {
                                from: (0..k).map(|_| pick(&mut rng)).collect(),
                                into: pick(&mut rng),
                            }
                        }
                        _ => Edit::Clear {
                            cells: cells(&mut rng),
                        },
                    };
                    let mut next = cur.clone();
                    let naive_ok = next.apply(&edit);
                    let real = s.apply(edit.clone());
                    assert_eq!(real.is_ok(), naive_ok, "step {step}: {edit:?} -> {real:?}");
                    if naive_ok {
                        undo.push(std::mem::replace(&mut cur, next));
                        redo.clear();
                        ok += 1;
                        ok_by_kind[match edit {
                            Edit::Assign { .. } => 0,
                            Edit::Rename { .. } => 1,
                            Edit::Merge { .. } => 2,
                            Edit::Clear { .. } => 3,
                        }] += 1;
                    } else {
                        failed += 1;
                    }
                }
            }
            assert_eq!(s.column().categories(), &cur.cats[..], "step {step}");
            assert_eq!(s.column().codes(), &cur.codes[..], "step {step}");
            assert_eq!(s.sources(), &cur.sources[..], "step {step}");
            assert_eq!((s.undo_len(), s.redo_len()), (undo.len(), redo.len()));
        }
        assert!(
            ok > 100 && failed > 10 && undos > 30 && redos > 10,
            "{ok} {failed} {undos} {redos}"
        );
        assert!(ok_by_kind.iter().all(|&k| k >= 3), "{ok_by_kind:?}");
        let r = Journal::recover(&path).unwrap();
        assert_eq!(state(&r.session), state(&s));
        assert_eq!(r.session.history(), s.history());
    }

    #[test]
    fn million_cells_inverse_is_proportional_to_touched_cells() {
        const N: usize = 1_000_000;
        let codes: Vec<i32> = (0..N).map(|i| (i % 7) as i32 - 1).collect();
        let cats = names(&["a", "b", "c", "d", "e", "f"]);
        let col = LabelColumn::new(cats, codes).unwrap();
        let initial = col.clone();
        let mut s = LabelSession::with_source(col, Source::Model, None);
        let mut rng = XorShift(42);
        let mut touched = 0usize;
        for i in 0..1000 {
            let start = rng.below((N - 200) as u64) as u32;
            let cells: Vec<u32> = (0..100).map(|k| start + 2 * k).collect();
            let label = format!("L{}", i % 20);
            touched += s
                .apply(Edit::Assign { cells, label })
                .unwrap()
                .cells_changed;
        }
        let bytes = s.history_heap_bytes();
        // Per touched cell: 4 (edit cell) + 4 (cell) + 4 (code) + 1 (source);
        // plus a small constant per edit.  A column clone would be 5 MB per edit.
        let per_edit = std::mem::size_of::<Applied>() + 64;
        assert!(touched > 90_000, "{touched}");
        assert!(bytes <= 1000 * 100 * 13 + 1000 * per_edit, "bytes {bytes}");
        assert!(bytes >= touched * 9, "bytes {bytes}");
        assert!(bytes < N * 5, "must be far below one column clone: {bytes}");
        while s.undo().unwrap().is_some() {}
        assert_eq!(s.to_column(), initial);
        assert!(s.sources().iter().all(|&x| x == Source::Model));
    }
}
