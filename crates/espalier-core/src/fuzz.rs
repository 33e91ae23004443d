//! A small, deterministic fuzzing harness for Espalier's parsers, run by
//! `cargo test` (the `fuzz` integration test of each crate that parses files).
//!
//! Cases are **mutations of valid seed inputs** (bit flips, byte inserts and
//! deletions, truncations, duplicated chunks, header fields set to extreme
//! values such as 0, 2³¹ or `u32::MAX`, and format-aware edits the targets
//! add), so they reach past the first check of a parser. Every case is a set
//! of named files written into a work directory; the target's check parses
//! them and must return `Ok` or an error naming the file. A panic (caught
//! with `catch_unwind`) or a violated check stops the run and keeps the
//! input under `<tmp>/espalier-fuzz-failures/<target>-<case>/`. With
//! [`CappedAlloc`] as the test binary's global allocator, an allocation over
//! [`ALLOC_CAP`] (a header trusted before it was checked against the file
//! length) aborts with a message naming the work directory, which holds the
//! input.
//!
//! `ESPALIER_FUZZ_CASES` sets the number of cases per target (default: the
//! target's CI count) and `ESPALIER_FUZZ_SEED` the first seed; the same
//! values give the same cases.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::Rng;

/// Largest single allocation a fuzz case may make.
pub const ALLOC_CAP: usize = 256 << 20;

/// Interesting 32-bit values for header fields.
pub const INTERESTING_U32: [u32; 18] = [
    0,
    1,
    2,
    3,
    7,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    0x00ff_ffff,
    0x7fff_ffff,
    0x8000_0000,
    0x8000_0001,
    0xffff_fffe,
    0xffff_ffff,
    28,
];

/// Interesting 64-bit values for header fields.
pub const INTERESTING_U64: [u64; 10] = [
    0,
    1,
    8,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// Interesting textual values for TOML, JSON and TSV fields.
pub const INTERESTING_TEXT: [&str; 30] = [
    "",
    "0",
    "-0",
    "1",
    "-1",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "1e309",
    "-1e309",
    "1e-320",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "0.5",
    "5.0000001",
    "true",
    "\"\"",
    "\"x\"",
    "[]",
    "{}",
    "[1, 2]",
    "null",
    "\u{feff}",
    "é\u{0301}",
    "\t",
];

static WORK_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// The directory the cases of this process are written under
/// (`<tmp>/espalier-fuzz-<pid>/<target>/`); `<tmp>` is `/dev/shm` where it
/// exists (tens of thousands of small writes, no disk), else the system's.
pub fn work_root() -> &'static Path {
    WORK_ROOT.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let tmp = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        tmp.join(format!("espalier-fuzz-{}", std::process::id()))
    })
}

/// A global allocator that aborts on any single allocation over
/// [`ALLOC_CAP`], saying where the input being parsed is. Install it in a fuzz
/// test binary: `#[global_allocator] static A: CappedAlloc = CappedAlloc;`.
pub struct CappedAlloc;

impl CappedAlloc {
    fn check(size: usize) {
        if size > ALLOC_CAP {
            use std::io::Write;
            let root = WORK_ROOT.get().map(|p| p.as_path()).unwrap_or(Path::new("?"));
            let _ = writeln!(
                std::io::stderr(),
                "espalier fuzz: an allocation of {size} bytes (over the cap of {ALLOC_CAP}): a parser trusted a \
                 size it had not checked against its input; the input is in {}/<target>/",
                root.display()
            );
            std::process::abort();
        }
    }
}

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Mutations drawn from the project's seeded RNG.
pub struct Mutator {
    rng: Rng,
}

impl Mutator {
    /// A mutator for one case.
    pub fn new(seed: u64) -> Self {
        Mutator { rng: Rng::new(seed) }
    }

