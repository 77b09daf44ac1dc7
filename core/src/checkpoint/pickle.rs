//! A restricted, non-executing pickle virtual machine for `torch.save` `data.pkl` streams.
//!
//! Python's pickle format is a small stack language whose `GLOBAL`/`REDUCE` opcodes import and
//! call arbitrary Python callables, which is how a malicious checkpoint runs code. This VM never
//! calls anything: it understands the handful of opcodes that `torch.save` emits (protocol 2,
//! plus the protocol 3–5 framing/string/memo opcodes), resolves `GLOBAL`/`STACK_GLOBAL` against a
//! fixed allow-list ([`resolve_global`]) and models the few allowed callables symbolically
//! (an `OrderedDict` is a dict, `_rebuild_tensor_v2(...)` is a tensor *description*). Any other
//! global fails with [`PtError::ForbiddenGlobal`] at the opcode that names it; any other opcode
//! fails with [`PtError::UnsupportedOpcode`].
//!
//! Resource use is bounded by the input: strings, bytes and tuples are reference counted so memo
//! lookups (`BINGET`) never copy data, lists and dicts live in an arena and are referred to by
//! index (so mutation after memoisation behaves as in Python and cycles cannot leak), and the
//! stack, mark stack and memo have hard caps. [`flatten`] walks the result with a depth limit and
//! a node budget, so shared or cyclic structures cannot blow up.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use super::pt::{PtDtype, PtError};

/// Most values the pickle stack may hold at once.
const MAX_STACK: usize = 1 << 22;
/// Most memo entries.
const MAX_MEMO: usize = 1 << 22;
/// Deepest nesting of `MARK`s.
const MAX_MARKS: usize = 1 << 16;
/// Longest `GLOBAL` module or name line.
const MAX_GLOBAL_LINE: usize = 512;
/// Deepest container nesting [`flatten`] follows (also stops reference cycles).
const MAX_DEPTH: usize = 64;
/// Most container/leaf visits [`flatten`] makes (stops exponential sharing).
const MAX_VISITS: usize = 1 << 21;

/// A callable or class the pickle is allowed to name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    /// `collections.OrderedDict`
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state`
    RebuildParameterWithState,
    /// `torch.FloatStorage` and friends (only meaningful inside a persistent id).
    Storage(PtDtype),
    /// `torch.float32` and friends.
    Dtype(PtDtype),
}

impl Global {
    fn describe(self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".to_owned(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".to_owned(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".to_owned(),
            Global::RebuildParameterWithState => {
                "torch._utils._rebuild_parameter_with_state".to_owned()
            }
            Global::Storage(dt) => format!("torch.{}", dt.storage_name()),
            Global::Dtype(dt) => format!("torch.{}", dt.torch_name()),
        }
    }
}

/// Resolves a `GLOBAL` reference against the allow-list. Anything else is refused here, before
/// the pickle can do anything with it.
pub(crate) fn resolve_global(module: &str, name: &str) -> Result<Global, PtError> {
    let found = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("torch", n) => PtDtype::from_storage_name(n)
            .map(Global::Storage)
            .or_else(|| PtDtype::from_torch_name(n).map(Global::Dtype)),
        _ => None,
    };
    found.ok_or_else(|| PtError::ForbiddenGlobal {
        module: module.to_owned(),
        name: name.to_owned(),
    })
}

/// The persistent id of a storage: `('storage', torch.FloatStorage, '0', 'cpu', 6)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    pub dtype: PtDtype,
    pub key: Rc<str>,
    pub numel: u64,
}

