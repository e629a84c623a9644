//! The `unblend` binary, end to end: bad input is refused cleanly with exit code 2, the bench
//! verifies data on malloc and uring bdevs, and `serve` boots and stops on a signal.

mod common;

use std::process::{Command, Output, Stdio};

fn unblend(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unblend"))
        .args(args)
        .env("UNBLEND_LOG", "warn")
        .output()
        .expect("run unblend")
}

/// Exit code 2, exactly one line on stderr that names the problem, and no panic.
fn assert_refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line, got: {stderr}");
    assert!(
        lines[0].contains(needle),
        "error {:?} does not mention {needle:?}",
        lines[0]
    );
}

/// The JSON a successful `--json` run printed; fails the test (showing both streams) otherwise.
fn success_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

fn bench(args: &[&str]) -> Output {
    let mut all = vec!["bench", "-t", "1"];
    all.extend_from_slice(args);
    unblend(&all)
}

#[test]
fn missing_file_is_refused() {
    assert_refused(
        &bench(&["--bdev", "uring:path=/nonexistent/unblend.img"]),
        "does not exist",
    );
    assert_refused(
        &unblend(&["serve", "--config", "/nonexistent/unblend.json"]),
        "does not exist",
    );
    assert_refused(
        &bench(&["--config", "/nonexistent/c.json", "--bdev", "M0"]),
        "does not exist",
    );
}

#[test]
fn size_not_a_block_multiple_is_refused() {
    assert_refused(&bench(&["--bdev", "null:size=1000"]), "not a multiple");
    assert_refused(
        &bench(&["--bdev", "malloc:size=6000,bs=4096"]),
        "not a multiple",
    );
}

#[test]
fn bad_block_sizes_are_refused() {
    assert_refused(
        &bench(&["--bdev", "null:size=1M,bs=1000"]),
        "block size 1000",
    );
    assert_refused(&bench(&["--bdev", "null:size=1M,bs=256"]), "block size 256");
}

#[test]
fn unknown_bdev_type_is_refused() {
    assert_refused(&bench(&["--bdev", "frob:size=1M"]), "unknown bdev type");
}

#[test]
fn cpumask_naming_a_missing_core_is_refused() {
    assert_refused(
        &bench(&["--bdev", "null:size=1M", "-m", "0x80000000"]),
        "core 31",
    );
    assert_refused(
        &bench(&["--bdev", "null:size=1M", "-m", "0,512"]),
        "core 512",
    );
    assert_refused(&unblend(&["serve", "-m", "0x0"]), "selects no core");
}

#[test]
fn malformed_config_is_refused() {
    let dir = common::TestDir::new("malformed_config");
    let bad_json = dir.join("bad.json");
    std::fs::write(&bad_json, "{\"subsystems\": [").unwrap();
    let s = bad_json.to_str().unwrap();
    assert_refused(
        &unblend(&["serve", "--config", s]),
        "not a valid SPDK JSON config",
    );
    assert_refused(
        &bench(&["--config", s, "--bdev", "M0"]),
        "not a valid SPDK JSON config",
    );
    let bad_entry = dir.join("entry.json");
    std::fs::write(
        &bad_entry,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":64,"block_size":512}},
            {"method":"bdev_null_create","params":{"name":"N0","num_blocks":64,"block_size":4096,"colour":"red"}}]}]}"#,
    )
    .unwrap();
    assert_refused(
        &unblend(&["serve", "--config", bad_entry.to_str().unwrap()]),
        "bdev[1] (bdev_null_create)",
    );
}

#[test]
fn bad_bench_options_are_refused() {
    assert_refused(
        &bench(&["--bdev", "null:size=1M", "-q", "0"]),
        "queue depth",
    );
    assert_refused(
        &bench(&["--bdev", "null:size=1M", "-o", "1000"]),
        "I/O size",
    );
    assert_refused(
        &bench(&["--bdev", "null:size=1M", "-o", "8k", "-M", "101"]),
        "read percent",
    );
    let out = bench(&["--bdev", "null:size=1M", "-w", "scramble"]);
    assert_eq!(out.status.code(), Some(2));
    assert_refused(
        &bench(&["--bdev", "null:size=1M", "--rate-iops", "1000001"]),
        "rate",
    );
    assert_refused(
        &bench(&[
            "--bdev",
            "malloc:size=1M",
            "-w",
            "verify",
            "--rate-iops",
            "10",
        ]),
        "rate-iops",
    );
}

