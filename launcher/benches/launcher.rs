//! `cargo bench -p launcher`: binary size, the launcher's own RSS, and how
//! long a signal takes to get through it to the trainer.
//!
//! Latency is measured with CLOCK_MONOTONIC, which all processes share: the
//! bench reads it and sends SIGUSR1 to the launcher; the "trainer" (this
//! binary re-executed in child mode, waiting in sigwaitinfo) reads it on
//! receipt and prints it. The same is done with the bench signalling the
//! child directly, so the difference is what the launcher adds.
//!
//! Set LAUNCHER_BIN to measure another build (the static release binary).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

const ROUNDS: usize = 2000;
/// CI's quick run (TJO_BENCH_QUICK set): enough to show every figure.
const QUICK_ROUNDS: usize = 50;

fn rounds() -> usize {
    if std::env::var_os("TJO_BENCH_QUICK").is_some() {
        QUICK_ROUNDS
    } else {
        ROUNDS
    }
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Child mode: print the receipt time of every SIGUSR1; exit on SIGTERM.
fn child() -> ! {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let out = std::io::stdout();
        let mut out = out.lock();
        writeln!(out, "ready {}", std::process::id()).unwrap();
        out.flush().unwrap();
        loop {
            let sig = libc::sigwaitinfo(&set, std::ptr::null_mut());
            let t = mono_ns();
            if sig == libc::SIGTERM {
                std::process::exit(0);
            }
            if sig == libc::SIGUSR1 {
                writeln!(out, "{t}").unwrap();
                out.flush().unwrap();
            }
        }
    }
}

fn is_static(bin: &[u8]) -> bool {
    // ELF64: no PT_INTERP program header means no dynamic loader.
    let u16_at = |o: usize| u16::from_le_bytes([bin[o], bin[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bin[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    !(0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(bin[o..o + 4].try_into().unwrap()) == 3
    })
}

fn percentile(sorted: &[f64], pct: f64) -> f64 {
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sends SIGUSR1 to `target` ROUNDS times; returns sorted send-to-receipt
/// latencies in microseconds.
fn measure(target: i32, lines: &mut impl Iterator<Item = String>) -> Vec<f64> {
    let mut v = Vec::with_capacity(rounds());
    for _ in 0..rounds() {
        let t0 = mono_ns();
        unsafe { libc::kill(target, libc::SIGUSR1) };
        let t1: u64 = lines.next().expect("child alive").trim().parse().unwrap();
        v.push((t1.saturating_sub(t0)) as f64 / 1000.0);
    }
    v.sort_by(f64::total_cmp);
    v
}

fn status_kib(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("__child") {
        child();
    }
    let bin = std::env::var_os("LAUNCHER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_launcher")));
    let bytes = std::fs::read(&bin).expect("launcher binary");
    println!(
        "binary: {} ({:.2} MB, {})",
        bin.display(),
        bytes.len() as f64 / 1e6,
        if is_static(&bytes) {
            "static"
        } else {
            "dynamic"
        }
    );
    let me = std::env::current_exe().unwrap();
    let tmp = std::env::temp_dir().join(format!("launcher-bench-{}", std::process::id()));
    std::fs::create_dir_all(tmp.join("ckpt")).unwrap();

    // Baseline: the child signalled directly.
    let mut direct = Command::new(&me)
        .arg("__child")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(direct.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    lines.next().unwrap();
    let base = measure(direct.id() as i32, &mut lines);
    unsafe { libc::kill(direct.id() as i32, libc::SIGTERM) };
    direct.wait().unwrap();

    let mut l = Command::new(&bin)
        .args(["run", "--"])
        .arg(&me)
        .arg("__child")
        .env("TJ_CHECKPOINT_DIR", tmp.join("ckpt"))
        .env("TJ_REPORT_PATH", tmp.join("report.json"))
        .env("TJ_SHM_DIR", &tmp)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lpid = l.id() as i32;
    let mut lines = BufReader::new(l.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    lines.next().unwrap();
    let via = measure(lpid, &mut lines);
    let (rss, hwm) = (status_kib(lpid, "VmRSS:"), status_kib(lpid, "VmHWM:"));
    unsafe { libc::kill(lpid, libc::SIGTERM) };
    let st = l.wait().unwrap();
    assert!(st.success(), "launcher exit: {st}");
    let _ = std::fs::remove_dir_all(&tmp);

    println!("launcher RSS: {rss} KiB now, {hwm} KiB peak (VmHWM)");
    for (name, v) in [
        ("direct kill -> child", &base),
        ("kill launcher -> child", &via),
    ] {
        println!(
            "{name:>24}: p50 {:7.1} us  p99 {:7.1} us  max {:8.1} us  ({} signals)",
            percentile(v, 50.0),
            percentile(v, 99.0),
            v[v.len() - 1],
            v.len()
        );
    }
    println!(
        "{:>24}: p50 {:7.1} us  p99 {:7.1} us",
        "added by the launcher",
        percentile(&via, 50.0) - percentile(&base, 50.0),
        percentile(&via, 99.0) - percentile(&base, 99.0)
    );
}