/// What `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)` describes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// A value on the VM stack. Cloning is cheap (reference counts or arena indices).
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    /// Index into [`Unpickled::containers`]. Tuples live in the arena too, so no value owns
    /// another and dropping a deeply nested structure cannot overflow the stack.
    Tuple(usize),
    /// Index into [`Unpickled::containers`].
    List(usize),
    /// Index into [`Unpickled::containers`] (plain dict or `OrderedDict`).
    Dict(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global reference",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// A container created by the pickle (tuples are immutable, lists and dicts are not).
#[derive(Debug)]
pub(crate) enum Container {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

/// The result of running a pickle: the object `STOP` returned plus the container arena.
#[derive(Debug)]
pub(crate) struct Unpickled {
    pub root: Value,
    pub containers: Vec<Container>,
}

// Opcode bytes (see CPython's Lib/pickletools.py for the authoritative list).
mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const PERSID: u8 = b'P';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const INST: u8 = b'i';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const OBJ: u8 = b'o';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const EXT1: u8 = 0x82;
    pub const EXT2: u8 = 0x83;
    pub const EXT4: u8 = 0x84;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
}

/// The pickletools name of an opcode byte, for error messages.
pub(crate) fn opcode_name(code: u8) -> &'static str {
    match code {
        op::MARK => "MARK",
        op::STOP => "STOP",
        op::POP => "POP",
        op::POP_MARK => "POP_MARK",
        op::DUP => "DUP",
        op::FLOAT => "FLOAT",
        op::INT => "INT",
        op::BININT => "BININT",
        op::BININT1 => "BININT1",
        op::LONG => "LONG",
        op::BININT2 => "BININT2",
        op::NONE => "NONE",
        op::PERSID => "PERSID",
        op::BINPERSID => "BINPERSID",
        op::REDUCE => "REDUCE",
        op::STRING => "STRING",
        op::BINSTRING => "BINSTRING",
        op::SHORT_BINSTRING => "SHORT_BINSTRING",
        op::UNICODE => "UNICODE",
        op::BINUNICODE => "BINUNICODE",
        op::APPEND => "APPEND",
        op::BUILD => "BUILD",
        op::GLOBAL => "GLOBAL",
        op::DICT => "DICT",
        op::EMPTY_DICT => "EMPTY_DICT",
        op::APPENDS => "APPENDS",
        op::GET => "GET",
        op::BINGET => "BINGET",
        op::INST => "INST",
        op::LONG_BINGET => "LONG_BINGET",
        op::LIST => "LIST",
        op::EMPTY_LIST => "EMPTY_LIST",
        op::OBJ => "OBJ",
        op::PUT => "PUT",
        op::BINPUT => "BINPUT",
        op::LONG_BINPUT => "LONG_BINPUT",
        op::SETITEM => "SETITEM",
        op::TUPLE => "TUPLE",
        op::EMPTY_TUPLE => "EMPTY_TUPLE",
        op::SETITEMS => "SETITEMS",
        op::BINFLOAT => "BINFLOAT",
        op::PROTO => "PROTO",
        op::NEWOBJ => "NEWOBJ",
        op::EXT1 => "EXT1",
        op::EXT2 => "EXT2",
        op::EXT4 => "EXT4",
        op::TUPLE1 => "TUPLE1",
        op::TUPLE2 => "TUPLE2",
        op::TUPLE3 => "TUPLE3",
        op::NEWTRUE => "NEWTRUE",
        op::NEWFALSE => "NEWFALSE",
        op::LONG1 => "LONG1",
        op::LONG4 => "LONG4",
        op::BINBYTES => "BINBYTES",
        op::SHORT_BINBYTES => "SHORT_BINBYTES",
        op::SHORT_BINUNICODE => "SHORT_BINUNICODE",
        op::BINUNICODE8 => "BINUNICODE8",
        op::BINBYTES8 => "BINBYTES8",
        op::EMPTY_SET => "EMPTY_SET",
        op::ADDITEMS => "ADDITEMS",
        op::FROZENSET => "FROZENSET",
        op::NEWOBJ_EX => "NEWOBJ_EX",
        op::STACK_GLOBAL => "STACK_GLOBAL",
        op::MEMOIZE => "MEMOIZE",
        op::FRAME => "FRAME",
        op::BYTEARRAY8 => "BYTEARRAY8",
        op::NEXT_BUFFER => "NEXT_BUFFER",
        op::READONLY_BUFFER => "READONLY_BUFFER",
        _ => "not a pickle opcode",
    }
}

/// Runs the restricted VM over a complete `data.pkl` byte stream.
pub(crate) fn unpickle(data: &[u8], entry: &str) -> Result<Unpickled, PtError> {
    Vm {
        data,
        entry,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        containers: Vec::new(),
    }
    .run()
}

struct Vm<'a> {
    data: &'a [u8],
    entry: &'a str,
    pos: usize,
    /// Offset of the opcode being executed (for messages).
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    containers: Vec<Container>,
}

