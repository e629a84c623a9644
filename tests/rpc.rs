//! The JSON-RPC server, end to end against a live `unblend serve`: SPDK's error codes (exact
//! JSON), batches and pipelining, startup states, socket ownership, slow and vanishing clients,
//! and 10,000 hostile requests after which the appliance still answers with bounded memory.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use unblend::rpc::client::{ClientError, RpcClient};

struct Appliance {
    child: Child,
    sock: PathBuf,
    /// Removed after `Drop` below has stopped the child.
    _dir: common::TestDir,
}

impl Appliance {
    fn start(name: &str, extra: &[&str]) -> Appliance {
        let dir = common::TestDir::new(name);
        let sock = dir.join("unblend.sock");
        let data = dir.join("data");
        // One reactor unless `extra` names a cpumask.
        let mask = if extra.contains(&"-m") {
            vec![]
        } else {
            vec!["-m", "0x1"]
        };
        let mut args = vec!["serve"];
        args.extend(mask);
        args.extend(["-r", sock.to_str().unwrap(), "-d", data.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_unblend"))
            .args(&args)
            .env("UNBLEND_LOG", "error")
            .env("UNBLEND_TEST_METHODS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        common::wait_until_running(&mut child);
        Appliance {
            child,
            sock,
            _dir: dir,
        }
    }

    fn client(&self) -> RpcClient {
        RpcClient::connect(&self.sock, Duration::from_secs(10)).unwrap()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// User + system CPU ticks the appliance has used.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "appliance exited with {status}");
        assert!(!self.sock.exists(), "socket left behind after a clean stop");
    }
}

impl Drop for Appliance {
    /// A test that fails before `stop` must not leave its appliance running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends raw bytes on a fresh connection and returns the first response line, verbatim.
fn raw_exchange(sock: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

/// Asserts that nothing has been answered on `s` yet (`why` says what it waits for).
fn assert_no_answer_yet(s: &UnixStream, why: &str) {
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        (&*s).read(&mut byte).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "{why}"
    );
    s.set_nonblocking(false).unwrap();
}

/// The next answer on `s` (waiting up to 30 s for it). Read a byte at a time, so that
/// nothing after its line is taken from the stream.
fn read_answer(s: &UnixStream) -> Value {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        (&*s).read_exact(&mut byte).unwrap();
        line.push(byte[0]);
    }
    serde_json::from_slice(&line)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)))
}

/// Every lvstore named `name` (`bdev_lvol_get_lvstores`): none, or one.
fn lvstores_named(c: &mut RpcClient, name: &str) -> Vec<Value> {
    let listed = c.call("bdev_lvol_get_lvstores", None).unwrap();
    let all = listed.as_array().unwrap().iter();
    all.filter(|l| l["name"] == name).cloned().collect()
}

/// The code of an RPC that must fail.
fn error_code(r: Result<Value, ClientError>) -> i64 {
    match r {
        Err(ClientError::Rpc { code, .. }) => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// `bdev_delay_create`'s parameters: bdev `name` on `base`, every read and write taking the
/// latencies given (microseconds), the p99 ones too.
fn delay_params(base: &str, name: &str, read_us: u64, write_us: u64) -> Value {
    json!({"base_bdev_name": base, "name": name,
        "avg_read_latency": read_us, "p99_read_latency": read_us,
        "avg_write_latency": write_us, "p99_write_latency": write_us})
}

/// Makes `path` a sparse file of `bytes`.
fn sparse_file(path: &Path, bytes: u64) {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
}

/// A sparse pool file of `bytes` in a directory of its own (`name`), outside an appliance's
/// (which goes with the appliance): it outlives a restart. Keep the directory while it is used.
fn pool_file_outside(name: &str, bytes: u64) -> (common::TestDir, PathBuf) {
    let dir = common::TestDir::new(name);
    let file = dir.join("pool.img");
    sparse_file(&file, bytes);
    (dir, file)
}

/// The parameters of `bdev_uring_create` (bdev `U0` on `file`) and of
/// `bdev_lvol_create_lvstore` (lvstore `ls0` on it, 1 MiB segments).
fn uring_lvstore_params(file: &Path) -> (Value, Value) {
    (
        json!({"name": "U0", "filename": file, "block_size": 4096}),
        json!({"bdev_name": "U0", "lvs_name": "ls0", "cluster_sz": 1 << 20}),
    )
}

/// Waits (at most 30 s) for the bench `unblend_bench_start` began, and returns its report.
fn bench_report(c: &mut RpcClient) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.call("unblend_bench_results", None).unwrap();
        if r["running"] == json!(false) {
            return r["report"].clone();
        }
        assert!(Instant::now() < deadline, "bench never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lvstore `ls0` (1 MiB segments) on `Slow0`, a delay bdev on a 64 MiB malloc `M0` whose
/// every write takes 200 ms (each volume table write, then).
fn slow_lvstore(c: &mut RpcClient) {
    c.call(
        "bdev_malloc_create",
        Some(json!({"name": "M0", "num_blocks": 16384, "block_size": 4096})),
    )
    .unwrap();
    c.call(
        "bdev_delay_create",
        Some(delay_params("M0", "Slow0", 1000, 200_000)),
    )
    .unwrap();
    c.call(
        "bdev_lvol_create_lvstore",
        Some(json!({"bdev_name": "Slow0", "lvs_name": "ls0", "cluster_sz": 1 << 20})),
    )
    .unwrap();
}

/// A new connection that asks for lvol `v{i}` (8 MiB) on lvstore `ls0`, its answer not read.
fn ask_lvol_create(a: &Appliance, i: usize) -> UnixStream {
    let s = UnixStream::connect(&a.sock).unwrap();
    (&s).write_all(
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"bdev_lvol_create","params":{{"lvol_name":"v{i}","size_in_mib":8,"lvs_name":"ls0"}}}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    s
}

/// Polls `done` every 10 ms until it holds; fails with `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_error_code_has_spdks_exact_json() {
    let a = Appliance::start("rpc_errors", &[]);
    let cases: &[(&str, &str)] = &[
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_version" "x"}"#,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":2}"#,
            r#"{"jsonrpc":"2.0","id":2,"error":{"code":-32600,"message":"Invalid request"}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"no_such_method"}"#,
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"Method not found"}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"bdev_null_create","params":{"name":"N","num_blocks":8,"block_size":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":4,"error":{"code":-32602,"message":"Invalid parameters: block_size: invalid type: string \"x\", expected u64"}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"bdev_null_create","params":{"num_blocks":8,"block_size":512}}"#,
            r#"{"jsonrpc":"2.0","id":5,"error":{"code":-32602,"message":"Invalid parameters: missing field `name`"}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"bdev_get_bdevs","params":{"nmae":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":6,"error":{"code":-32602,"message":"Invalid parameters: nmae: unknown field `nmae`, expected `name` or `timeout`"}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"unblend_test_panic"}"#,
            r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"Internal error: unblend_test_panic failed unexpectedly"}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":8,"method":"bdev_set_options","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":8,"error":{"code":-1,"message":"Method may only be called before framework is initialized. Use --wait-for-rpc command line parameter and then issue this RPC before the framework_start_init RPC."}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":9,"method":"bdev_malloc_delete","params":{"name":"nope"}}"#,
            r#"{"jsonrpc":"2.0","id":9,"error":{"code":-19,"message":"no bdev named \"nope\""}}"#,
        ),
    ];
    for (request, want) in cases {
        assert_eq!(
            &raw_exchange(&a.sock, request.as_bytes()),
            want,
            "for {request}"
        );
    }
    // Garbage that cannot be framed: a parse error, then the connection is closed.
    let mut s = UnixStream::connect(&a.sock).unwrap();
    s.write_all(b"\x00\xffnot json").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(
        all.trim_end(),
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#
    );
    // The panic did not take the appliance down.
    assert!(a.client().call("spdk_get_version", None).is_ok());
    a.stop();
}