    /// The RNG, for target-specific choices.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Uniform in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.rng.below(n)
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.uniform() < p
    }

    /// One of `xs`.
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    /// An interesting u32.
    pub fn u32(&mut self) -> u32 {
        if self.chance(0.8) {
            *self.pick(&INTERESTING_U32)
        } else {
            self.rng.next_u64() as u32
        }
    }

    /// An interesting u64.
    pub fn u64(&mut self) -> u64 {
        if self.chance(0.8) {
            *self.pick(&INTERESTING_U64)
        } else {
            self.rng.next_u64()
        }
    }

    /// An interesting text value.
    pub fn text(&mut self) -> &'static str {
        INTERESTING_TEXT[self.below(INTERESTING_TEXT.len())]
    }

    /// Sets the big-endian u32 at `offset` (if it fits) to an interesting value.
    pub fn set_u32_be(&mut self, b: &mut [u8], offset: usize) {
        let v = self.u32();
        if let Some(s) = b.get_mut(offset..offset + 4) {
            s.copy_from_slice(&v.to_be_bytes());
        }
    }

    /// Sets the little-endian u64 at `offset` (if it fits) to an interesting value.
    pub fn set_u64_le(&mut self, b: &mut [u8], offset: usize) {
        let v = self.u64();
        if let Some(s) = b.get_mut(offset..offset + 8) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// 1 to 4 byte-level mutations of `b`.
    pub fn bytes(&mut self, b: &mut Vec<u8>) {
        for _ in 0..1 + self.below(4) {
            self.byte_op(b);
        }
    }

    /// One byte-level mutation: a bit flip, a byte set to an interesting
    /// value, a random byte inserted, a range deleted or duplicated, a
    /// truncation, an interesting u32 written at a random offset.
    pub fn byte_op(&mut self, b: &mut Vec<u8>) {
        let len = b.len();
        match self.below(8) {
            0 if len > 0 => {
                let i = self.below(len);
                b[i] ^= 1 << self.below(8);
            }
            1 if len > 0 => {
                let i = self.below(len);
                b[i] = *self.pick(&[0u8, 1, 0x7f, 0x80, 0xff, b'\n', b'\t', b'"', b'0', b'9']);
            }
            2 => {
                let i = self.below(len + 1);
                let v = self.rng.next_u64() as u8;
                b.insert(i, v);
            }
            3 if len > 0 => {
                let i = self.below(len);
                let n = 1 + self.below((len - i).min(16));
                b.drain(i..i + n);
            }
            4 if len > 0 => {
                let cut = self.below(len);
                b.truncate(cut);
            }
            5 if len > 0 => {
                let i = self.below(len);
                let n = 1 + self.below((len - i).min(64));
                let chunk = b[i..i + n].to_vec();
                let at = self.below(len + 1);
                b.splice(at..at, chunk);
            }
            6 if len >= 4 => {
                let i = self.below(len - 3);
                let v = self.u32();
                let bytes = if self.chance(0.5) { v.to_be_bytes() } else { v.to_le_bytes() };
                b[i..i + 4].copy_from_slice(&bytes);
            }
            _ if len > 0 => {
                let i = self.below(len);
                b[i] = self.rng.next_u64() as u8;
            }
            _ => b.push(self.rng.next_u64() as u8),
        }
    }

    /// Replaces one run of ASCII digits in `b` (a JSON or TOML number) by an
    /// interesting value; byte mutation when there is none.
    pub fn number(&mut self, b: &mut Vec<u8>) {
        let starts: Vec<usize> =
            (0..b.len()).filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit())).collect();
        if starts.is_empty() {
            return self.byte_op(b);
        }
        let s = *self.pick(&starts);
        let e = (s..b.len()).find(|&i| !b[i].is_ascii_digit()).unwrap_or(b.len());
        let v = match self.below(3) {
            0 => self.u32().to_string(),
            1 => self.u64().to_string(),
            _ => self.text().to_string(),
        };
        b.splice(s..e, v.into_bytes());
    }

    /// Safetensors-aware mutation: the 8-byte header length set to an
    /// extreme value, the JSON header mutated (a number, a dtype, a value;
    /// the length field kept consistent so that the mutation reaches the
    /// header's parser), the tensor bytes mutated, or bytes anywhere.
    pub fn safetensors(&mut self, b: &mut Vec<u8>) {
        match self.below(10) {
            0 => self.set_u64_le(b, 0),
            1..=6 => self.safetensors_header(b),
            7 if b.len() >= 8 => {
                let n = (u64::from_le_bytes(b[..8].try_into().unwrap()) as usize).saturating_add(8).min(b.len());
                let mut data = b.split_off(n);
                self.bytes(&mut data);
                b.extend(data);
            }
            _ => self.bytes(b),
        }
    }

    fn safetensors_header(&mut self, b: &mut Vec<u8>) {
        let m = self;
        if b.len() < 8 {
            return m.bytes(b);
        }
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        if b.len() - 8 < n {
            return m.bytes(b);
        }
        let mut json = b[8..8 + n].to_vec();
        let data = b[8 + n..].to_vec();
        match m.below(5) {
            0 | 1 => m.number(&mut json),
            2 => {
                // Another dtype.
                let dtypes: [&[u8]; 6] = [b"\"F32\"", b"\"U8\"", b"\"U32\"", b"\"F64\"", b"\"BF16\"", b"\"I64\""];
                let from = *m.pick(&dtypes);
                let targets: [&[u8]; 7] =
                    [b"\"F8_E4M3\"", b"\"BOOL\"", b"\"F16\"", b"\"U64\"", b"\"F4\"", b"\"X\"", b"\"U8\""];
                let to = *m.pick(&targets);
                if let Some(i) = json.windows(from.len()).position(|w| w == from) {
                    json.splice(i..i + from.len(), to.iter().copied());
                }
            }
            3 => {
                // A value replaced in the JSON text (commas separate values).
                let commas: Vec<usize> = (0..json.len()).filter(|&i| json[i] == b',' || json[i] == b':').collect();
                if !commas.is_empty() {
                    let at = commas[m.below(commas.len())] + 1;
                    let end = (at..json.len()).find(|&i| matches!(json[i], b',' | b'}' | b']')).unwrap_or(json.len());
                    json.splice(at..end, m.text().bytes());
                }
            }
            _ => m.bytes(&mut json),
        }
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out.extend(data);
        *b = out;
    }

    /// Line-level mutation of text: a line deleted, duplicated, swapped with
    /// another, or its value (after `=`, `:` or a tab) replaced by an
    /// interesting one.
    pub fn lines(&mut self, b: &mut Vec<u8>) {
        let mut lines: Vec<Vec<u8>> = b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
        let n = lines.len();
        match self.below(5) {
            0 if n > 1 => {
                lines.remove(self.below(n));
            }
            1 => {
                let i = self.below(n);
                let l = lines[i].clone();
                lines.insert(self.below(n + 1), l);
            }
            2 if n > 1 => {
                let (i, j) = (self.below(n), self.below(n));
                lines.swap(i, j);
            }
            _ => {
                let i = self.below(n);
                let l = &mut lines[i];
                let seps: Vec<usize> = (0..l.len()).filter(|&k| matches!(l[k], b'=' | b':' | b'\t' | b',')).collect();
                let at = if seps.is_empty() { 0 } else { seps[self.below(seps.len())] + 1 };
                let end = (at..l.len()).find(|&k| matches!(l[k], b'\t' | b',' | b'}' | b']')).unwrap_or(l.len());
                let v = self.text().as_bytes().to_vec();
                let pad = if at > 0 && l[at - 1] == b'=' { b" ".to_vec() } else { vec![] };
                l.splice(at..end, pad.into_iter().chain(v));
            }
        }
        *b = lines.join(&b'\n');
    }
}