impl<'a> Vm<'a> {
    fn malformed(&self, what: impl std::fmt::Display) -> PtError {
        PtError::Malformed(format!("{} (byte {}): {what}", self.entry, self.op_pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PtError> {
        let data: &'a [u8] = self.data;
        let end = self.pos.checked_add(n);
        match end.and_then(|end| data.get(self.pos..end)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(PtError::Truncated(format!(
                "{} ends at byte {} in the middle of a {} opcode (file cut short?)",
                self.entry,
                data.len(),
                opcode_name(data.get(self.op_pos).copied().unwrap_or(0)),
            ))),
        }
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], PtError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn take_u8(&mut self) -> Result<u8, PtError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn take_u32(&mut self) -> Result<u32, PtError> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn take_len_u64(&mut self) -> Result<usize, PtError> {
        let n = u64::from_le_bytes(self.take_array()?);
        // A length beyond the address space is necessarily beyond the input, i.e. truncated.
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn take_line(&mut self) -> Result<&'a str, PtError> {
        let data: &'a [u8] = self.data;
        let rest = data.get(self.pos..).unwrap_or_default();
        let limit = rest.len().min(MAX_GLOBAL_LINE + 1);
        let Some(len) = rest.iter().take(limit).position(|&b| b == b'\n') else {
            if rest.len() <= MAX_GLOBAL_LINE {
                return Err(PtError::Truncated(format!(
                    "{} ends at byte {} inside a GLOBAL opcode (file cut short?)",
                    self.entry,
                    data.len()
                )));
            }
            return Err(self.malformed("GLOBAL module or name longer than 512 bytes"));
        };
        let line = self.take(len)?;
        self.pos += 1; // the newline
        std::str::from_utf8(line).map_err(|_| self.malformed("GLOBAL name is not valid UTF-8"))
    }

    fn take_str(&mut self, len: usize) -> Result<Value, PtError> {
        let bytes = self.take(len)?;
        let s =
            std::str::from_utf8(bytes).map_err(|_| self.malformed("string is not valid UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn take_bytes(&mut self, len: usize) -> Result<Value, PtError> {
        let bytes = self.take(len)?;
        Ok(Value::Bytes(Rc::from(bytes)))
    }

    fn push(&mut self, v: Value) -> Result<(), PtError> {
        if self.stack.len() >= MAX_STACK {
            return Err(PtError::TooLarge {
                what: format!("{} pickle stack", self.entry),
                size: self.stack.len() as u64 + 1,
                limit: MAX_STACK as u64,
            });
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PtError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("pickle stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("pickle stack underflow"))
    }

    fn top(&self) -> Result<&Value, PtError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("pickle stack underflow"));
        }
        self.stack
            .last()
            .ok_or_else(|| self.malformed("pickle stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PtError> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.malformed("no MARK on the stack"));
        };
        if mark > self.stack.len() {
            return Err(self.malformed("MARK points past the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PtError> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err(PtError::TooLarge {
                what: format!("{} pickle memo", self.entry),
                size: self.memo.len() as u64 + 1,
                limit: MAX_MEMO as u64,
            });
        }
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PtError> {
        let v =
            self.memo.get(&key).cloned().ok_or_else(|| {
                self.malformed(format!("memo slot {key} read before it was written"))
            })?;
        self.push(v)
    }

    fn new_container(&mut self, c: Container) -> usize {
        self.containers.push(c);
        self.containers.len() - 1
    }

    fn list_mut(&mut self, target: &Value) -> Result<&mut Vec<Value>, PtError> {
        let err = self.malformed(format!("APPEND(S) applied to a {}", target.kind()));
        match target {
            Value::List(id) => match self.containers.get_mut(*id) {
                Some(Container::List(items)) => Ok(items),
                _ => Err(err),
            },
            _ => Err(err),
        }
    }

    fn dict_mut(&mut self, target: &Value) -> Result<&mut Vec<(Value, Value)>, PtError> {
        let err = self.malformed(format!("SETITEM(S) applied to a {}", target.kind()));
        match target {
            Value::Dict(id) => match self.containers.get_mut(*id) {
                Some(Container::Dict(items)) => Ok(items),
                _ => Err(err),
            },
            _ => Err(err),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PtError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("odd number of items for a dict"));
        }
        let target = self.top()?.clone();
        let dict = self.dict_mut(&target)?;
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            dict.push((k, v));
        }
        Ok(())
    }

    fn run(mut self) -> Result<Unpickled, PtError> {
        loop {
            self.op_pos = self.pos;
            let Some(&code) = self.data.get(self.pos) else {
                return Err(PtError::Truncated(format!(
                    "{} ends at byte {} without a STOP opcode (file cut short?)",
                    self.entry,
                    self.data.len()
                )));
            };
            self.pos += 1;
            match code {
                op::PROTO => {
                    let v = self.take_u8()?;
                    if v > 5 {
                        return Err(self.malformed(format!("unsupported pickle protocol {v}")));
                    }
                }
                op::FRAME => {
                    // Framing is only a read-ahead hint; the frame contents follow inline.
                    self.take(8)?;
                }
                op::STOP => {
                    let root = self.pop()?;
                    return Ok(Unpickled {
                        root,
                        containers: self.containers,
                    });
                }
                op::MARK => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(PtError::TooLarge {
                            what: format!("{} MARK nesting", self.entry),
                            size: self.marks.len() as u64 + 1,
                            limit: MAX_MARKS as u64,
                        });
                    }
                    self.marks.push(self.stack.len());
                }
                op::POP => {
                    self.pop()?;
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::DUP => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                op::NONE => self.push(Value::None)?,
                op::NEWTRUE => self.push(Value::Bool(true))?,
                op::NEWFALSE => self.push(Value::Bool(false))?,
                op::BININT => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::BININT1 => {
                    let v = self.take_u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::LONG1 => {
                    let n = usize::from(self.take_u8()?);
                    let bytes = self.take(n)?;
                    let v = long_from_le(bytes).ok_or_else(|| {
                        self.malformed(format!("integer of {n} bytes does not fit in 64 bits"))
                    })?;
                    self.push(Value::Int(v))?;
                }
                op::BINFLOAT => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Value::Float(v))?;
                }
                op::BINUNICODE => {
                    let n = self.take_u32()? as usize;
                    let v = self.take_str(n)?;
                    self.push(v)?;
                }
                op::SHORT_BINUNICODE => {
                    let n = usize::from(self.take_u8()?);
                    let v = self.take_str(n)?;
                    self.push(v)?;
                }
                op::BINUNICODE8 => {
                    let n = self.take_len_u64()?;
                    let v = self.take_str(n)?;
                    self.push(v)?;
                }
                op::SHORT_BINBYTES => {
                    let n = usize::from(self.take_u8()?);
                    let v = self.take_bytes(n)?;
                    self.push(v)?;
                }
                op::BINBYTES => {
                    let n = self.take_u32()? as usize;
                    let v = self.take_bytes(n)?;
                    self.push(v)?;
                }
                op::BINBYTES8 => {
                    let n = self.take_len_u64()?;
                    let v = self.take_bytes(n)?;
                    self.push(v)?;
                }
                op::EMPTY_TUPLE => {
                    let id = self.new_container(Container::Tuple(Vec::new()));
                    self.push(Value::Tuple(id))?;
                }
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    let id = self.new_container(Container::Tuple(items));
                    self.push(Value::Tuple(id))?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(code - op::TUPLE1) + 1;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let id = self.new_container(Container::Tuple(items));
                    self.push(Value::Tuple(id))?;
                }
                op::EMPTY_LIST => {
                    let id = self.new_container(Container::List(Vec::new()));
                    self.push(Value::List(id))?;
                }
                op::LIST => {
                    let items = self.pop_mark()?;
                    let id = self.new_container(Container::List(items));
                    self.push(Value::List(id))?;
                }
                op::APPEND => {
                    let v = self.pop()?;
                    let target = self.top()?.clone();
                    self.list_mut(&target)?.push(v);
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.list_mut(&target)?.extend(items);
                }
                op::EMPTY_DICT => {
                    let id = self.new_container(Container::Dict(Vec::new()));
                    self.push(Value::Dict(id))?;
                }
                op::DICT => {
                    let items = self.pop_mark()?;
                    let id = self.new_container(Container::Dict(Vec::new()));
                    self.push(Value::Dict(id))?;
                    self.set_items(items)?;
                }
                op::SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                op::BINPUT => {
                    let key = u32::from(self.take_u8()?);
                    self.memo_put(key)?;
                }
                op::LONG_BINPUT => {
                    let key = self.take_u32()?;
                    self.memo_put(key)?;
                }
                op::MEMOIZE => {
                    let key = u32::try_from(self.memo.len())
                        .map_err(|_| self.malformed("memo overflow"))?;
                    self.memo_put(key)?;
                }
                op::BINGET => {
                    let key = u32::from(self.take_u8()?);
                    self.memo_get(key)?;
                }
                op::LONG_BINGET => {
                    let key = self.take_u32()?;
                    self.memo_get(key)?;
                }
                op::GLOBAL => {
                    let module = self.take_line()?;
                    let name = self.take_line()?;
                    let g = resolve_global(module, name)?;
                    self.push(Value::Global(g))?;
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return Err(self.malformed(format!(
                            "STACK_GLOBAL needs two strings, got {} and {}",
                            module.kind(),
                            name.kind()
                        )));
                    };
                    let g = resolve_global(module, name)?;
                    self.push(Value::Global(g))?;
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(&func, &args)?;
                    self.push(v)?;
                }
                op::NEWOBJ => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let no_args = self.tuple_items(&args).is_some_and(<[Value]>::is_empty);
                    let v = match &cls {
                        Value::Global(Global::OrderedDict) if no_args => {
                            let id = self.new_container(Container::Dict(Vec::new()));
                            Value::Dict(id)
                        }
                        _ => {
                            return Err(self.malformed(format!(
                                "NEWOBJ on {} is not supported",
                                describe(&cls)
                            )));
                        }
                    };
                    self.push(v)?;
                }
                op::BUILD => {
                    let state = self.pop()?;
                    match self.top()? {
                        // `state_dict()._metadata` arrives as OrderedDict state; it only holds
                        // module version numbers, so it is accepted and dropped.
                        Value::Dict(_) => {}
                        other => {
                            return Err(self.malformed(format!(
                                "BUILD (setting object state from a {}) on a {} is not supported",
                                state.kind(),
                                other.kind()
                            )));
                        }
                    }
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(&pid)?;
                    self.push(Value::Storage(Rc::new(storage)))?;
                }
                other => return Err(PtError::UnsupportedOpcode(other)),
            }
        }
    }

    /// `('storage', storage_type, key, location, numel)`
    fn persistent_load(&self, pid: &Value) -> Result<StorageRef, PtError> {
        let bad = |why: &str| self.malformed(format!("bad persistent id: {why}"));
        let Some(items) = self.tuple_items(pid) else {
            return Err(bad(&format!("expected a tuple, got a {}", pid.kind())));
        };
        let [tag, ty, key, _location, numel] = items else {
            return Err(bad(&format!("expected 5 fields, got {}", items.len())));
        };
        match tag {
            Value::Str(s) if &**s == "storage" => {}
            _ => return Err(bad("first field is not 'storage'")),
        }
        let dtype = match ty {
            Value::Global(Global::Storage(dt)) => *dt,
            other => {
                return Err(bad(&format!(
                    "storage type is {}, not a torch storage class",
                    describe(other)
                )));
            }
        };
        let Value::Str(key) = key else {
            return Err(bad("storage key is not a string"));
        };
        if key.is_empty()
            || key.len() > 64
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(bad(&format!(
                "storage key {key:?} is not a plain record name"
            )));
        }
        let numel = match numel {
            Value::Int(n) => u64::try_from(*n).map_err(|_| bad("negative storage size"))?,
            _ => return Err(bad("storage size is not an integer")),
        };
        Ok(StorageRef {
            dtype,
            key: key.clone(),
            numel,
        })
    }

    fn reduce(&mut self, func: &Value, args: &Value) -> Result<Value, PtError> {
        let Value::Global(g) = func else {
            return Err(self.malformed(format!("REDUCE called a {}", func.kind())));
        };
        let Some(args) = self.tuple_items(args) else {
            return Err(self.malformed(format!(
                "REDUCE arguments for {} are a {}, not a tuple",
                g.describe(),
                args.kind()
            )));
        };
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.malformed("OrderedDict(...) with arguments is not supported"));
                }
                let id = self.new_container(Container::Dict(Vec::new()));
                Ok(Value::Dict(id))
            }
            Global::RebuildTensorV2 => self.rebuild_tensor(args),
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let want = if *g == Global::RebuildParameter { 3 } else { 4 };
                if args.len() != want {
                    return Err(self.malformed(format!(
                        "{} takes {want} arguments, got {}",
                        g.describe(),
                        args.len()
                    )));
                }
                match args.first() {
                    Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                    other => Err(self.malformed(format!(
                        "{} wraps a {}, not a tensor",
                        g.describe(),
                        other.map_or("nothing", Value::kind)
                    ))),
                }
            }
            Global::Storage(_) | Global::Dtype(_) => {
                Err(self.malformed(format!("{} cannot be called here", g.describe())))
            }
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
    /// backward_hooks[, metadata])`
    fn rebuild_tensor(&self, args: &[Value]) -> Result<Value, PtError> {
        let bad = |why: String| self.malformed(format!("_rebuild_tensor_v2: {why}"));
        if !(6..=7).contains(&args.len()) {
            return Err(bad(format!(
                "expected 6 or 7 arguments, got {}",
                args.len()
            )));
        }
        let (storage, offset, size, stride) = match args {
            [s, o, sz, st, ..] => (s, o, sz, st),
            _ => return Err(bad("missing arguments".to_owned())),
        };
        let Value::Storage(storage) = storage else {
            return Err(bad(format!("storage argument is a {}", storage.kind())));
        };
        let offset = match offset {
            Value::Int(n) => {
                u64::try_from(*n).map_err(|_| bad("negative storage offset".into()))?
            }
            other => return Err(bad(format!("storage offset is a {}", other.kind()))),
        };
        let shape = self
            .int_tuple(size)
            .map_err(|why| bad(format!("size {why}")))?;
        let stride = self
            .int_tuple(stride)
            .map_err(|why| bad(format!("stride {why}")))?;
        if shape.len() != stride.len() {
            return Err(bad(format!(
                "size has {} dimensions but stride has {}",
                shape.len(),
                stride.len()
            )));
        }
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage: storage.clone(),
            offset,
            shape,
            stride,
        })))
    }
}