/// A deferred answer (a handler that must wait, as `bdev_lvol_delete_lvstore` waits for its
/// cleaner): the connection's later requests are answered after it, in order; other clients
/// are served meanwhile; in a batch it is waited for; a client gone before it is forgotten.
#[test]
fn a_deferred_answer_holds_back_only_its_own_connection() {
    let a = Appliance::start("rpc_defer", &[]);
    let mut waiting = UnixStream::connect(&a.sock).unwrap();
    waiting
        .write_all(
            br#"{"jsonrpc":"2.0","id":1,"method":"unblend_test_defer","params":{"ms":1500}}
{"jsonrpc":"2.0","id":2,"method":"spdk_get_version"}
"#,
        )
        .unwrap();
    // Another client is answered while the first waits.
    let t0 = Instant::now();
    a.client().call("spdk_get_version", None).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "the other client waited"
    );
    assert_no_answer_yet(
        &waiting,
        "nothing is answered on the waiting connection before its deferred answer",
    );
    let answers = [read_answer(&waiting), read_answer(&waiting)];
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(answers[0]["result"], "deferred 1500 ms");
    assert_eq!(answers[1]["id"], 2);
    assert!(
        answers[1]["result"]["version"].is_string(),
        "{}",
        answers[1]
    );

    // In a batch: the batch waits at that request (other clients are served meanwhile),
    // then goes on, and is answered whole, in order.
    let mut batch = UnixStream::connect(&a.sock).unwrap();
    batch
        .write_all(
            br#"[{"jsonrpc":"2.0","id":1,"method":"unblend_test_defer","params":{"ms":1000}},{"jsonrpc":"2.0","id":2,"method":"spdk_get_version"},{"jsonrpc":"2.0","id":3,"method":"unblend_test_defer","params":{"ms":10}}]"#,
        )
        .unwrap();
    let t0 = Instant::now();
    a.client().call("spdk_get_version", None).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "the other client waited for the batch"
    );
    let batch = read_answer(&batch);
    assert_eq!(batch[0]["result"], "deferred 1000 ms", "{batch}");
    assert_eq!(batch[1]["id"], 2);
    assert_eq!(batch[2]["result"], "deferred 10 ms", "{batch}");
    // Bad parameters: an error at once, nothing deferred.
    let bad = raw_exchange(
        &a.sock,
        br#"{"jsonrpc":"2.0","id":3,"method":"unblend_test_defer","params":{"ms":99999}}"#,
    );
    assert!(bad.contains("-32602"), "{bad}");
    // Clients that leave before their answers: their connections wait out of the epoll set
    // (a hang-up reported on every pass kept reactor 0 busy: now under a fifth of a CPU over
    // a second), the requests they sent after the deferred one still run once it is
    // answered (here each makes a null bdev), and then their slots serve new clients.
    for i in 0..8 {
        let mut gone = UnixStream::connect(&a.sock).unwrap();
        gone.write_all(
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"unblend_test_defer","params":{{"ms":1500}}}}
{{"jsonrpc":"2.0","id":2,"method":"bdev_null_create","params":{{"name":"Gone{i}","num_blocks":8,"block_size":4096}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let ticks = a.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let busy = a.cpu_ticks() - ticks;
    assert!(busy < 20, "{busy} ticks of CPU in 1 s with clients gone");
    let mut c = a.client();
    wait_until(
        Duration::from_secs(10),
        "not all 8 held requests ran",
        || {
            let bdevs = c.call("bdev_get_bdevs", None).unwrap();
            let made = bdevs.as_array().unwrap().iter();
            made.filter(|b| b["name"].as_str().is_some_and(|n| n.starts_with("Gone")))
                .count()
                == 8
        },
    );
    a.stop();
}

#[test]
fn batches_pipelines_and_notifications() {
    let a = Appliance::start("rpc_batch", &[]);
    let mut c = a.client();
    // Three pipelined requests in one write, answered in order.
    c.send_raw(
        br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"}
{"jsonrpc":"2.0","method":"spdk_get_version"}
{"jsonrpc":"2.0","id":2,"method":"bdev_get_bdevs"} {"jsonrpc":"2.0","id":3,"method":"nope"}"#,
    )
    .unwrap();
    assert_eq!(c.recv_value().unwrap()["id"], 1);
    let second = c.recv_value().unwrap();
    assert_eq!(second["id"], 2, "a notification must get no response");
    assert!(
        second["result"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "Malloc0"),
        "{second}"
    );
    assert_eq!(c.recv_value().unwrap()["error"]["code"], -32601);
    // A batch gets an array, in order, notifications left out.
    c.send_raw(
        br#"[{"jsonrpc":"2.0","id":"a","method":"spdk_get_version"},
             {"jsonrpc":"2.0","method":"spdk_get_version"},
             {"jsonrpc":"2.0","id":"b","method":"nope"}, 42]"#,
    )
    .unwrap();
    let batch = c.recv_value().unwrap();
    let items = batch.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["id"], "a");
    assert_eq!(items[1]["error"]["code"], -32601);
    assert_eq!(items[2]["error"]["code"], -32600);
    // An empty batch is an invalid request.
    c.send_raw(b"[]").unwrap();
    assert_eq!(c.recv_value().unwrap()["error"]["code"], -32600);
    a.stop();
}

