//! Real crashes: a process running a file-backed pool (io_uring, O_DIRECT, two reactors, the
//! cleaner) writes tagged blocks with FLUSHes and journals every acknowledged write; it is
//! killed with SIGKILL at a random moment, restarted on the same file, and must find every
//! journaled write (or a newer one) before it writes again. 20 cycles, then a clean run.
//!
//! The process is `unblend bench -w crashwrite` on an lsv volume (`open=1` reopens the pool),
//! which journals from inside the process. The same kind of test against `unblend serve`
//! itself, driven over vhost-user-blk from outside, is
//! `lsv_behind_serve_keeps_flushed_writes_across_sigkill` in `vhost_blk.rs`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CYCLES: u32 = 20;
const REACTORS: usize = 2;

fn spawn(img: &Path, journal: &Path, seconds: u32) -> Child {
    let spec = format!(
        "lsv:path={},size=96M,volume=24M,segment=1M,open=1",
        img.display()
    );
    Command::new(env!("CARGO_BIN_EXE_unblend"))
        .args([
            "bench",
            "--bdev",
            &spec,
            "-w",
            "crashwrite",
            "--journal",
            journal.to_str().unwrap(),
            "-q",
            "16",
            "-t",
            &seconds.to_string(),
            "-m",
            "0x3",
        ])
        .env("UNBLEND_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until every reactor's job says it verified the journal; returns false if the
/// process ended first (its output is returned for the message).
fn wait_verified(child: &mut Child) -> Result<(), String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    let mut text = String::new();
    while seen < REACTORS {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if line.contains("journal verified") {
                    seen += 1;
                }
                text.push_str(&line);
                text.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("no verification ({status}): {text}{err}"));
            }
        }
    }
    Ok(())
}

/// Waits for `child` at most `secs` seconds; a run that hangs is killed and fails the test
/// (rather than hanging CI).
fn wait_bounded(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the bench did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigkill_cycles_lose_no_acknowledged_write() {
    let dir = common::TestDir::new("lsv_kill");
    let img = dir.join("pool.img");
    let journal = dir.join("journal");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = seed;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    eprintln!("kill timing seed {seed}");
    for cycle in 0..CYCLES {
        let mut child = spawn(&img, &journal, 120);
        if let Err(e) = wait_verified(&mut child) {
            panic!("cycle {cycle}: {e}");
        }
        // Let it write for 0.1 .. 1.5 s, then pull the plug.
        std::thread::sleep(Duration::from_millis(100 + next() % 1400));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "cycle {cycle}: the bench ended on its own"
        );
    }
    let journaled = std::fs::metadata(&journal).unwrap().len() / 16;
    assert!(journaled > 1000, "only {journaled} writes journaled");

    // A clean run verifies the last crash's state and ends well.
    let mut child = spawn(&img, &journal, 1);
    wait_verified(&mut child).unwrap();
    let status = wait_bounded(&mut child, 60);
    assert!(status.success(), "clean run failed: {status}");

    // The checker can fail: a journal claiming a newer write than the block holds is caught.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    f.write_all(&5u64.to_le_bytes()).unwrap();
    f.write_all(&(u64::MAX - 1).to_le_bytes()).unwrap();
    drop(f);
    let mut child = spawn(&img, &journal, 1);
    let status = wait_bounded(&mut child, 60);
    assert!(!status.success());
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("verify failed") && err.contains("first bad LBA 5"),
        "{err}"
    );
}