#[test]
fn rate_iops_caps_what_a_job_starts() {
    // A null bdev does millions of IOPS; capped at 2,000 for 2 s, a job starts one I/O every
    // 500 µs, so at most 4,000 complete (plus the queue's 8 started at once), and far more
    // than none. The bound below is loose on purpose: only the cap is asserted exactly.
    let out = unblend(&[
        "bench",
        "-t",
        "2",
        "--bdev",
        "null:size=64M",
        "-q",
        "8",
        "--rate-iops",
        "2000",
        "-w",
        "randwrite",
        "--json",
    ]);
    let v = success_json(&out);
    let ios = v["total"]["ios"].as_u64().unwrap();
    assert!(ios <= 4000 + 8, "{ios} I/Os at 2,000 a second for 2 s: {v}");
    assert!(ios >= 1000, "{ios} I/Os at 2,000 a second for 2 s: {v}");
    assert_eq!(v["rate_iops"], 2000);
}

#[test]
fn verify_passes_on_malloc() {
    let out = bench(&[
        "--bdev",
        "malloc:size=64M",
        "-w",
        "verify",
        "-q",
        "16",
        "--json",
    ]);
    let v = success_json(&out);
    assert!(v["total"]["ios"].as_u64().unwrap() > 1000, "{v}");
    assert!(v["verify_failure"].is_null());
}

#[test]
fn verify_passes_on_uring_file_with_two_reactors() {
    let dir = common::TestDir::new("verify_uring");
    let img = dir.join("disk.img");
    let spec = format!("uring:path={},size=64M", img.display());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mask = if cores >= 2 { "0x3" } else { "0x1" };
    let out = bench(&[
        "--bdev", &spec, "-w", "verify", "-q", "32", "-o", "16k", "-m", mask, "--json",
    ]);
    let v = success_json(&out);
    assert!(v["total"]["ios"].as_u64().unwrap() > 100, "{v}");
    assert_eq!(
        v["cores"].as_array().unwrap().len(),
        if cores >= 2 { 2 } else { 1 }
    );
    // The file was created and preallocated to the asked size.
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
}