/// The number of cases to run: `ESPALIER_FUZZ_CASES`, else `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("ESPALIER_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// What a target run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Cases run.
    pub cases: usize,
    /// Cases the parser accepted.
    pub ok: usize,
    /// Cases it refused with an error.
    pub err: usize,
}

/// Runs `target`: `cases(default_cases)` cases, each a set of named files
/// made by `make` (from its own seeded [`Mutator`]) and written into a fresh
/// work directory, checked by `check`. `check` returns `Ok(true)` when the
/// parser accepted the input, `Ok(false)` when it refused it with a proper
/// error, and `Err(why)` when the outcome violates the target's contract
/// (e.g. an error that does not name the file). Panics, with the case kept on
/// disk, at the first panic or violation.
pub fn run(
    target: &str,
    default_cases: usize,
    mut make: impl FnMut(&mut Mutator) -> Vec<(String, Vec<u8>)>,
    mut check: impl FnMut(&Path) -> Result<bool, String>,
) -> Stats {
    let n = cases(default_cases);
    let first: u64 = std::env::var("ESPALIER_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let work = work_root().join(target);
    let mut stats = Stats::default();
    let start = std::time::Instant::now();
    for case in 0..n as u64 {
        let seed = first.wrapping_add(case);
        let mut m = Mutator::new(seed ^ crate::rng::tag_hash(target));
        let files = make(&mut m);
        std::fs::create_dir_all(&work).unwrap_or_else(|e| panic!("cannot create {}: {e}", work.display()));
        // Only this case's files in the directory.
        for e in std::fs::read_dir(&work).unwrap_or_else(|e| panic!("cannot list {}: {e}", work.display())) {
            let e = e.unwrap_or_else(|e| panic!("cannot list {}: {e}", work.display()));
            if !files.iter().any(|(n, _)| e.file_name() == n.as_str()) {
                let p = e.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
        for (name, bytes) in &files {
            std::fs::write(work.join(name), bytes).unwrap_or_else(|e| panic!("cannot write the case: {e}"));
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| check(&work)));
        let why = match outcome {
            Ok(Ok(true)) => {
                stats.ok += 1;
                None
            }
            Ok(Ok(false)) => {
                stats.err += 1;
                None
            }
            Ok(Err(why)) => Some(why),
            Err(p) => Some(format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        };
        stats.cases += 1;
        if let Some(why) = why {
            let keep = std::env::temp_dir().join("espalier-fuzz-failures").join(format!("{target}-{seed}"));
            let _ = std::fs::create_dir_all(&keep);
            for (name, bytes) in &files {
                let _ = std::fs::write(keep.join(name), bytes);
            }
            panic!(
                "fuzz target `{target}`, case seed {seed} (ESPALIER_FUZZ_SEED={seed} ESPALIER_FUZZ_CASES=1 \
                 reproduces it): {why}\ninput kept in {}",
                keep.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir(work_root());
    println!(
        "fuzz target `{target}`: {} cases ({} accepted, {} refused) in {:.1}s",
        stats.cases,
        stats.ok,
        stats.err,
        start.elapsed().as_secs_f64()
    );
    stats
}

/// The check for a parser's result: `Ok(true)` when it accepted the input,
/// `Ok(false)` for an error whose message names `file`, `Err` otherwise.
pub fn expect_named<T, E: std::fmt::Display>(r: Result<T, E>, file: &str) -> Result<bool, String> {
    match r {
        Ok(_) => Ok(true),
        Err(e) => {
            let msg = e.to_string();
            if msg.contains(file) {
                Ok(false)
            } else {
                Err(format!("the error does not name `{file}`: {msg}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_deterministic_and_change_the_input() {
        let seed: Vec<u8> = (0..64).collect();
        let run = |s| {
            let mut m = Mutator::new(s);
            let mut b = seed.clone();
            m.bytes(&mut b);
            b
        };
        assert_eq!(run(5), run(5));
        assert!((0..20).any(|s| run(s) != seed));
        let mut m = Mutator::new(1);
        let mut t = b"a = 1\nb = [2, 3]\n".to_vec();
        for _ in 0..50 {
            m.lines(&mut t);
            m.number(&mut t);
        }
    }
}