impl Vm<'_> {
    fn tuple_items(&self, v: &Value) -> Option<&[Value]> {
        match v {
            Value::Tuple(id) => match self.containers.get(*id) {
                Some(Container::Tuple(items)) => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    /// A tuple of non-negative ints (a shape or stride).
    fn int_tuple(&self, v: &Value) -> Result<Vec<u64>, String> {
        let Some(items) = self.tuple_items(v) else {
            return Err(format!("is a {}, not a tuple", v.kind()));
        };
        if items.len() > 64 {
            return Err(format!(
                "has {} dimensions (at most 64 supported)",
                items.len()
            ));
        }
        items
            .iter()
            .map(|item| match item {
                Value::Int(n) => u64::try_from(*n).map_err(|_| format!("has a negative entry {n}")),
                other => Err(format!("has a {} entry", other.kind())),
            })
            .collect()
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Global(g) => g.describe(),
        other => format!("a {}", other.kind()),
    }
}

/// Decodes a little-endian two's-complement integer of up to 8 bytes (pickle `LONG1`).
fn long_from_le(bytes: &[u8]) -> Option<i64> {
    if bytes.len() > 8 {
        return None;
    }
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
    Some(i64::from_le_bytes(buf))
}

/// What [`flatten`] found: tensors and scalar metadata, in pickle order, with dotted names.
#[derive(Debug, Default)]
pub(crate) struct Flattened {
    pub tensors: Vec<(String, Rc<TensorRef>)>,
    pub metadata: Vec<(String, String)>,
}

/// Walks the unpickled object, naming each tensor by its dotted path (`model.encoder.weight`).
/// Dicts, lists and tuples are descended (list items are named by index); scalar leaves are
/// recorded as metadata; raw storages and class references are skipped.
pub(crate) fn flatten(u: &Unpickled) -> Result<Flattened, PtError> {
    let mut w = Walker {
        containers: &u.containers,
        out: Flattened::default(),
        seen: HashSet::new(),
        visits: 0,
    };
    w.walk(String::new(), &u.root, 0)?;
    Ok(w.out)
}

struct Walker<'a> {
    containers: &'a [Container],
    out: Flattened,
    /// Every name emitted so far, to catch two paths flattening to the same name.
    seen: HashSet<String>,
    visits: usize,
}

impl Walker<'_> {
    fn claim(&mut self, name: &str) -> Result<(), PtError> {
        if self.seen.insert(name.to_owned()) {
            Ok(())
        } else {
            Err(PtError::Malformed(format!(
                "two entries in the checkpoint flatten to the same name {name:?}"
            )))
        }
    }

    fn walk(&mut self, name: String, v: &Value, depth: usize) -> Result<(), PtError> {
        self.visits += 1;
        if self.visits > MAX_VISITS {
            return Err(PtError::TooLarge {
                what: "number of objects reachable in the checkpoint (shared references?)"
                    .to_owned(),
                size: self.visits as u64,
                limit: MAX_VISITS as u64,
            });
        }
        if depth > MAX_DEPTH {
            return Err(PtError::Malformed(format!(
                "checkpoint nests deeper than {MAX_DEPTH} levels at {name:?} (reference cycle?)"
            )));
        }
        let child = |key: &str| {
            if name.is_empty() {
                key.to_owned()
            } else {
                format!("{name}.{key}")
            }
        };
        match v {
            Value::Tensor(t) => {
                self.claim(&name)?;
                self.out.tensors.push((name, t.clone()));
            }
            Value::Dict(id) => {
                let Some(Container::Dict(items)) = self.containers.get(*id) else {
                    return Err(PtError::Malformed(format!(
                        "dangling dict reference at {name:?}"
                    )));
                };
                // Python dict semantics: a repeated key overwrites the value in place.
                let mut order: Vec<(String, &Value)> = Vec::new();
                let mut index: HashMap<String, usize> = HashMap::new();
                for (k, val) in items {
                    let key = key_name(self.containers, k).ok_or_else(|| {
                        PtError::Malformed(format!(
                            "dict at {name:?} has a key of type {}",
                            k.kind()
                        ))
                    })?;
                    match index.entry(key) {
                        Entry::Occupied(slot) => {
                            if let Some(entry) = order.get_mut(*slot.get()) {
                                entry.1 = val;
                            }
                        }
                        Entry::Vacant(slot) => {
                            order.push((slot.key().clone(), val));
                            slot.insert(order.len() - 1);
                        }
                    }
                }
                for (key, val) in order {
                    self.walk(child(&key), val, depth + 1)?;
                }
            }
            Value::List(id) => {
                let Some(Container::List(items)) = self.containers.get(*id) else {
                    return Err(PtError::Malformed(format!(
                        "dangling list reference at {name:?}"
                    )));
                };
                for (i, val) in items.iter().enumerate() {
                    self.walk(child(&i.to_string()), val, depth + 1)?;
                }
            }
            Value::Tuple(id) => {
                let Some(Container::Tuple(items)) = self.containers.get(*id) else {
                    return Err(PtError::Malformed(format!(
                        "dangling tuple reference at {name:?}"
                    )));
                };
                for (i, val) in items.iter().enumerate() {
                    self.walk(child(&i.to_string()), val, depth + 1)?;
                }
            }
            Value::None
            | Value::Bool(_)
            | Value::Int(_)
            | Value::Float(_)
            | Value::Str(_)
            | Value::Bytes(_) => {
                let text = scalar_text(v).unwrap_or_default();
                self.claim(&name)?;
                self.out.metadata.push((name, text));
            }
            Value::Global(Global::Dtype(dt)) => {
                self.claim(&name)?;
                self.out
                    .metadata
                    .push((name, format!("torch.{}", dt.torch_name())));
            }
            Value::Global(_) | Value::Storage(_) => {}
        }
        Ok(())
    }
}