#[test]
fn bench_json_has_the_documented_shape() {
    let out = bench(&[
        "--bdev",
        "null:size=1G",
        "-w",
        "randrw",
        "-M",
        "70",
        "--json",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["mean", "p50", "p99", "p999", "max"] {
        assert!(
            v["total"]["lat_us"][key].is_number(),
            "missing lat_us.{key}: {v}"
        );
    }
    assert!(v["total"]["iops"].as_f64().unwrap() > 0.0);
    assert!(v["total"]["mibps"].as_f64().unwrap() > 0.0);
    assert_eq!(v["cores"].as_array().unwrap().len(), 1);
}

#[test]
fn bench_reads_a_bdev_from_a_config() {
    let dir = common::TestDir::new("bench_config");
    let cfg = dir.join("c.json");
    std::fs::write(
        &cfg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":16384,"block_size":4096}}]}]}"#,
    )
    .unwrap();
    let out = bench(&[
        "--config",
        cfg.to_str().unwrap(),
        "--bdev",
        "M0",
        "-w",
        "verify",
        "-q",
        "8",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_refused(
        &bench(&["--config", cfg.to_str().unwrap(), "--bdev", "M9"]),
        "no bdev named \"M9\"",
    );
}

/// Starts `unblend serve`, waits for it to say it runs, sends `signal`, and checks a clean exit.
fn serve_and_stop(extra: &[&str], signal: i32) -> String {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let data = common::TestDir::new(&format!("serve_data_{n}"));
    let sock = data.join("s.sock");
    let mut args = vec!["serve", "-r", sock.to_str().unwrap()];
    if !extra.contains(&"-d") {
        args.extend_from_slice(&["-d", data.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_unblend"))
        .args(&args)
        .env("UNBLEND_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (banner, mut out) = common::read_banner(&mut child);
    // SAFETY: kill(2) on the child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "serve exited with {status}: {banner}{rest}"
    );
    assert!(rest.contains("stopped cleanly"), "{rest}");
    banner
}

#[test]
fn serve_boots_the_default_and_stops_on_sigterm() {
    let data = common::TestDir::new("serve_default_data");
    let d = data.to_str().unwrap();
    let banner = serve_and_stop(&["-d", d], libc::SIGTERM);
    assert!(banner.contains("embedded default"), "{banner}");
    assert!(banner.contains("bdev Malloc0"), "{banner}");
    let vol_line = |b: &str| {
        b.lines()
            .find(|l| l.contains("bdev lvs0/vol0: Logical Volume, 131072 blocks of 4096"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no default volume in {b}"))
    };
    let first = vol_line(&banner);
    assert!(data.join("pool0.img").exists());
    // The default volume is exported over vhost-user, with the QEMU line that attaches it; the
    // socket (in the data directory without -S) is gone after a clean stop.
    let sock = data.join("vhost.0");
    assert!(
        banner.contains(&format!(
            "vhost-user-blk vhost.0: lvs0/vol0 on {}",
            sock.display()
        )),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("path={},reconnect-ms=500", sock.display()))
            && banner.contains("-device vhost-user-blk-pci,chardev=vhost0"),
        "{banner}"
    );
    assert!(!sock.exists(), "socket left after a clean stop");
    // A second boot loads the same pool (same volume uuid), it does not format it again.
    let again = serve_and_stop(&["-d", d], libc::SIGTERM);
    assert_eq!(vol_line(&again), first);
}

#[test]
fn serve_boots_a_config_and_stops_on_sigint() {
    let dir = common::TestDir::new("serve_config");
    let cfg = dir.join("c.json");
    let img = dir.join("u.img");
    // Preallocate the file for the uring bdev.
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    std::fs::write(
        &cfg,
        format!(
            r#"{{"subsystems":[{{"subsystem":"bdev","config":[
            {{"method":"bdev_null_create","params":{{"name":"N0","num_blocks":1024,"block_size":4096}}}},
            {{"method":"bdev_uring_create","params":{{"name":"U0","filename":"{}","block_size":4096}}}}]}}]}}"#,
            img.display()
        ),
    )
    .unwrap();
    let banner = serve_and_stop(
        &["--config", cfg.to_str().unwrap(), "-m", "0x1"],
        libc::SIGINT,
    );
    assert!(banner.contains("bdev N0"), "{banner}");
    assert!(
        banner.contains("bdev U0: URING bdev, 2048 blocks"),
        "{banner}"
    );
}

#[test]
fn adaptive_reactor_sleeping_on_uring_io_is_woken_by_completions() {
    // With a 1-pass spin the reactor sleeps whenever it waits for the disk; only the io_uring
    // eventfd wakes it. Without that wake-up each I/O would wait out a 100 ms sleep.
    let dir = common::TestDir::new("adaptive_uring");
    let spec = format!("uring:path={},size=16M", dir.join("d.img").display());
    let out = Command::new(env!("CARGO_BIN_EXE_unblend"))
        .args([
            "bench", "-t", "1", "--bdev", &spec, "-w", "verify", "-q", "4", "--idle", "adaptive",
            "--json",
        ])
        .env("UNBLEND_LOG", "warn")
        .env("UNBLEND_IDLE_SPIN_PASSES", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ios = v["total"]["ios"].as_u64().unwrap();
    assert!(
        ios > 200,
        "only {ios} I/Os in 1 s: completions did not wake the reactor"
    );
}

#[test]
fn uring_with_sqpoll_verifies() {
    let dir = common::TestDir::new("sqpoll");
    let spec = format!(
        "uring:path={},size=16M,sqpoll=1",
        dir.join("d.img").display()
    );
    let out = bench(&["--bdev", &spec, "-w", "verify", "-q", "8"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pool_format_inspect_check() {
    let dir = common::TestDir::new("pool_cli");
    let img = dir.join("pool.img");
    let p = img.to_str().unwrap();
    let out = unblend(&[
        "pool",
        "format",
        p,
        "--size",
        "256M",
        "--segment-size",
        "4M",
        "--name",
        "tank",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pool tank, ") && text.contains("segments of 4194304 bytes"),
        "{text}"
    );
    assert_refused(
        &unblend(&["pool", "format", p]),
        "already holds an unblend pool",
    );
    // 256 MiB of 4 MiB segments: the header takes one segment, each checkpoint slot one
    // (64 Ki blocks of 24 bytes fit in 4 MiB), and the segment summaries one (4 blocks each).
    let (slot_a, slot_b) = (4u64 << 20, 8u64 << 20);
    let out = unblend(&["pool", "inspect", p]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // A new pool's sequence numbers start at 1 plus the low 47 bits of its uuid.
    let uuid = text
        .lines()
        .find_map(|l| l.strip_prefix("  uuid "))
        .unwrap_or_else(|| panic!("no uuid in:\n{text}"));
    let low = u64::from_str_radix(&uuid.replace('-', "")[16..], 16).unwrap();
    let complete = low & ((1 << 47) - 1);
    for want in [
        "  format version 4\n".to_string(),
        "  segments 60\n".to_string(),
        "  segment summaries at 12582912 (4 blocks each)\n".to_string(),
        "volume table: pool name tank, 0 volume(s)\n".to_string(),
        format!("checkpoint slot A at offset {slot_a}: valid, version 2, generation 1, complete_seq {complete}, next_seq {}, body ", complete + 1),
        format!("checkpoint slot B at offset {slot_b}: empty"),
        format!("recovery: ok, from checkpoint generation 1 (complete_seq {complete})\n"),
        "  segments free 60, used 0\n".to_string(),
        "  mapped blocks 0\n".to_string(),
        // 4 MiB segments: the journal fills the header segment after its first 8 KiB.
        "  segment journal: 1022 slot(s), 0 entr(ies) no checkpoint covers; recovery read 0 segment(s) whole and probed the first block of 0\n".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} not in:\n{text}");
    }
    let out = unblend(&["pool", "check", p]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("consistent"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_refused(
        &unblend(&["pool", "inspect", "/nonexistent/pool.img"]),
        "does not exist",
    );
    assert_refused(
        &unblend(&["pool", "format", p, "--force", "--segment-size", "3M"]),
        "segment size",
    );
    use std::io::{Seek, SeekFrom, Write};
    let flip = |at: u64| {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let mut b = [0u8];
        f.seek(SeekFrom::Start(at)).unwrap();
        std::io::Read::read_exact(&mut f, &mut b).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[b[0] ^ 0x01]).unwrap();
    };
    // A damaged only checkpoint: check names the slot and recovery's refusal, exits 1.
    flip(slot_a + 4096 + 3);
    let out = unblend(&["pool", "check", p]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "checkpoint slot A at offset {slot_a}: checkpoint body checksum mismatch"
        )) && text.contains("recovery: refused: pool is damaged: no valid checkpoint"),
        "{text}"
    );
    let out = unblend(&["pool", "inspect", p]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("recovery: refused: "),
        "{text}"
    );
    flip(slot_a + 4096 + 3);
    assert!(unblend(&["pool", "check", p]).status.success());
    // A corrupt superblock is a problem named as such, not misread.
    flip(50);
    let out = unblend(&["pool", "check", p]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("superblock: superblock checksum mismatch"),
        "{text}"
    );
    assert_refused(&unblend(&["pool", "inspect", p]), "checksum mismatch");
}

#[test]
fn verify_passes_on_an_lsv_volume_over_a_uring_file() {
    let dir = common::TestDir::new("verify_lsv");
    let spec = format!(
        "lsv:path={},size=256M,volume=64M,segment=1M",
        dir.join("pool.img").display()
    );
    let out = bench(&[
        "--bdev", &spec, "-w", "verify", "-q", "16", "-o", "8k", "--json",
    ]);
    let v = success_json(&out);
    assert!(v["total"]["ios"].as_u64().unwrap() > 100, "{v}");
}
