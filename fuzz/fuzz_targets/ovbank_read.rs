//! Fuzz target: open arbitrary bytes as an `.ovbank` file and walk every
//! accessor and `verify`, once as given and once behind repaired checksums
//! (section, header and file checksums, and the footer), so that every
//! mutation reaches the section parsers and the content check. A repaired
//! input that passes what `import` checks first (verify with its content
//! check, then the thumbnail check) is imported into a fresh sled bank in a
//! temporary folder, which `verify_bank` then reads back.
//!
//! Per input it enforces the bounds of issue #20:
//! * heap: at most 64 MiB live at any moment (a counting allocator; the
//!   process RSS is bounded by libFuzzer's `-rss_limit_mb`);
//! * writes: the bank folder after the import holds at most 16× the input's
//!   size beyond what it holds after importing a file with no classes
//!   (sled's `conf`, a snapshot and one 64 KiB log segment: about 65 KB).
//!
//! It must never panic, hang or exceed those bounds. `OVBANK_FUZZ_STATS=FILE`
//! makes it keep the figures (imports, largest write ratio, largest heap
//! peak, kinds of `verify_bank` problems) in FILE; `OVBANK_FUZZ_STRICT=1`
//! makes a `verify_bank` problem after an import a crash.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use ovdiff_store::ovbank::{
    exercise_import, exercise_untrusted, fuzz_import_overhead, fuzz_repair_checksums,
};

/// The most heap one input may hold live at once.
const HEAP_LIMIT: usize = 64 << 20;
/// What a bank may hold after an import, per input byte, beyond an empty bank.
const WRITE_FACTOR: u64 = 16;

/// `System`, counting the live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(p, layout)
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new);
        if !q.is_null() {
            if new >= layout.size() {
                let now =
                    LIVE.fetch_add(new - layout.size(), Ordering::Relaxed) + new - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Figures over the whole run.
#[derive(Default)]
struct Stats {
    inputs: u64,
    imports: u64,
    imported: u64,
    max_heap: usize,
    live_between: usize,
    max_ratio: f64,
    max_ratio_len: usize,
    max_bank_bytes: u64,
    problems: BTreeMap<String, u64>,
}

struct Env {
    /// A folder of this process's own; each import's bank goes in `root/bank`.
    root: PathBuf,
    /// What a bank's folder holds after importing a file with no classes.
    empty_bank: u64,
    stats_file: Option<PathBuf>,
    strict: bool,
    stats: Mutex<Stats>,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("ovbank-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("a temporary folder for the fuzz banks");
        let empty_bank = fuzz_import_overhead(&root).expect("an empty bank imports");
        Env {
            root,
            empty_bank,
            stats_file: std::env::var_os("OVBANK_FUZZ_STATS").map(PathBuf::from),
            strict: std::env::var("OVBANK_FUZZ_STRICT").is_ok_and(|v| v == "1"),
            stats: Mutex::new(Stats::default()),
        }
    })
}

/// A problem message with its class, numbers and hex strings left out, so
/// that problems of one kind are counted together.
fn kind(problem: &str) -> String {
    let p = match problem.strip_prefix("class \"") {
        Some(rest) => rest.split_once("\": ").map_or(rest, |(_, p)| p),
        None => problem,
    };
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let all_hex = word.len() >= 8 && word.chars().all(|c| c.is_ascii_hexdigit());
        let number = !word.is_empty() && word.chars().all(|c| c.is_ascii_digit() || c == '.');
        out.push_str(if all_hex || number {
            "#"
        } else {
            word.as_str()
        });
        word.clear();
    };
    for c in p.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn write_stats(env: &Env, s: &Stats) {
    let Some(path) = &env.stats_file else {
        return;
    };
    let mut t = format!(
        "inputs {}\nimports_tried {}\nimported {}\nempty_bank_bytes {}\nmax_bank_bytes {}\n\
         max_write_ratio {:.3} (input of {} bytes)\nmax_heap_bytes {}\nlive_heap_between_inputs {}\n",
        s.inputs,
        s.imports,
        s.imported,
        env.empty_bank,
        s.max_bank_bytes,
        s.max_ratio,
        s.max_ratio_len,
        s.max_heap,
        s.live_between,
    );
    for (k, n) in &s.problems {
        t.push_str(&format!("verify_bank_problem {n} × {k}\n"));
    }
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, t).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);

    exercise_untrusted(data.to_vec());
    let mut repaired = data.to_vec();
    fuzz_repair_checksums(&mut repaired);
    exercise_untrusted(repaired.clone());
    let bank = env.root.join("bank");
    let outcome = exercise_import(repaired, &bank);
    let _ = std::fs::remove_dir_all(&bank);

    let heap = PEAK.load(Ordering::Relaxed).saturating_sub(start);
    assert!(
        heap <= HEAP_LIMIT,
        "an input of {} bytes held {heap} bytes of heap at once (limit {HEAP_LIMIT})",
        data.len()
    );
    let mut s = env.stats.lock().unwrap_or_else(|e| e.into_inner());
    s.inputs += 1;
    s.live_between = start;
    let mut changed = heap > s.max_heap;
    s.max_heap = s.max_heap.max(heap);
    if let Some(o) = outcome {
        s.imports += 1;
        s.imported += u64::from(o.imported);
        let written = o.bank_bytes.saturating_sub(env.empty_bank);
        assert!(
            written <= WRITE_FACTOR * data.len() as u64,
            "an input of {} bytes made a bank of {} bytes ({written} beyond an empty bank's {}; \
             limit {WRITE_FACTOR}× the input)",
            data.len(),
            o.bank_bytes,
            env.empty_bank
        );
        let ratio = written as f64 / data.len().max(1) as f64;
        if ratio > s.max_ratio {
            (s.max_ratio, s.max_ratio_len) = (ratio, data.len());
            changed = true;
        }
        s.max_bank_bytes = s.max_bank_bytes.max(o.bank_bytes);
        for p in &o.bank_problems {
            let k = kind(p);
            let n = s.problems.entry(k).or_insert(0);
            if *n == 0 {
                eprintln!("ovbank_read: verify_bank after import: {p}");
                changed = true;
            }
            *n += 1;
        }
        assert!(
            !(env.strict && !o.bank_problems.is_empty()),
            "verify_bank found problems in what the file's checks let through: {:?}",
            o.bank_problems
        );
    }
    if changed || s.inputs.is_multiple_of(2000) {
        write_stats(env, &s);
    }
});
