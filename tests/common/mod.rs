//! What the integration tests share: waiting for a started `unblend serve` to say it runs.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Reads the child's stdout until `serve` prints "running;" (at most 20 s; panics if it exits
/// first) and returns everything it printed so far. The rest of its stdout is drained by a
/// thread, so the appliance never blocks on a full pipe.
#[allow(dead_code)] // not every test crate uses both
pub fn wait_until_running(child: &mut Child) -> (String, JoinHandle<std::io::Result<u64>>) {
    let (banner, mut out) = read_banner(child);
    let drain = std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (banner, drain)
}

/// Reads the child's stdout until `serve` prints "running;" (at most 20 s); returns what it
/// printed and the rest of its stdout, for the caller to read.
#[allow(dead_code)]
pub fn read_banner(child: &mut Child) -> (String, BufReader<ChildStdout>) {
    let mut out = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !banner.contains("running;") {
        assert!(
            Instant::now() < deadline,
            "serve never said it runs: {banner}"
        );
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("serve exited early: {banner}");
        }
        banner.push_str(&line);
    }
    (banner, out)
}

/// A fresh directory under cargo's per-target temporary directory (on the build's filesystem,
/// which supports O_DIRECT; tmpfs may not), removed with everything in it when dropped. A
/// served default pool is a 1 GiB fallocated file, so directories left behind by the whole
/// suite would fill a CI machine's disk (11 GiB did once).
#[allow(dead_code)]
pub struct TestDir(std::path::PathBuf);

#[allow(dead_code)]
impl TestDir {
    /// Empties (or makes) `CARGO_TARGET_TMPDIR/name`.
    pub fn new(name: &str) -> TestDir {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }
}

impl std::ops::Deref for TestDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