/// Python-like text of a scalar.
fn scalar_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::None => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Int(n) => n.to_string(),
        Value::Float(x) => format!("{x:?}"),
        Value::Str(s) => s.to_string(),
        Value::Bytes(b) => format!("<{} bytes>", b.len()),
        _ => return None,
    })
}

/// The name a dict key contributes to a flattened path.
fn key_name(containers: &[Container], k: &Value) -> Option<String> {
    match k {
        Value::Tuple(id) => {
            let Some(Container::Tuple(items)) = containers.get(*id) else {
                return None;
            };
            let parts: Option<Vec<String>> = items.iter().map(scalar_text).collect();
            Some(format!("({})", parts?.join(", ")))
        }
        Value::Bytes(_) => None,
        other => scalar_text(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Unpickled, PtError> {
        unpickle(bytes, "data.pkl")
    }

    #[test]
    fn long1_sign_extension() {
        assert_eq!(long_from_le(&[]), Some(0));
        assert_eq!(long_from_le(&[0xff]), Some(-1));
        assert_eq!(long_from_le(&[0x00, 0x01]), Some(256));
        assert_eq!(long_from_le(&[0x80, 0x00]), Some(128));
        assert_eq!(long_from_le(&[0; 9]), None);
    }

    #[test]
    fn forbidden_global_is_refused_at_the_opcode() {
        // GLOBAL 'posix system' then garbage that would fail if reached.
        let err = run(b"\x80\x02cposix\nsystem\n\xff").unwrap_err();
        match err {
            PtError::ForbiddenGlobal { module, name } => {
                assert_eq!((module.as_str(), name.as_str()), ("posix", "system"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stack_global_is_checked_too() {
        let err = run(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.").unwrap_err();
        assert!(
            matches!(&err, PtError::ForbiddenGlobal { module, name } if module == "builtins" && name == "eval")
        );
    }

    #[test]
    fn unsupported_opcode_named() {
        let err = run(b"\x80\x02(i__main__\nX\n.").unwrap_err();
        assert!(matches!(err, PtError::UnsupportedOpcode(b'i')));
        assert!(err.to_string().contains("INST"), "{err}");
    }

    #[test]
    fn truncated_stream() {
        let err = run(b"\x80\x02X\x10\x00\x00\x00abc").unwrap_err();
        assert!(matches!(err, PtError::Truncated(_)), "{err:?}");
        let err = run(b"\x80\x02}").unwrap_err();
        assert!(matches!(err, PtError::Truncated(_)), "{err:?}");
    }

    #[test]
    fn memo_shares_mutable_dicts() {
        // d = {}; memo[0] = d; d['a'] = 1; [d, memo[0]]
        let u = run(b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s(h\x00h\x00l.").unwrap();
        let Value::List(id) = u.root else { panic!() };
        let Some(Container::List(items)) = u.containers.get(id) else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        for item in items {
            let Value::Dict(d) = item else { panic!() };
            let Some(Container::Dict(kv)) = u.containers.get(*d) else {
                panic!()
            };
            assert_eq!(kv.len(), 1);
        }
    }

    #[test]
    fn cycles_are_caught_by_flatten() {
        // d = {}; d['x'] = d
        let u = run(b"\x80\x02}q\x00X\x01\x00\x00\x00xh\x00s.").unwrap();
        let err = flatten(&u).unwrap_err();
        assert!(err.to_string().contains("deeper"), "{err}");
    }

    #[test]
    fn deeply_nested_tuples_do_not_overflow_the_stack() {
        // (((...(None,)...),),) a million levels deep: building and dropping it must not
        // recurse, and flattening stops at the depth limit.
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        p.push(b'.');
        let u = run(&p).unwrap();
        let err = flatten(&u).unwrap_err();
        assert!(err.to_string().contains("deeper"), "{err}");
        drop(u);
    }

    #[test]
    fn exponential_sharing_is_bounded() {
        // l0 = [1]; l(i+1) = [li, li] ... 40 levels: 2^40 leaves if walked naively.
        let mut p = b"\x80\x02(K\x01lq\x00".to_vec();
        for i in 0..40u8 {
            p.extend_from_slice(&[b'(', b'h', i, b'h', i, b'l', b'q', i + 1]);
        }
        p.push(b'.');
        let u = run(&p).unwrap();
        let err = flatten(&u).unwrap_err();
        assert!(matches!(err, PtError::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn duplicate_keys_overwrite_in_place() {
        // {'a': 1, 'b': 2, 'a': 3}
        let u = run(
            b"\x80\x02}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bK\x02X\x01\x00\x00\x00aK\x03u.",
        )
        .unwrap();
        let f = flatten(&u).unwrap();
        assert_eq!(
            f.metadata,
            vec![
                ("a".to_owned(), "3".to_owned()),
                ("b".to_owned(), "2".to_owned())
            ]
        );
    }

    #[test]
    fn underflow_across_mark_is_an_error() {
        let err = run(b"\x80\x02K\x01(s.").unwrap_err();
        assert!(matches!(err, PtError::Malformed(_)), "{err:?}");
    }
}
