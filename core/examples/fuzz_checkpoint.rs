//! Mutation fuzzer for the PyTorch checkpoint reader (`checkpoint::pt`), the code cellforge
//! writes itself to read untrusted `torch.save` zips and their pickles.
//!
//! Seeds: every `.pt` under `core/tests/fixtures/pt` (hand-made hostile files) and the real
//! scgpt checkpoints under `tests/fixtures` (torch.save of real models). Each case is one
//! seed with 1-4 mutations:
//! - zip-aware: the pickle entry (`*/data.pkl`) or a tensor entry is mutated in place (bit
//!   flips, interesting bytes, interesting little-endian integers, byte-range copies) and its
//!   CRC-32 is fixed in the local header, the data descriptor and the central directory, so
//!   the mutation reaches the pickle machine instead of stopping at the zip checksum;
//! - raw: bit flips, truncation, deletion, duplication and interesting integers anywhere
//!   (zip headers, central directory, sizes and offsets).
//!
//! Every case runs under `catch_unwind`; a panic is a finding: the input is saved under
//! `--crashes DIR` and counted. An allocation the limits should have refused would abort the
//! process (run it under `ulimit -v` to make that visible rather than swapping).
//!
//! Usage: `cargo run --release -p cellforge-core --example fuzz_checkpoint -- [--seconds 600]
//! [--seed 1] [--crashes DIR]`. Prints a summary line per 10 s and a final JSON line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cellforge_core::checkpoint::pt::{PtCheckpoint, PtLimits};

/// splitmix64: small, seedable, good enough for choosing mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    u64::MAX - 1,
];

/// A zip entry: where its data lies and where its CRC fields are.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    data: std::ops::Range<usize>,
    /// CRC fields to keep in step: the local header's, the data descriptor's (torch.save
    /// writes sizes and CRC after the data, flag bit 3) and the central directory's.
    crc_at: Vec<usize>,
}

fn u16_at(b: &[u8], i: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?) as usize)
}

fn u32_at(b: &[u8], i: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize)
}

/// Stored (uncompressed) entries of a zip, found through the central directory (the local
/// headers of torch.save archives carry zero sizes).
fn entries(b: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    // End of central directory: the last "PK\x05\x06" within the final 64 KiB + 22 bytes.
    let lo = b.len().saturating_sub(65_557);
    let Some(eocd) = (lo..b.len().saturating_sub(21))
        .rev()
        .find(|&i| b.get(i..i + 4) == Some(b"PK\x05\x06"))
    else {
        return out;
    };
    let (Some(count), Some(mut j)) = (u16_at(b, eocd + 10), u32_at(b, eocd + 16)) else {
        return out;
    };
    for _ in 0..count {
        if b.get(j..j + 4) != Some(b"PK\x01\x02") {
            break;
        }
        let (Some(method), Some(csize), Some(nlen), Some(xlen), Some(clen), Some(local)) = (
            u16_at(b, j + 10),
            u32_at(b, j + 20),
            u16_at(b, j + 28),
            u16_at(b, j + 30),
            u16_at(b, j + 32),
            u32_at(b, j + 42),
        ) else {
            break;
        };
        let name =
            String::from_utf8_lossy(b.get(j + 46..j + 46 + nlen).unwrap_or(&[])).into_owned();
        let central_crc = j + 16;
        j += 46 + nlen + xlen + clen;
        if method != 0 || b.get(local..local + 4) != Some(b"PK\x03\x04") {
            continue;
        }
        let (Some(flags), Some(lnlen), Some(lxlen)) = (
            u16_at(b, local + 6),
            u16_at(b, local + 26),
            u16_at(b, local + 28),
        ) else {
            continue;
        };
        let start = local + 30 + lnlen + lxlen;
        let end = start + csize;
        if end > b.len() {
            continue;
        }
        let mut crc_at = vec![local + 14, central_crc];
        if flags & 8 != 0 {
            // Data descriptor: optional signature, then the CRC.
            let d = if b.get(end..end + 4) == Some(b"PK\x07\x08") {
                end + 4
            } else {
                end
            };
            if d + 4 <= b.len() {
                crc_at.push(d);
            }
        }
        out.push(Entry {
            name,
            data: start..end,
            crc_at,
        });
    }
    out
}

fn fix_crc(b: &mut [u8], e: &Entry) {
    let mut crc = flate2::Crc::new();
    crc.update(&b[e.data.clone()]);
    let v = crc.sum().to_le_bytes();
    for &at in &e.crc_at {
        b[at..at + 4].copy_from_slice(&v);
    }
}