#[test]
fn wait_for_rpc_has_spdks_startup_state() {
    let a = Appliance::start("rpc_startup", &["--wait-for-rpc"]);
    let mut c = a.client();
    match c.call("bdev_get_bdevs", None) {
        Err(ClientError::Rpc { code: -1, message }) => {
            assert!(
                message.contains("after framework is initialized"),
                "{message}"
            )
        }
        other => panic!("runtime method in startup state: {other:?}"),
    }
    // framework_wait_init parks until another client starts the framework.
    let sock = a.sock.clone();
    let waiter = std::thread::spawn(move || {
        let mut w = RpcClient::connect(&sock, Duration::from_secs(20)).unwrap();
        let t = Instant::now();
        (w.call("framework_wait_init", None).unwrap(), t.elapsed())
    });
    // A waiter that half-closes its socket still gets its answer.
    let mut half = UnixStream::connect(&a.sock).unwrap();
    half.write_all(br#"{"jsonrpc":"2.0","id":"h","method":"framework_wait_init"}"#)
        .unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    // Waiters that give up and close are let go: more of them than may wait at once, then
    // one more waiter is still taken (a version of the fifteenth session pinned their slots
    // until start_init, and refused it).
    for _ in 0..unblend::rpc::MAX_INIT_WAITERS {
        let mut gone = UnixStream::connect(&a.sock).unwrap();
        gone.write_all(br#"{"jsonrpc":"2.0","id":"g","method":"framework_wait_init"}"#)
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        drop(gone);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut late = UnixStream::connect(&a.sock).unwrap();
    late.write_all(br#"{"jsonrpc":"2.0","id":"l","method":"framework_wait_init"}"#)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_no_answer_yet(&late, "a waiter past those that left is taken (it waits)");
    // Inside a batch, wait_init does not park (the batch's answer must stay one array).
    c.send_raw(br#"[{"jsonrpc":"2.0","id":1,"method":"framework_wait_init"},{"jsonrpc":"2.0","id":2,"method":"spdk_get_version"}]"#)
        .unwrap();
    let batch = c.recv_value().unwrap();
    assert_eq!(batch[0]["error"]["code"], -1, "{batch}");
    assert_eq!(batch[1]["id"], 2);
    std::thread::sleep(Duration::from_millis(300));
    assert!(c
        .call("bdev_set_options", Some(json!({"bdev_io_pool_size": 1024})))
        .is_ok());
    let current = c
        .call("rpc_get_methods", Some(json!({"current": true})))
        .unwrap();
    assert!(!current
        .as_array()
        .unwrap()
        .contains(&json!("bdev_get_bdevs")));
    assert_eq!(c.call("framework_start_init", None).unwrap(), json!(true));
    let (answer, waited) = waiter.join().unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = String::new();
    half.read_to_string(&mut got).unwrap();
    assert_eq!(
        got.trim_end(),
        r#"{"jsonrpc":"2.0","id":"h","result":true}"#
    );
    assert_eq!(answer, json!(true));
    assert!(
        waited >= Duration::from_millis(250),
        "wait_init answered early"
    );
    assert_eq!(c.call("bdev_get_bdevs", None).unwrap(), json!([]));
    a.stop();
}

#[test]
fn socket_of_a_live_appliance_is_refused_and_a_stale_one_replaced() {
    let a = Appliance::start("rpc_sock", &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_unblend"))
        .args(["serve", "-m", "0x1", "-r", a.sock.to_str().unwrap()])
        .env("UNBLEND_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to a running appliance"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&a.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    a.stop();

    // A socket file nobody listens on is stale: removed, said so, and replaced.
    let stale_dir = common::TestDir::new("rpc_stale");
    let stale = stale_dir.join("s.sock");
    let stale_data = stale_dir.join("data");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut child = Command::new(env!("CARGO_BIN_EXE_unblend"))
        .args([
            "serve",
            "-m",
            "0x1",
            "-r",
            stale.to_str().unwrap(),
            "-d",
            stale_data.to_str().unwrap(),
        ])
        .env("UNBLEND_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    while !text.contains("running;") {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "{text}");
        text.push_str(&line);
    }
    assert!(text.contains("removed stale RPC socket"), "{text}");
    let mut c = RpcClient::connect(&stale, Duration::from_secs(5)).unwrap();
    assert_eq!(
        c.call("spdk_kill_instance", Some(json!({"sig_name": "SIGINT"})))
            .unwrap(),
        json!(true)
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn slow_and_vanishing_clients_affect_nobody_else() {
    let a = Appliance::start("rpc_slow", &[]);
    // A client that pipelines requests and never reads its answers.
    let mut hog = UnixStream::connect(&a.sock).unwrap();
    hog.set_nonblocking(true).unwrap();
    let req = br#"{"jsonrpc":"2.0","id":1,"method":"bdev_get_bdevs"}"#;
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match hog.write(req) {
            Ok(n) => sent += n,
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    assert!(sent > 50_000, "the hog could only send {sent} bytes");
    // Clients that vanish mid-request.
    for cut in [1usize, 10, 30] {
        let mut s = UnixStream::connect(&a.sock).unwrap();
        s.write_all(&req[..cut]).unwrap();
    }
    // Everyone else is still answered promptly.
    let mut c = a.client();
    for _ in 0..50 {
        let t = Instant::now();
        c.call("spdk_get_version", None).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "answer took {:?}",
            t.elapsed()
        );
    }
    drop(c);
    // And the stalled client does not keep the (adaptive) reactor spinning: its unread
    // socket is not polled while it is backpressured.
    std::thread::sleep(Duration::from_millis(300));
    let cpu = a.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = a.cpu_ticks() - cpu;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used * 100 < hz * 30,
        "appliance used {used} ticks of {hz} in 1 s with a stalled client"
    );
    drop(hog);
    a.stop();
}

/// A deterministic xorshift generator, so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn hostile_request(rng: &mut Rng, i: usize) -> Vec<u8> {
    let templates = [
        r#"{"jsonrpc":"2.0","id":1,"method":"bdev_get_bdevs","params":{"name":"Malloc0"}}"#,
        r#"{"jsonrpc":"2.0","id":"x","method":"bdev_null_create","params":{"name":"H","num_blocks":8,"block_size":512}}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"framework_get_config","params":{"name":"bdev"}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"bdev_malloc_delete","params":{"name":"nope"}}"#,
        r#"[{"jsonrpc":"2.0","id":4,"method":"thread_get_stats"},{"jsonrpc":"2.0","id":5,"method":"rpc_get_methods"}]"#,
        // A pool (lvstore) and its volumes, on a malloc bdev of 64 MiB.
        r#"{"jsonrpc":"2.0","id":6,"method":"bdev_malloc_create","params":{"name":"HM","num_blocks":16384,"block_size":4096}}"#,
        r#"{"jsonrpc":"2.0","id":7,"method":"bdev_lvol_create_lvstore","params":{"bdev_name":"HM","lvs_name":"hl","cluster_sz":1048576}}"#,
        r#"{"jsonrpc":"2.0","id":8,"method":"bdev_lvol_create","params":{"lvol_name":"hv","size_in_mib":4,"lvs_name":"hl","thin_provision":true}}"#,
        r#"{"jsonrpc":"2.0","id":9,"method":"bdev_lvol_resize","params":{"name":"hl/hv","size_in_mib":8}}"#,
        r#"{"jsonrpc":"2.0","id":10,"method":"bdev_lvol_get_lvols","params":{"lvs_name":"hl"}}"#,
        r#"{"jsonrpc":"2.0","id":11,"method":"unblend_lsv_get_stats","params":{"lvs_name":"hl"}}"#,
        r#"{"jsonrpc":"2.0","id":12,"method":"bdev_lvol_delete","params":{"name":"hl/hv"}}"#,
        r#"{"jsonrpc":"2.0","id":13,"method":"bdev_lvol_delete_lvstore","params":{"lvs_name":"hl"}}"#,
    ];
    let base = templates[rng.below(templates.len() as u64) as usize].as_bytes();
    match i % 9 {
        // Truncated.
        0 => base[..rng.below(base.len() as u64) as usize].to_vec(),
        // Random bytes flipped.
        1 => {
            let mut v = base.to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(v.len() as u64) as usize;
                v[at] = rng.next() as u8;
            }
            v
        }
        // Deep nesting.
        2 => {
            let depth = 1 + rng.below(10_000) as usize;
            let mut v = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":".to_vec();
            v.extend(std::iter::repeat_n(b'[', depth));
            v.extend(std::iter::repeat_n(b']', depth));
            v.push(b'}');
            v
        }
        // Huge numbers.
        3 => format!(
            r#"{{"jsonrpc":"2.0","id":1e999999,"method":"bdev_null_create","params":{{"name":"Big","num_blocks":{}{},"block_size":1e400}}}}"#,
            rng.next(),
            "9".repeat(rng.below(400) as usize)
        )
        .into_bytes(),
        // Wrong types everywhere.
        4 => {
            let vals = [r#"null"#, r#"true"#, r#"-1"#, r#""s""#, r#"[1,2]"#, r#"{"a":{}}"#, r#"1.5"#];
            let mut pick = || vals[rng.below(vals.len() as u64) as usize];
            format!(
                r#"{{"jsonrpc":{},"id":{},"method":{},"params":{{"name":{},"num_blocks":{},"block_size":{}}}}}"#,
                pick(), pick(), pick(), pick(), pick(), pick()
            )
            .into_bytes()
        }
        // Binary garbage.
        5 => (0..1 + rng.below(512)).map(|_| rng.next() as u8).collect(),
        // A valid request, pipelined twice with garbage between.
        6 => {
            let mut v = base.to_vec();
            v.extend_from_slice(b" \x01\x02 ");
            v.extend_from_slice(base);
            v
        }
        // A pool or volume size, or a segment size, at an extreme.
        8 => {
            let vals = [
                "0", "1", "-1", "3", "4095", "4096", "1048575", "268435456", "536870912",
                "2147483648", "4294967296", "4398046511104", "9007199254740993",
                "18446744073709551615", "18446744073709551616", "1e300", "1.5",
            ];
            let v = vals[rng.below(vals.len() as u64) as usize];
            match rng.below(3) {
                0 => format!(
                    r#"{{"jsonrpc":"2.0","id":7,"method":"bdev_lvol_create_lvstore","params":{{"bdev_name":"HM","lvs_name":"hl","cluster_sz":{v}}}}}"#
                ),
                1 => format!(
                    r#"{{"jsonrpc":"2.0","id":8,"method":"bdev_lvol_create","params":{{"lvol_name":"hv","size_in_mib":{v},"lvs_name":"hl"}}}}"#
                ),
                _ => format!(
                    r#"{{"jsonrpc":"2.0","id":9,"method":"bdev_lvol_resize","params":{{"name":"hl/hv","size_in_mib":{v}}}}}"#
                ),
            }
            .into_bytes()
        }
        // Long strings; every 1000th request carries a 10 MB one.
        _ => {
            let len = if i % 1000 == 7 { 10 << 20 } else { rng.below(4096) as usize };
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"bdev_get_bdevs","params":{{"name":"{}"}}}}"#,
                "A".repeat(len)
            )
            .into_bytes()
        }
    }
}

#[test]
fn ten_thousand_hostile_requests_leave_it_answering_with_bounded_memory() {
    let a = Appliance::start("rpc_hostile", &[]);
    let mut c = a.client();
    c.call("spdk_get_version", None).unwrap();
    let rss_before = a.rss_kib();
    const TOTAL: usize = 10_000;
    const THREADS: usize = 8;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let sock = a.sock.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                for i in (t..TOTAL).step_by(THREADS) {
                    let req = hostile_request(&mut rng, i);
                    let mut s = UnixStream::connect(&sock).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    // The server may close on garbage before reading everything.
                    let _ = s.write_all(&req);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // Still answering, correctly.
    let mut c = a.client();
    let bdevs = c.call("bdev_get_bdevs", None).unwrap();
    assert!(bdevs
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["name"] == "Malloc0"));
    let rss_after = a.rss_kib();
    assert!(
        rss_after < rss_before + 128 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    a.stop();
}

#[test]
fn unblend_rpc_command_shows_results_and_errors_plainly() {
    let a = Appliance::start("rpc_cli", &[]);
    let run = |args: &[&str]| {
        let mut all = vec!["rpc", "-s", a.sock.to_str().unwrap()];
        all.extend_from_slice(args);
        Command::new(env!("CARGO_BIN_EXE_unblend"))
            .args(&all)
            .output()
            .unwrap()
    };
    let out = run(&[
        "bdev_null_create",
        "name=N1",
        "num_blocks=64",
        "block_size=4096",
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"N1\"");
    let out = run(&["bdev_get_bdevs", "-j", r#"{"name":"N1"}"#]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["num_blocks"], 64);
    let out = run(&[
        "bdev_null_create",
        "name=N1",
        "num_blocks=64",
        "block_size=4096",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JSON-RPC error -17") && err.contains("already exists"),
        "{err}"
    );
    a.stop();
}

#[test]
fn a_failed_framework_start_init_keeps_the_config_for_a_retry() {
    let dir = common::TestDir::new("rpc_start_retry");
    let img = dir.join("late.img");
    let cfg = dir.join("c.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"subsystems":[{{"subsystem":"bdev","config":[
            {{"method":"bdev_uring_create","params":{{"name":"U0","filename":"{}","block_size":4096}}}}]}}]}}"#,
            img.display()
        ),
    )
    .unwrap();
    let a = Appliance::start(
        "rpc_start_retry_srv",
        &["--wait-for-rpc", "--config", cfg.to_str().unwrap()],
    );
    let mut c = a.client();
    match c.call("framework_start_init", None) {
        Err(ClientError::Rpc { code: -1, message }) => {
            assert!(message.contains("does not exist"), "{message}")
        }
        other => panic!("start_init with a missing file: {other:?}"),
    }
    sparse_file(&img, 1 << 20);
    assert_eq!(c.call("framework_start_init", None).unwrap(), json!(true));
    let b = c
        .call("bdev_get_bdevs", Some(json!({"name": "U0"})))
        .unwrap();
    assert_eq!(b[0]["num_blocks"], 256);
    a.stop();
}

#[test]
fn lvol_volume_takes_io_and_reports_its_stats() {
    let a = Appliance::start("rpc_lvol", &[]);
    let img = a.sock.parent().unwrap().join("pool.img");
    // Room (sparse) for the log of a 1 s sequential-write run: there is no cleaner yet.
    sparse_file(&img, 1 << 30);
    let mut c = a.client();
    c.call(
        "bdev_uring_create",
        Some(json!({"name": "P0", "filename": img.to_str().unwrap(), "block_size": 4096})),
    )
    .unwrap();
    c.call(
        "bdev_lvol_create_lvstore",
        Some(json!({"bdev_name": "P0", "lvs_name": "lvsT", "cluster_sz": 1 << 20})),
    )
    .unwrap();
    let name = c
        .call(
            "bdev_lvol_create",
            Some(json!({"lvs_name": "lvsT", "lvol_name": "v", "size_in_mib": 4})),
        )
        .unwrap();
    assert_eq!(name, json!("lvsT/v"));
    // Write every block of the 4 MiB volume through the appliance's own reactors.
    c.call(
        "unblend_bench_start",
        Some(json!({"bdev_name": "lvsT/v", "workload": "write", "queue_depth": 4, "io_size": 4096, "seconds": 1})),
    )
    .unwrap();
    let report = bench_report(&mut c);
    assert_eq!(report["total"]["errors"], 0, "{report}");
    assert!(report["total"]["ios"].as_u64().unwrap() >= 1024, "{report}");
    let stats = c
        .call("unblend_lsv_get_stats", Some(json!({"lvs_name": "lvsT"})))
        .unwrap();
    let s = &stats[0];
    assert_eq!(s["name"], "lvsT");
    assert_eq!(s["mapped_blocks"], 1024, "{s}");
    let wa = s["write_amplification"].as_f64().unwrap();
    assert!((1.0..1.5).contains(&wa), "write amplification {wa}");
    // A 4 MiB volume pays for one 4 KiB radix node besides its two leaves (12 B per block);
    // the dense unit test shows 8 B per block once the node is amortised.
    assert!(
        s["extent_table_bytes_per_mapped_block"].as_f64().unwrap() <= 12.1,
        "{s}"
    );
    assert!(s["live_bytes"].as_u64().unwrap() == 4 << 20, "{s}");
    // The segment summaries in memory: 8 bytes (a sequence number) per block of each
    // segment written, so at least the 1,024 blocks written, in whole segments. Which write
    // each block holds is on disk (12 bytes a block were in memory before format 4).
    let summary = s["segment_summary_bytes"].as_u64().unwrap();
    let per_segment = 8 * s["segment_bytes"].as_u64().unwrap() / 4096;
    assert!(
        summary >= 8 * 1024 && summary.is_multiple_of(per_segment),
        "{s}"
    );

    // Resize: growing shows at once; shrinking drops (and frees) the blocks past the end.
    let size = |c: &mut RpcClient| {
        c.call("bdev_get_bdevs", Some(json!({"name": "lvsT/v"})))
            .unwrap()[0]["num_blocks"]
            .as_u64()
            .unwrap()
    };
    c.call(
        "bdev_lvol_resize",
        Some(json!({"name": "lvsT/v", "size_in_mib": 8})),
    )
    .unwrap();
    assert_eq!(size(&mut c), 2048);
    c.call(
        "bdev_lvol_resize",
        Some(json!({"name": "lvsT/v", "size_in_mib": 2})),
    )
    .unwrap();
    assert_eq!(size(&mut c), 512);
    // The freed blocks come off the live counts when the cleaner is next between victims.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let s = loop {
        let s = c
            .call("unblend_lsv_get_stats", Some(json!({"lvs_name": "lvsT"})))
            .unwrap()[0]
            .clone();
        if s["live_bytes"] == 2 << 20 || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(s["mapped_blocks"], 512, "{s}");
    assert_eq!(s["live_bytes"], 2 << 20, "{s}");
    let e = c
        .call(
            "bdev_lvol_resize",
            Some(json!({"name": "lvsT/v", "size_in_mib": 1 << 20})),
        )
        .unwrap_err();
    assert!(e.to_string().contains("can grow to"), "{e}");
    // Two grows in a row: the second must first retire the first's fence with two
    // checkpoints; the cleaner writes them (asked for), and the answer waits for them. Until
    // the fifteenth session the RPC wrote them itself, on reactor 0, or answered EBUSY (to be
    // retried) when the cleaner was writing one.
    let requested = |c: &mut RpcClient| {
        c.call("unblend_lsv_get_stats", Some(json!({"lvs_name": "lvsT"})))
            .unwrap()[0]["checkpoint"]["begun_for"]["requested"]
            .as_u64()
            .unwrap()
    };
    let before = requested(&mut c);
    for mib in [4, 6] {
        c.call(
            "bdev_lvol_resize",
            Some(json!({"name": "lvsT/v", "size_in_mib": mib})),
        )
        .unwrap_or_else(|e| panic!("grow to {mib} MiB: {e}"));
        assert_eq!(size(&mut c), mib * 256);
    }
    assert!(
        requested(&mut c) >= before + 2,
        "the cleaner wrote the checkpoints"
    );
    a.stop();
}

/// An lvstore claims its base bdev, as SPDK's lvol module does: while it is loaded, no vhost
/// controller exports the base writable, the base is not deleted, and an lvol holding a
/// nested lvstore is not deleted; nor is an lvstore formatted over a bdev a controller
/// exports. Each refusal is EBUSY with the holder named; once the lvstore is gone (and its
/// cleaner has stopped writing), all of it works.
#[test]
fn an_lvstore_claims_its_base_bdev() {
    let a = Appliance::start("rpc_claims", &[]);
    let mut c = a.client();
    let busy = |c: &mut RpcClient, method: &str, params: Value, holder: &str| match c
        .call(method, Some(params.clone()))
    {
        Err(ClientError::Rpc { code, message }) => {
            assert_eq!(code, -libc::EBUSY as i64, "{method} {params}: {message}");
            assert!(message.contains(holder), "{method}: {message}");
        }
        other => panic!("{method} {params}: {other:?}"),
    };
    for m in ["M0", "M1"] {
        c.call(
            "bdev_malloc_create",
            Some(json!({"name": m, "num_blocks": 16384, "block_size": 4096})),
        )
        .unwrap();
    }
    let claimed = |c: &mut RpcClient, name: &str| {
        c.call("bdev_get_bdevs", Some(json!({ "name": name })))
            .unwrap()[0]["claimed"]
            .clone()
    };
    assert_eq!(claimed(&mut c, "M0"), json!(false));
    c.call(
        "bdev_lvol_create_lvstore",
        Some(json!({"bdev_name": "M0", "lvs_name": "ls0", "cluster_sz": 1 << 20})),
    )
    .unwrap();
    c.call(
        "bdev_lvol_create",
        Some(json!({"lvs_name": "ls0", "lvol_name": "v0", "size_in_mib": 16})),
    )
    .unwrap();
    let infos = c
        .call("bdev_get_bdevs", Some(json!({"name": "M0"})))
        .unwrap();
    assert_eq!(infos[0]["claimed"], json!(true));
    assert_eq!(infos[0]["claim_type"], json!("exclusive_write"));
    assert_eq!(claimed(&mut c, "ls0/v0"), json!(false));

    busy(
        &mut c,
        "vhost_create_blk_controller",
        json!({"ctrlr": "c0", "dev_name": "M0"}),
        "lvstore ls0",
    );
    busy(
        &mut c,
        "bdev_malloc_delete",
        json!({"name": "M0"}),
        "lvstore ls0",
    );
    // Nor does the appliance's bench write it (until it did, and overwrote the pool).
    busy(
        &mut c,
        "unblend_bench_start",
        json!({"bdev_name": "M0", "workload": "randwrite", "seconds": 1}),
        "lvstore ls0",
    );
    // Read-only, a controller may show the base.
    c.call(
        "vhost_create_blk_controller",
        Some(json!({"ctrlr": "c0", "dev_name": "M0", "readonly": true})),
    )
    .unwrap();
    c.call("vhost_delete_controller", Some(json!({"ctrlr": "c0"})))
        .unwrap();

    // A nested lvstore claims its lvol.
    c.call(
        "bdev_lvol_create_lvstore",
        Some(json!({"bdev_name": "ls0/v0", "lvs_name": "ls1", "cluster_sz": 1 << 20})),
    )
    .unwrap();
    busy(
        &mut c,
        "bdev_lvol_delete",
        json!({"name": "ls0/v0"}),
        "lvstore ls1",
    );
    // Nor does its lvstore go, though an lvstore's delete takes its lvols with it.
    busy(
        &mut c,
        "bdev_lvol_delete_lvstore",
        json!({"lvs_name": "ls0"}),
        "lvstore ls1",
    );
    assert_eq!(claimed(&mut c, "ls0/v0"), json!(true));

    // A bdev a controller exports is not formatted: the refusal writes nothing.
    c.call(
        "vhost_create_blk_controller",
        Some(json!({"ctrlr": "c1", "dev_name": "M1"})),
    )
    .unwrap();
    busy(
        &mut c,
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": "M1", "lvs_name": "lvsX"}),
        "vhost controller c1",
    );
    let stores = c.call("bdev_lvol_get_lvstores", None).unwrap();
    assert!(
        stores
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["name"] != "lvsX"),
        "{stores}"
    );
    // The embedded default's pool claims its file bdev too.
    assert_eq!(claimed(&mut c, "Data0"), json!(true));
    busy(
        &mut c,
        "bdev_uring_delete",
        json!({"name": "Data0"}),
        "lvstore lvs0",
    );

    // Unwound in order, each claim goes with its lvstore: once its cleaner has stopped
    // writing (on one reactor, as here, its next poll: 10 ms); till then the claim says so.
    let unclaimed = |c: &mut RpcClient, name: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while claimed(c, name) == json!(true) {
            assert!(
                Instant::now() < deadline,
                "{name} still claimed after its lvstore went"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    c.call("bdev_lvol_delete_lvstore", Some(json!({"lvs_name": "ls1"})))
        .unwrap();
    unclaimed(&mut c, "ls0/v0");
    c.call("bdev_lvol_delete", Some(json!({"name": "ls0/v0"})))
        .unwrap();
    c.call("bdev_lvol_delete_lvstore", Some(json!({"lvs_name": "ls0"})))
        .unwrap();
    unclaimed(&mut c, "M0");
    c.call("bdev_malloc_delete", Some(json!({"name": "M0"})))
        .unwrap();
    c.call("vhost_delete_controller", Some(json!({"ctrlr": "c1"})))
        .unwrap();
    a.stop();
}

/// `bdev_lvol_create_lvstore` formats on a thread of its own and answers once the pool is
/// loaded: meanwhile reactor 0 serves other clients, the name and the base are taken, and a
/// client that leaves before the answer still gets its pool. (Until the fifteenth session the
/// format ran on reactor 0: 1.5 s of no I/O and no RPC for a 256 GiB pool.)
#[test]
fn an_lvstore_is_formatted_off_reactor_0() {
    let a = Appliance::start("rpc_format", &[]);
    let mut c = a.client();
    for (malloc, slow) in [("M0", "Slow0"), ("M1", "Slow1")] {
        c.call(
            "bdev_malloc_create",
            Some(json!({"name": malloc, "num_blocks": 262144, "block_size": 4096})),
        )
        .unwrap();
        // Every write 20 ms: the format's 2,000-odd writes, 32 at a time, take over a second.
        c.call(
            "bdev_delay_create",
            Some(delay_params(malloc, slow, 20000, 20000)),
        )
        .unwrap();
    }
    c.call(
        "bdev_malloc_create",
        Some(json!({"name": "M2", "num_blocks": 16384, "block_size": 4096})),
    )
    .unwrap();
    let create = |bdev: &str, lvs: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"bdev_lvol_create_lvstore","params":{{"bdev_name":"{bdev}","lvs_name":"{lvs}","cluster_sz":1048576}}}}"#
        )
    };
    let mut waiting = UnixStream::connect(&a.sock).unwrap();
    waiting
        .write_all(create("Slow0", "ls0").as_bytes())
        .unwrap();
    // Served meanwhile: the name and the base are taken.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        error_code(c.call(
            "bdev_lvol_create_lvstore",
            Some(json!({"bdev_name": "M2", "lvs_name": "ls0"}))
        )),
        -libc::EEXIST as i64
    );
    assert_eq!(
        error_code(c.call("bdev_delay_delete", Some(json!({"name": "Slow0"})))),
        -libc::EBUSY as i64
    );
    assert_eq!(
        lvstores_named(&mut c, "ls0"),
        [] as [Value; 0],
        "not loaded before it is formatted"
    );
    assert_no_answer_yet(&waiting, "the format is still running: the answer waits");
    let answer = read_answer(&waiting);
    let uuid = answer["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(lvstores_named(&mut c, "ls0")[0]["uuid"], uuid);

    // A client that leaves before the answer: the pool is loaded all the same.
    let mut gone = UnixStream::connect(&a.sock).unwrap();
    gone.write_all(create("Slow1", "ls1").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(gone);
    wait_until(Duration::from_secs(30), "ls1 was never loaded", || {
        lvstores_named(&mut c, "ls1")
            .first()
            .is_some_and(|l| l["base_bdev"] == "Slow1")
    });
    a.stop();
}

/// `bdev_lvol_create`, `bdev_lvol_resize` and `bdev_lvol_delete` write the volume table (and
/// walk the volume's map) on a thread of their own, and answer once done: meanwhile reactor
/// 0 serves other clients, and the lvol is claimed by the delete (a second delete is
/// refused). (Until the sixteenth session they ran on reactor 0: here, the 200 ms write held
/// every other client back.)
#[test]
fn an_lvol_is_created_resized_and_deleted_off_reactor_0() {
    let a = Appliance::start("rpc_lvol_delete", &[]);
    let mut c = a.client();
    slow_lvstore(&mut c);
    let mut waiting = UnixStream::connect(&a.sock).unwrap();
    // Sends `request` on `waiting`, checks that another client is served while its volume
    // table write runs, and returns its answer.
    let answered_later = |waiting: &mut UnixStream, c: &mut RpcClient, request: &str| {
        waiting.write_all(request.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c.call("spdk_get_version", None).unwrap();
        assert_no_answer_yet(
            waiting,
            &format!("still writing the volume table: {request}"),
        );
        read_answer(waiting)
    };
    let answer = answered_later(
        &mut waiting,
        &mut c,
        r#"{"jsonrpc":"2.0","id":1,"method":"bdev_lvol_create","params":{"lvol_name":"v0","size_in_mib":8,"lvs_name":"ls0"}}"#,
    );
    assert_eq!(answer["result"], "ls0/v0", "{answer}");
    let answer = answered_later(
        &mut waiting,
        &mut c,
        r#"{"jsonrpc":"2.0","id":1,"method":"bdev_lvol_resize","params":{"name":"ls0/v0","size_in_mib":4}}"#,
    );
    assert_eq!(answer["result"], true, "{answer}");
    let listed = c
        .call("bdev_get_bdevs", Some(json!({"name": "ls0/v0"})))
        .unwrap();
    assert_eq!(listed[0]["num_blocks"], 1024, "{listed}");
    waiting
        .write_all(
            br#"{"jsonrpc":"2.0","id":2,"method":"bdev_lvol_delete","params":{"name":"ls0/v0"}}"#,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // Served while the volume table is written: the lvol is still there, claimed.
    let listed = c
        .call("bdev_get_bdevs", Some(json!({"name": "ls0/v0"})))
        .unwrap();
    assert_eq!(listed[0]["claimed"], true, "{listed}");
    assert_eq!(
        error_code(c.call("bdev_lvol_delete", Some(json!({"name": "ls0/v0"})))),
        -libc::EBUSY as i64
    );
    assert_no_answer_yet(&waiting, "the volume table's write is still running");
    let answer = read_answer(&waiting);
    assert_eq!(answer["result"], true, "{answer}");
    assert!(
        c.call("bdev_get_bdevs", Some(json!({"name": "ls0/v0"})))
            .is_err(),
        "the lvol is still listed after its delete answered"
    );
    a.stop();
}

/// One lvstore's lvol operations, queued behind a slow one, hold one job thread, not all of
/// them: another lvstore's create is served before any of the first one's. (With the job
/// slots shared by every lvstore, 4 of the slow one's jobs took all 4, waiting on its lock,
/// and the other waited for one of them to finish.)
#[test]
fn a_slow_lvstores_lvol_jobs_leave_others_served() {
    let a = Appliance::start("rpc_lvol_turns", &[]);
    let mut c = a.client();
    slow_lvstore(&mut c);
    c.call(
        "bdev_malloc_create",
        Some(json!({"name": "M1", "num_blocks": 16384, "block_size": 4096})),
    )
    .unwrap();
    c.call(
        "bdev_lvol_create_lvstore",
        Some(json!({"bdev_name": "M1", "lvs_name": "ls1", "cluster_sz": 1 << 20})),
    )
    .unwrap();
    let slow: Vec<UnixStream> = (0..5).map(|i| ask_lvol_create(&a, i)).collect();
    std::thread::sleep(Duration::from_millis(50));
    c.call(
        "bdev_lvol_create",
        Some(json!({"lvol_name": "w", "size_in_mib": 8, "lvs_name": "ls1"})),
    )
    .unwrap();
    for s in &slow {
        assert_no_answer_yet(s, "a slow lvstore's create answered before the other's");
    }
    for s in &slow {
        let answer = read_answer(s);
        assert!(answer["result"].is_string(), "{answer}");
    }
    a.stop();
}

/// Lvol operations that wait for their lvstore's turn are answered in the order they came:
/// none is passed by a later one. Until 02ae547 the RPC server dropped a finished deferred
/// answer with `swap_remove`, which moved the newest waiter to the front, so the last
/// create ran second.
#[test]
fn lvol_operations_waiting_for_their_lvstore_run_in_the_order_they_came() {
    let a = Appliance::start("rpc_lvol_order", &[]);
    let mut c = a.client();
    slow_lvstore(&mut c);
    let waiting: Vec<UnixStream> = (0..4)
        .map(|i| {
            let s = ask_lvol_create(&a, i);
            // Read in its own pass: the order they came is the order sent.
            std::thread::sleep(Duration::from_millis(20));
            s
        })
        .collect();
    let answered: Vec<Instant> = std::thread::scope(|scope| {
        let readers: Vec<_> = waiting
            .iter()
            .map(|s| {
                scope.spawn(move || {
                    let answer = read_answer(s);
                    assert!(answer["result"].is_string(), "{answer}");
                    Instant::now()
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut order: Vec<usize> = (0..answered.len()).collect();
    order.sort_by_key(|&i| answered[i]);
    assert_eq!(
        order,
        [0, 1, 2, 3],
        "the creates were answered out of order"
    );
    a.stop();
}

/// An lvstore deleted while an lvol's create is still writing the volume table: the delete
/// waits for that write (nothing of the pool writes the base once it goes), the create
/// answers ENODEV, and no bdev is left for a volume of the destroyed pool.
#[test]
fn an_lvstore_deleted_during_an_lvol_create_leaves_no_lvol() {
    let a = Appliance::start("rpc_create_destroy", &[]);
    let mut c = a.client();
    slow_lvstore(&mut c);
    let creating = UnixStream::connect(&a.sock).unwrap();
    (&creating)
        .write_all(
            br#"{"jsonrpc":"2.0","id":1,"method":"bdev_lvol_create","params":{"lvol_name":"v0","size_in_mib":8,"lvs_name":"ls0"}}"#,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.call("bdev_lvol_delete_lvstore", Some(json!({"lvs_name": "ls0"})))
        .unwrap();
    let answer = read_answer(&creating);
    assert_eq!(answer["error"]["code"], -libc::ENODEV, "{answer}");
    assert!(
        c.call("bdev_get_bdevs", Some(json!({"name": "ls0/v0"})))
            .is_err(),
        "an lvol of the deleted lvstore is registered"
    );
    // The base is free: deleted at once.
    c.call("bdev_delay_delete", Some(json!({"name": "Slow0"})))
        .unwrap();
    a.stop();
}

/// A bdev created over a pool brings it back (examine) on a thread of its own: the create
/// answers once the pool is loaded, and meanwhile reactor 0 serves other clients and the
/// base is claimed. (Until the fifteenth session the pool's recovery ran on reactor 0.)
#[test]
fn a_pool_is_examined_off_reactor_0() {
    let a = Appliance::start("rpc_examine", &[]);
    let mut c = a.client();
    c.call(
        "bdev_malloc_create",
        Some(json!({"name": "M0", "num_blocks": 262144, "block_size": 4096})),
    )
    .unwrap();
    let slow = delay_params("M0", "Slow0", 100_000, 1000);
    c.call("bdev_delay_create", Some(slow.clone())).unwrap();
    c.call(
        "bdev_lvol_create_lvstore",
        Some(json!({"bdev_name": "Slow0", "lvs_name": "ls0", "cluster_sz": 1 << 20})),
    )
    .unwrap();
    // Unloaded, not destroyed (`bdev_lvol_delete_lvstore` would erase it).
    c.call(
        "unblend_test_unload_lvstore",
        Some(json!({"lvs_name": "ls0"})),
    )
    .unwrap();
    c.call("bdev_delay_delete", Some(json!({"name": "Slow0"})))
        .unwrap();
    // Every read 100 ms: the recovery's reads, one after another, take about a second.
    let mut waiting = UnixStream::connect(&a.sock).unwrap();
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_delay_create", "params": slow});
    waiting.write_all(request.to_string().as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        lvstores_named(&mut c, "ls0"),
        [] as [Value; 0],
        "not loaded yet"
    );
    assert_eq!(
        error_code(c.call("bdev_delay_delete", Some(json!({"name": "Slow0"})))),
        -libc::EBUSY as i64,
        "the base is claimed while its pool loads"
    );
    assert_no_answer_yet(&waiting, "the pool is still loading: the answer waits");
    let answer = read_answer(&waiting);
    assert_eq!(answer["result"], "Slow0", "{answer}");
    let ls0 = lvstores_named(&mut c, "ls0");
    assert!(
        ls0.iter().any(|l| l["base_bdev"] == "Slow0"),
        "loaded when the create answers: {ls0:?}"
    );
    a.stop();
}

/// A new bdev's first reads (is there a pool on it?) wait for its device on a job thread,
/// not on reactor 0: while a bdev whose every read takes a second is created, other clients
/// are served, the bdev is claimed (nothing formats it meanwhile), and the create answers
/// once the reads are done. With the reads on reactor 0, the second client waited the
/// second out.
#[test]
fn a_new_bdevs_examine_reads_do_not_hold_reactor_0() {
    let a = Appliance::start("rpc_examine_reads", &[]);
    let mut c = a.client();
    c.call(
        "bdev_malloc_create",
        Some(json!({"name": "M0", "num_blocks": 16384, "block_size": 4096})),
    )
    .unwrap();
    let mut waiting = UnixStream::connect(&a.sock).unwrap();
    let slow = delay_params("M0", "Slow0", 1_000_000, 1000);
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_delay_create", "params": slow});
    let asked = Instant::now();
    waiting.write_all(request.to_string().as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let served = Instant::now();
    let bdevs = c.call("bdev_get_bdevs", None).unwrap();
    assert!(
        served.elapsed() < Duration::from_millis(500),
        "another client waited {:?} for the examine's reads",
        served.elapsed()
    );
    assert!(bdevs.to_string().contains("Slow0"), "{bdevs}");
    assert_eq!(
        error_code(c.call(
            "bdev_lvol_create_lvstore",
            Some(json!({"bdev_name": "Slow0", "lvs_name": "ls0"})),
        )),
        -libc::EBUSY as i64,
        "the bdev is claimed while examine reads it"
    );
    assert_no_answer_yet(&waiting, "the examine still reads: the answer waits");
    let answer = read_answer(&waiting);
    assert_eq!(answer["result"], "Slow0", "{answer}");
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "it read the superblock"
    );
    // No pool there: the claim is let go, and the bdev can be formatted.
    c.call(
        "bdev_lvol_create_lvstore",
        Some(json!({"bdev_name": "Slow0", "lvs_name": "ls0", "cluster_sz": 1 << 20})),
    )
    .unwrap();
    a.stop();
}

/// A second bdev on the file of a loaded pool is refused (the registry takes no two bdevs
/// on one file or device), and nothing is written to the live pool through it. In the
/// first version of the off-reactor examine its examine recovered a stale copy of the live
/// pool and wrote a checkpoint into it before it saw the pool was loaded already; examine
/// also refuses a pool whose uuid or name is loaded, before writing.
#[test]
fn a_second_bdev_on_a_live_pools_file_writes_nothing() {
    let a = Appliance::start("rpc_alias", &[]);
    let mut c = a.client();
    let file = a._dir.join("pool.img");
    sparse_file(&file, 64 << 20);
    c.call(
        "bdev_uring_create",
        Some(json!({"name": "U1", "filename": file, "block_size": 4096})),
    )
    .unwrap();
    c.call(
        "bdev_lvol_create_lvstore",
        Some(json!({"bdev_name": "U1", "lvs_name": "ls", "cluster_sz": 1 << 20})),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = std::fs::read(&file).unwrap();
    // Refused: the file is U1's already.
    match c.call(
        "bdev_uring_create",
        Some(json!({"name": "U2", "filename": file, "block_size": 4096})),
    ) {
        Err(ClientError::Rpc { code, message }) => {
            assert_eq!(code, -libc::EEXIST as i64, "{message}");
            assert!(message.contains("U1"), "{message}");
        }
        other => panic!("a second bdev on the file: {other:?}"),
    }
    let bases = |c: &mut RpcClient| {
        let ls = lvstores_named(c, "ls");
        ls.iter()
            .map(|l| l["base_bdev"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(bases(&mut c), [json!("U1")]);
    assert!(
        std::fs::read(&file).unwrap() == before,
        "the pool's file changed"
    );
    // A copy of the file (another inode, the same pool uuid and name): the bdev is made, but
    // its pool is not loaded, and nothing is written to the copy.
    let copy = a._dir.join("copy.img");
    std::fs::write(&copy, &before).unwrap();
    let made = c
        .call(
            "bdev_uring_create",
            Some(json!({"name": "U3", "filename": copy, "block_size": 4096})),
        )
        .unwrap();
    assert_eq!(made, "U3");
    assert_eq!(bases(&mut c), [json!("U1")]);
    assert!(
        std::fs::read(&copy).unwrap() == before,
        "the copy was written"
    );
    a.stop();
}

/// Deleting an lvstore answers once its cleaner has stopped writing (on its own reactor, or
/// on reactor 0 with the RPC server): the base is free the moment the RPC answers, and can be
/// deleted at once. Until the fifteenth session, one reactor answered first, and the
/// delete got EBUSY until the cleaner's next poll.
fn a_deleted_lvstores_base_is_free_when_the_rpc_answers(name: &str, cpumask: &str) {
    let a = Appliance::start(name, &["-m", cpumask]);
    let mut c = a.client();
    for i in 0..3 {
        c.call(
            "bdev_malloc_create",
            Some(json!({"name": "M0", "num_blocks": 16384, "block_size": 4096})),
        )
        .unwrap();
        c.call(
            "bdev_lvol_create_lvstore",
            Some(json!({"bdev_name": "M0", "lvs_name": "ls0", "cluster_sz": 1 << 20})),
        )
        .unwrap();
        c.call("bdev_lvol_delete_lvstore", Some(json!({"lvs_name": "ls0"})))
            .unwrap();
        c.call("bdev_malloc_delete", Some(json!({"name": "M0"})))
            .unwrap_or_else(|e| panic!("round {i}: {e:?}"));
    }
    a.stop();
}

#[test]
fn a_deleted_lvstores_base_is_free_when_the_rpc_answers_on_one_reactor() {
    a_deleted_lvstores_base_is_free_when_the_rpc_answers("rpc_claims1", "0x1");
}

/// The same in one batch: the batch waits at the lvstore's delete (reactor 0 goes on: the
/// cleaner that must stop runs there), then deletes the base. The first version of the
/// deferred answers slept on reactor 0 for the whole bound (2 s) instead, and the base was
/// still claimed after it.
#[test]
fn a_batch_deletes_an_lvstore_and_its_base_on_one_reactor() {
    let a = Appliance::start("rpc_claims_batch", &["-m", "0x1"]);
    let mut c = a.client();
    c.call(
        "bdev_malloc_create",
        Some(json!({"name": "M0", "num_blocks": 16384, "block_size": 4096})),
    )
    .unwrap();
    c.call(
        "bdev_lvol_create_lvstore",
        Some(json!({"bdev_name": "M0", "lvs_name": "ls0", "cluster_sz": 1 << 20})),
    )
    .unwrap();
    let t0 = Instant::now();
    let answer = raw_exchange(
        &a.sock,
        br#"[{"jsonrpc":"2.0","id":1,"method":"bdev_lvol_delete_lvstore","params":{"lvs_name":"ls0"}},{"jsonrpc":"2.0","id":2,"method":"bdev_malloc_delete","params":{"name":"M0"}}]"#,
    );
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer[0]["result"], true, "{answer}");
    assert_eq!(answer[1]["result"], true, "{answer}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "the batch waited out the bound"
    );
    a.stop();
}

/// `bdev_lvol_delete_lvstore` destroys the pool and its lvols, as SPDK's does: its
/// superblock is erased before the answer, so a bdev made again over the same file finds no
/// lvstore, and a new one can be made there under the same name. (Until the sixteenth
/// session the pool was only unloaded, and came back with its volumes whenever its base was
/// examined again: after a restart, too.) The control: a pool unloaded by the test method
/// does come back.
#[test]
fn a_deleted_lvstore_does_not_come_back() {
    let a = Appliance::start("rpc_destroy", &[]);
    let mut c = a.client();
    let file = a._dir.join("pool.img");
    sparse_file(&file, 64 << 20);
    let (uring, lvstore) = uring_lvstore_params(&file);
    let lvol =
        json!({"lvol_name": "v0", "size_in_mib": 8, "lvs_name": "ls0", "thin_provision": true});
    // The control: unloaded, the pool and its volume come back with the bdev.
    c.call("bdev_uring_create", Some(uring.clone())).unwrap();
    c.call("bdev_lvol_create_lvstore", Some(lvstore.clone()))
        .unwrap();
    c.call("bdev_lvol_create", Some(lvol.clone())).unwrap();
    let volume_bdevs = |c: &mut RpcClient| {
        c.call("bdev_get_bdevs", None)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["name"] == "ls0/v0")
            .count()
    };
    assert_eq!(volume_bdevs(&mut c), 1);
    c.call("bdev_lvol_delete", Some(json!({"name": "ls0/v0"})))
        .unwrap();
    c.call(
        "unblend_test_unload_lvstore",
        Some(json!({"lvs_name": "ls0"})),
    )
    .unwrap();
    c.call("bdev_uring_delete", Some(json!({"name": "U0"})))
        .unwrap();
    c.call("bdev_uring_create", Some(uring.clone())).unwrap();
    assert_eq!(
        lvstores_named(&mut c, "ls0").len(),
        1,
        "the unloaded pool is back"
    );
    // Destroyed, it is not, nor is its volume, which goes with it as SPDK's lvols do (made
    // again first).
    c.call("bdev_lvol_create", Some(lvol.clone())).unwrap();
    assert_eq!(volume_bdevs(&mut c), 1);
    c.call("bdev_lvol_delete_lvstore", Some(json!({"lvs_name": "ls0"})))
        .unwrap();
    assert_eq!(volume_bdevs(&mut c), 0, "the lvol outlived its lvstore");
    assert_eq!(
        std::fs::read(&file).unwrap()[..4096],
        [0u8; 4096],
        "the superblock is erased when the RPC answers"
    );
    c.call("bdev_uring_delete", Some(json!({"name": "U0"})))
        .unwrap();
    c.call("bdev_uring_create", Some(uring.clone())).unwrap();
    assert!(
        lvstores_named(&mut c, "ls0").is_empty(),
        "the deleted pool came back"
    );
    assert_eq!(volume_bdevs(&mut c), 0);
    // The offline tool finds no pool either.
    let inspect = Command::new(env!("CARGO_BIN_EXE_unblend"))
        .args(["pool", "inspect", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "inspect found a pool");
    // The bdev is free: a new lvstore takes the name and the file.
    c.call("bdev_lvol_create_lvstore", Some(lvstore)).unwrap();
    assert_eq!(lvstores_named(&mut c, "ls0").len(), 1);
    a.stop();
}

/// An lvstore deleted while its lvol takes writes (the appliance's own bench, 16 in flight):
/// no write succeeds once the delete has answered, the appliance goes on serving, and a new
/// lvstore made on the same file at once takes writes with no error, and loads again after
/// a restart with what was written. (That no write of the deleted pool's volumes lands after
/// the delete, `a_destroyed_pools_volumes_fail_their_requests_and_leave_nothing_in_flight`
/// shows; here its journal, with no cleaner left to free it, fills first anyway.)
#[test]
fn an_lvstore_deleted_under_running_writes_ends_them_cleanly() {
    let a = Appliance::start("rpc_destroy_busy", &[]);
    let mut c = a.client();
    let (_dir, file) = pool_file_outside("rpc_destroy_busy_file", 64 << 20);
    let (uring, lvstore) = uring_lvstore_params(&file);
    let lvol = json!({"lvol_name": "v0", "size_in_mib": 16, "lvs_name": "ls0"});
    c.call("bdev_uring_create", Some(uring.clone())).unwrap();
    let bench = |c: &mut RpcClient, seconds: u64| {
        c.call(
            "unblend_bench_start",
            Some(
                json!({"bdev_name": "ls0/v0", "workload": "randwrite", "queue_depth": 16,
                "io_size": 4096, "seconds": seconds}),
            ),
        )
        .unwrap();
    };
    c.call("bdev_lvol_create_lvstore", Some(lvstore.clone()))
        .unwrap();
    c.call("bdev_lvol_create", Some(lvol.clone())).unwrap();
    bench(&mut c, 2);
    std::thread::sleep(Duration::from_millis(500));
    c.call("bdev_lvol_delete_lvstore", Some(json!({"lvs_name": "ls0"})))
        .unwrap();
    let done_at_delete = c.call("unblend_bench_results", None).unwrap()["ios_so_far"].clone();
    let r = bench_report(&mut c);
    assert!(r["total"]["ios"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        r["total"]["ios"], done_at_delete,
        "a write succeeded after the lvstore's delete answered: {r}"
    );
    assert!(
        r["total"]["errors"].as_u64().unwrap() > 0,
        "no write failed after the delete: {r}"
    );
    assert_eq!(std::fs::read(&file).unwrap()[..4096], [0u8; 4096]);
    // A new pool on the same file at once.
    c.call("bdev_lvol_create_lvstore", Some(lvstore)).unwrap();
    c.call("bdev_lvol_create", Some(lvol)).unwrap();
    bench(&mut c, 1);
    let r = bench_report(&mut c);
    assert_eq!(r["total"]["errors"], 0, "{r}");
    let mapped = |c: &mut RpcClient| {
        c.call("unblend_lsv_get_stats", Some(json!({"lvs_name": "ls0"})))
            .unwrap()[0]["mapped_blocks"]
            .clone()
    };
    let before = mapped(&mut c);
    assert!(before.as_u64().unwrap() > 0);
    a.stop();
    // Loaded again after a restart (examine): the same blocks mapped.
    let a = Appliance::start("rpc_destroy_busy2", &[]);
    let mut c = a.client();
    c.call("bdev_uring_create", Some(uring)).unwrap();
    assert_eq!(mapped(&mut c), before);
    a.stop();
}

/// A clean stop waits for a format still running on its thread: the pool it leaves checks
/// clean (its superblock is written last; cut off halfway, the file would hold no pool).
#[test]
fn a_clean_stop_waits_for_a_running_format() {
    let a = Appliance::start("rpc_stop_format", &[]);
    let mut c = a.client();
    let (_dir, file) = pool_file_outside("rpc_stop_format_file", 256 << 20);
    c.call(
        "bdev_uring_create",
        Some(json!({"name": "U0", "filename": file, "block_size": 4096})),
    )
    .unwrap();
    // Every write 20 ms: the format's 1,300-odd writes, 32 at a time, take about a second.
    c.call(
        "bdev_delay_create",
        Some(delay_params("U0", "Slow0", 1000, 20000)),
    )
    .unwrap();
    let mut waiting = UnixStream::connect(&a.sock).unwrap();
    waiting
        .write_all(
            br#"{"jsonrpc":"2.0","id":1,"method":"bdev_lvol_create_lvstore","params":{"bdev_name":"Slow0","lvs_name":"ls0","cluster_sz":1048576}}"#,
        )
        .unwrap();
    // The format has begun once the base is claimed.
    wait_until(Duration::from_secs(10), "the format never began", || {
        c.call("bdev_get_bdevs", Some(json!({"name": "Slow0"})))
            .unwrap()[0]["claimed"]
            == true
    });
    a.stop();
    let out = Command::new(env!("CARGO_BIN_EXE_unblend"))
        .args(["pool", "check", file.to_str().unwrap()])
        .env("UNBLEND_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("consistent"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_deleted_lvstores_base_is_free_when_the_rpc_answers_on_two_reactors() {
    a_deleted_lvstores_base_is_free_when_the_rpc_answers("rpc_claims2", "0x3");
}