/// In-place mutation of `region` (same length).
fn mutate_in_place(b: &mut [u8], region: std::ops::Range<usize>, rng: &mut Rng) -> &'static str {
    let len = region.len();
    if len == 0 {
        return "none";
    }
    let at = region.start + rng.below(len);
    match rng.below(5) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let k = region.start + rng.below(len);
                b[k] ^= 1 << rng.below(8);
            }
            "bit flips"
        }
        1 => {
            b[at] = [0u8, 0xff, 0x7f, 0x80, b'(', b'c', b'R', b'.', b'q', b'X'][rng.below(10)];
            "interesting byte"
        }
        2 => {
            let w = [1usize, 2, 4, 8][rng.below(4)];
            let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
            let end = (at + w).min(region.end);
            b[at..end].copy_from_slice(&v[..end - at]);
            "interesting integer"
        }
        3 => {
            // Copy a byte range of the region over another place in it.
            let n = 1 + rng.below(len.min(16));
            let from = region.start + rng.below(len - n + 1);
            let to = region.start + rng.below(len - n + 1);
            b.copy_within(from..from + n, to);
            "range copy"
        }
        _ => {
            b[at] = rng.next() as u8;
            "random byte"
        }
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> (Vec<u8>, Vec<&'static str>) {
    let mut b = seed.to_vec();
    let mut what = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let ents = entries(&b);
        let pickle: Vec<&Entry> = ents.iter().filter(|e| e.name.ends_with(".pkl")).collect();
        match rng.below(10) {
            // Mostly the pickle, checksum fixed: this is where the interpreter is exercised.
            0..=4 if !pickle.is_empty() => {
                let e = pickle[rng.below(pickle.len())].clone();
                let m = mutate_in_place(&mut b, e.data.clone(), rng);
                fix_crc(&mut b, &e);
                what.push(if m == "none" { m } else { "pickle (CRC fixed)" });
                what.push(m);
            }
            5 if !ents.is_empty() => {
                let e = ents[rng.below(ents.len())].clone();
                what.push(mutate_in_place(&mut b, e.data.clone(), rng));
                fix_crc(&mut b, &e);
            }
            6 => {
                let n = b.len();
                what.push(mutate_in_place(&mut b, 0..n, rng));
            }
            7 => {
                let cut = rng.below(b.len() + 1);
                b.truncate(cut);
                what.push("truncate");
            }
            8 if b.len() > 2 => {
                let a = rng.below(b.len());
                let n = 1 + rng.below((b.len() - a).min(64));
                b.drain(a..a + n);
                what.push("delete range");
            }
            _ if !b.is_empty() => {
                let a = rng.below(b.len());
                let n = 1 + rng.below((b.len() - a).min(64));
                let chunk: Vec<u8> = b[a..a + n].to_vec();
                let at = rng.below(b.len());
                b.splice(at..at, chunk);
                what.push("duplicate range");
            }
            _ => what.push("none"),
        }
    }
    (b, what)
}

fn seeds(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "pt") {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&root.join("core/tests/fixtures/pt"), &mut paths);
    walk(&root.join("tests/fixtures"), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let b = std::fs::read(&p).ok()?;
            Some((p.strip_prefix(root).unwrap_or(&p).display().to_string(), b))
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(600);
    let seed: u64 = arg("--seed").and_then(|s| s.parse().ok()).unwrap_or(1);
    let crashes = PathBuf::from(arg("--crashes").unwrap_or_else(|| "fuzz-crashes".into()));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let corpus = seeds(&root);
    assert!(!corpus.is_empty(), "no seed checkpoints found");
    eprintln!(
        "fuzzing the checkpoint reader for {seconds} s from {} seeds (seed {seed})",
        corpus.len()
    );
    // Findings are reported by the loop; keep the default hook from printing every caught panic.
    std::panic::set_hook(Box::new(|_| {}));
    let limits = PtLimits::default();
    let mut rng = Rng(seed);
    let start = Instant::now();
    let mut last = Instant::now();
    let (mut cases, mut ok, mut panics) = (0u64, 0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut mutations: BTreeMap<&'static str, u64> = BTreeMap::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        let (name, bytes) = &corpus[rng.below(corpus.len())];
        let (input, what) = mutate(bytes, &mut rng);
        for w in &what {
            *mutations.entry(w).or_default() += 1;
        }
        cases += 1;
        let r = std::panic::catch_unwind(|| {
            PtCheckpoint::from_bytes_with_limits(&input, &limits).map(|c| {
                // Touch every tensor's values, as loading a model does.
                c.tensors()
                    .iter()
                    .map(|(_, t)| t.as_f32().iter().map(|v| *v as f64).sum::<f64>())
                    .sum::<f64>()
            })
        });
        match r {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                // Group errors by their first words ("pickle: unknown opcode 0x..").
                let key: String = e
                    .to_string()
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ");
                *errors.entry(key).or_default() += 1;
            }
            Err(_) => {
                panics += 1;
                let _ = std::fs::create_dir_all(&crashes);
                let out = crashes.join(format!("crash-{cases}.pt"));
                let _ = std::fs::write(&out, &input);
                eprintln!(
                    "PANIC on a mutation of {name} ({what:?}); input saved to {}",
                    out.display()
                );
            }
        }
        if last.elapsed() >= Duration::from_secs(10) {
            last = Instant::now();
            eprintln!(
                "{:>5.0} s: {cases} cases ({:.0}/s), {ok} read, {} refused, {panics} panics",
                start.elapsed().as_secs_f64(),
                cases as f64 / start.elapsed().as_secs_f64(),
                cases - ok - panics
            );
        }
    }
    let top: Vec<String> = {
        let mut v: Vec<(&String, &u64)> = errors.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        v.iter()
            .take(12)
            .map(|(k, n)| format!("{k}: {n}"))
            .collect()
    };
    println!(
        "{}",
        serde_json::json!({
            "target": "checkpoint (pt zip + pickle)",
            "seconds": start.elapsed().as_secs_f64().round(),
            "seeds": corpus.len(),
            "cases": cases,
            "read_ok": ok,
            "refused_with_error": cases - ok - panics,
            "panics": panics,
            "top_errors": top,
            "mutations": mutations,
        })
    );
    if panics > 0 {
        std::process::exit(1);
    }
}
