//! The vhost-user-blk front end against an independent client: libblkio's
//! "virtio-blk-vhost-user" driver (the QEMU project's user-space block library), talking to a live
//! `unblend serve` over its socket. Pattern write and verify on several queues, flush, discard,
//! write-zeroes, refusals, read-only exports, disconnect and reconnect, and the RPC view.

mod common;

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use serde_json::{json, Value};
use unblend::bdev::sim::SimRng;
use unblend::bench::pattern;
use unblend::rpc::client::RpcClient;

const BLOCK: usize = 4096;

struct Appliance {
    child: Child,
    rpc: PathBuf,
    dir: PathBuf,
    /// The directory `start` made, removed after `Drop` below has stopped the child; `boot`'s
    /// caller owns its own.
    _owned: Option<common::TestDir>,
}

impl Appliance {
    /// Boots `serve` on `config` (an SPDK JSON config), on cores 0 and 1, in a fresh
    /// directory named `name`.
    fn start(name: &str, config: &Value) -> Appliance {
        let dir = common::TestDir::new(name);
        let cfg = dir.join("config.json");
        std::fs::write(&cfg, serde_json::to_vec(config).unwrap()).unwrap();
        let mut app = Self::boot(dir.to_path_buf(), Some(&cfg));
        app._owned = Some(dir);
        app
    }

    /// Boots `serve` in `dir` (its data, socket and RPC directory, kept as it is), on cores
    /// 0 and 1: on the config file `config`, or on the embedded default without one.
    fn boot(dir: PathBuf, config: Option<&Path>) -> Appliance {
        let rpc = dir.join("rpc.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_unblend"));
        cmd.args(["serve", "-m", "0x3"]);
        if let Some(cfg) = config {
            cmd.arg("-c").arg(cfg);
        }
        let mut child = cmd
            .arg("-r")
            .arg(&rpc)
            .arg("-d")
            .arg(&dir)
            .arg("-S")
            .arg(&dir)
            .env("UNBLEND_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        common::wait_until_running(&mut child);
        Appliance {
            child,
            rpc,
            dir,
            _owned: None,
        }
    }

    fn socket(&self, ctrlr: &str) -> PathBuf {
        self.dir.join(ctrlr)
    }

    fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        let mut c = RpcClient::connect(&self.rpc, Duration::from_secs(10)).unwrap();
        c.call(method, Some(params)).map_err(|e| e.to_string())
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(controllers: Value) -> Value {
    json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 16384, "block_size": 4096}},
            {"method": "bdev_malloc_create", "params": {"name": "Malloc1", "num_blocks": 1024, "block_size": 4096}},
        ]},
        {"subsystem": "vhost_blk", "config": controllers},
    ]})
}

/// A libblkio connection with one memory region for buffers.
struct Client {
    // Field order matters: queues and the region go before the instance.
    queues: Vec<Blkioq>,
    region: MemoryRegion,
    blkio: Blkio,
    capacity: u64,
}

impl Client {
    fn connect(socket: &Path, num_queues: i32) -> Result<Client, String> {
        Self::connect_with(socket, num_queues, false)
    }

    fn connect_with(socket: &Path, num_queues: i32, read_only: bool) -> Result<Client, String> {
        let e = |e: blkio::Error| e.to_string();
        let mut b = Blkio::new("virtio-blk-vhost-user").map_err(e)?;
        b.set_str("path", socket.to_str().unwrap()).map_err(e)?;
        b.set_bool("read-only", read_only).map_err(e)?;
        b.connect().map_err(e)?;
        b.set_i32("num-queues", num_queues).map_err(e)?;
        b.set_i32("queue-size", 128).map_err(e)?;
        let started = b.start().map_err(e)?;
        let region = b.alloc_mem_region(8 << 20).map_err(e)?;
        b.map_mem_region(&region).map_err(e)?;
        let capacity = b.get_u64("capacity").map_err(e)?;
        Ok(Client {
            queues: started.queues,
            region,
            blkio: b,
            capacity,
        })
    }

    fn buf(&mut self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.region.len);
        // SAFETY: the region is mapped for its whole length and outlives the borrow.
        unsafe { std::slice::from_raw_parts_mut((self.region.addr + off) as *mut u8, len) }
    }

    /// Runs `submit` on queue `q` and waits for its one completion; returns its `ret`.
    fn run(&mut self, q: usize, submit: impl FnOnce(&mut Blkioq, *mut u8)) -> i32 {
        let base = self.region.addr as *mut u8;
        let queue = &mut self.queues[q];
        submit(queue, base);
        let mut done = [MaybeUninit::<Completion>::uninit(); 1];
        let mut timeout = Duration::from_secs(10);
        let n = queue.do_io(&mut done, 1, Some(&mut timeout), None).unwrap();
        assert_eq!(n, 1, "request did not complete within 10 s");
        // SAFETY: do_io initialised the first `n` completions.
        unsafe { done[0].assume_init_read() }.ret
    }

    fn write(&mut self, q: usize, start: u64, buf_off: usize, len: usize) -> i32 {
        self.run(q, |qq, base| {
            // SAFETY: the buffer lies inside the mapped region.
            qq.write(
                start,
                unsafe { base.add(buf_off) },
                len,
                0,
                ReqFlags::empty(),
            )
        })
    }

    fn read(&mut self, q: usize, start: u64, buf_off: usize, len: usize) -> i32 {
        self.run(q, |qq, base| {
            // SAFETY: the buffer lies inside the mapped region.
            qq.read(
                start,
                unsafe { base.add(buf_off) },
                len,
                0,
                ReqFlags::empty(),
            )
        })
    }
}

#[test]
fn libblkio_writes_verifies_flushes_discards_and_reconnects() {
    let app = Appliance::start(
        "vhost_blk_main",
        &config(json!([
            {"method": "vhost_create_blk_controller", "params": {"ctrlr": "vb0", "dev_name": "Malloc0"}},
            {"method": "vhost_create_blk_controller", "params": {"ctrlr": "vb-ro", "dev_name": "Malloc1", "readonly": true}},
        ])),
    );
    let sock = app.socket("vb0");
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // Hostile front ends on the socket first: garbage, a truncated header, a header that
    // promises a huge body, an unknown request code. Each is dropped; the controller goes on.
    for junk in [
        vec![0xffu8; 64],
        vec![1, 0, 0],
        [
            1u32.to_le_bytes(),
            1u32.to_le_bytes(),
            0x7fff_ffffu32.to_le_bytes(),
        ]
        .concat(),
        [
            9999u32.to_le_bytes(),
            1u32.to_le_bytes(),
            0u32.to_le_bytes(),
        ]
        .concat(),
    ] {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let _ = s.write_all(&junk);
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut c = Client::connect(&sock, 2).expect("libblkio connects");
    assert_eq!(c.capacity, 16384 * BLOCK as u64);
    assert_eq!(c.blkio.get_i32("num-queues").unwrap(), 2);

    // Pattern write on both queues, 64 KiB at a time at scattered offsets, then verify each
    // on the other queue.
    let chunk = 64 << 10;
    // MiB-aligned offsets below 60 MiB, some of them twice (later writes must win).
    let offsets: Vec<u64> = (0..32u64)
        .map(|i| ((i * 37 % 64) << 20) % (60 << 20))
        .collect();
    for (i, &off) in offsets.iter().enumerate() {
        pattern::fill(c.buf(0, chunk), 0, BLOCK, i as u64);
        assert_eq!(c.write(i % 2, off, 0, chunk), 0, "write {i} at {off}");
    }
    let mut expect = vec![0u8; chunk];
    // Later writes to the same offset win.
    let mut last = std::collections::BTreeMap::new();
    for (i, &off) in offsets.iter().enumerate() {
        last.insert(off, i);
    }
    for (&off, &i) in &last {
        c.buf(chunk, chunk).fill(0);
        assert_eq!(c.read((i + 1) % 2, off, chunk, chunk), 0);
        pattern::fill(&mut expect, 0, BLOCK, i as u64);
        assert!(c.buf(chunk, chunk) == &expect[..], "data at {off} differs");
    }

    // Flush.
    assert_eq!(c.run(0, |q, _| q.flush(0, ReqFlags::empty())), 0);

    // Write-zeroes and discard of a written range read back as zeroes.
    let (off, _) = last.iter().next().map(|(o, i)| (*o, *i)).unwrap();
    assert_eq!(
        c.run(1, |q, _| q.write_zeroes(off, 16384, 0, ReqFlags::empty())),
        0
    );
    assert_eq!(c.read(1, off, chunk, 16384), 0);
    assert!(
        c.buf(chunk, 16384).iter().all(|&b| b == 0),
        "write-zeroes left data"
    );
    let (off2, _) = last.iter().nth(1).map(|(o, i)| (*o, *i)).unwrap();
    assert_eq!(
        c.run(0, |q, _| q.discard(
            off2,
            chunk as u64,
            0,
            ReqFlags::empty()
        )),
        0
    );

    // Requests the device must refuse, with the appliance going on: unaligned to the 4 KiB
    // block, and past the end.
    assert!(
        c.write(0, 512, 0, 512) < 0,
        "a 512-byte write to a 4 KiB-block device succeeded"
    );
    assert!(
        c.read(0, c.capacity, 0, BLOCK) < 0,
        "a read past the end succeeded"
    );
    assert_eq!(c.read(0, 0, 0, BLOCK), 0);

    // Disconnect and reconnect: the data is still there, served by fresh queues.
    let keep = *last.iter().last().unwrap().0;
    let keep_i = last[&keep];
    drop(c);
    let mut c = Client::connect(&sock, 1).expect("libblkio reconnects");
    assert_eq!(c.read(0, keep, 0, chunk), 0);
    pattern::fill(&mut expect, 0, BLOCK, keep_i as u64);
    assert!(
        c.buf(0, chunk) == &expect[..],
        "data lost across a reconnect"
    );
    drop(c);

    // The read-only export takes reads and refuses writes; a read-write client is turned away.
    let err = Client::connect(&app.socket("vb-ro"), 1)
        .err()
        .expect("read-write open of a read-only export");
    assert!(err.contains("read-only"), "{err}");
    let mut ro =
        Client::connect_with(&app.socket("vb-ro"), 1, true).expect("read-only export connects");
    assert_eq!(ro.read(0, 0, 0, BLOCK), 0);
    assert!(
        ro.write(0, 0, 0, BLOCK) < 0,
        "a write to a read-only export succeeded"
    );
    drop(ro);

    // The RPC view: both controllers, request counts, and a config that recreates them.
    let ctrls = app.call("vhost_get_controllers", json!({})).unwrap();
    let vb0 = ctrls
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ctrlr"] == "vb0")
        .unwrap();
    assert_eq!(vb0["backend_specific"]["block"]["bdev"], "Malloc0");
    assert!(vb0["requests"].as_u64().unwrap() >= 60, "{vb0}");
    let saved = app
        .call("framework_get_config", json!({"name": "vhost_blk"}))
        .unwrap();
    let names: Vec<&str> = saved
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["params"]["ctrlr"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vb-ro", "vb0"]);

    // Bad RPC calls get clear errors; deleting frees the socket name for a new controller.
    let err = app
        .call(
            "vhost_create_blk_controller",
            json!({"ctrlr": "vb0", "dev_name": "Malloc0"}),
        )
        .unwrap_err();
    assert!(err.contains("exists"), "{err}");
    assert!(app
        .call(
            "vhost_create_blk_controller",
            json!({"ctrlr": "x", "dev_name": "nope"})
        )
        .unwrap_err()
        .contains("nope"));
    assert!(app
        .call(
            "vhost_create_blk_controller",
            json!({"ctrlr": "../x", "dev_name": "Malloc1"})
        )
        .is_err());
    assert!(app
        .call(
            "vhost_create_blk_controller",
            json!({"ctrlr": "p", "dev_name": "Malloc1", "packed_ring": true})
        )
        .is_err());
    app.call(
        "vhost_controller_set_coalescing",
        json!({"ctrlr": "vb0", "delay_base_us": 50, "iops_threshold": 60000}),
    )
    .unwrap();
    app.call("vhost_delete_controller", json!({"ctrlr": "vb0"}))
        .unwrap();
    assert!(!sock.exists());
    assert!(app
        .call("vhost_delete_controller", json!({"ctrlr": "vb0"}))
        .is_err());
    app.call(
        "vhost_create_blk_controller",
        json!({"ctrlr": "vb0", "dev_name": "Malloc0", "cpumask": "0x2"}),
    )
    .unwrap();
    let mut c = Client::connect(&sock, 1).expect("connects to the new controller");
    assert_eq!(c.read(0, keep, 0, chunk), 0);
    assert!(c.buf(0, chunk) == &expect[..]);
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn memfd_maps(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:"))
        .count()
}

#[test]
fn front_ends_that_vanish_mid_io_leak_nothing() {
    // Writes take 20 ms in the appliance, so every disconnect leaves requests in flight.
    let app = Appliance::start(
        "vhost_blk_vanish",
        &json!({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 4096, "block_size": 4096}},
                {"method": "bdev_delay_create", "params": {"base_bdev_name": "Malloc0", "name": "Slow0",
                    "avg_read_latency": 20000, "p99_read_latency": 20000,
                    "avg_write_latency": 20000, "p99_write_latency": 20000}},
            ]},
            {"subsystem": "vhost_blk", "config": [
                {"method": "vhost_create_blk_controller", "params": {"ctrlr": "vb0", "dev_name": "Slow0"}},
            ]},
        ]}),
    );
    let pid = app.child.id();
    let sock = app.socket("vb0");
    // One full cycle first, so lazily made things (thread pools, buffers) exist before counting.
    let mut c = Client::connect(&sock, 2).unwrap();
    assert_eq!(c.read(0, 0, 0, BLOCK), 0);
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let (fds, maps) = (fd_count(pid), memfd_maps(pid));
    assert_eq!(
        maps, 0,
        "guest memory still mapped after a clean disconnect"
    );
    for cycle in 0..20 {
        let mut c = Client::connect(&sock, 2).unwrap();
        for q in 0..2 {
            for i in 0..16usize {
                let base = c.region.addr as *mut u8;
                // SAFETY: inside the mapped region.
                let buf = unsafe { base.add(i * BLOCK) };
                c.queues[q].write((i * BLOCK) as u64, buf, BLOCK, i, ReqFlags::empty());
            }
            let mut none = [MaybeUninit::<Completion>::uninit(); 1];
            c.queues[q].do_io(&mut none, 0, None, None).unwrap();
        }
        drop(c); // 32 requests in flight
        if cycle % 5 == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Every vanished front end's queues finish their requests and let go of everything.
    let deadline = Instant::now() + Duration::from_secs(20);
    while (fd_count(pid) > fds || memfd_maps(pid) > 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(memfd_maps(pid), 0, "guest memory left mapped");
    assert!(
        fd_count(pid) <= fds,
        "descriptors leaked: {} now, {fds} before",
        fd_count(pid)
    );
    // And it still serves.
    let mut c = Client::connect(&sock, 1).unwrap();
    assert_eq!(c.read(0, 0, 0, BLOCK), 0);
}

/// A memfd of `bytes`, as a front end's guest memory.
fn memfd(bytes: u64) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by the File.
    let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(bytes).unwrap();
    f
}

#[test]
fn hostile_vhost_user_messages_get_errors_and_the_controller_goes_on() {
    use std::os::fd::AsRawFd;
    use vhost::vhost_user::message::{
        VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
    };
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

    let app = Appliance::start(
        "vhost_blk_hostile",
        &config(json!([
            {"method": "vhost_create_blk_controller", "params": {"ctrlr": "vb0", "dev_name": "Malloc0"}},
        ])),
    );
    let sock = app.socket("vb0");
    for round in 0..3 {
        let mut f = Frontend::connect(&sock, 16).expect("vhost-user connect");
        f.set_owner().unwrap();
        let features = f.get_features().unwrap();
        f.set_features(features).unwrap();
        let proto = f.get_protocol_features().unwrap();
        assert!(proto.contains(
            VhostUserProtocolFeatures::INFLIGHT_SHMFD
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        ));
        f.set_protocol_features(
            proto
                & (VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::MQ),
        )
        .unwrap();
        assert_eq!(f.get_queue_num().unwrap(), 16);
        // Every request asks for an answer (REPLY_ACK), so refusals come back as errors.
        f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);

        // A region that claims 64 MiB of a 1 MiB file: refused (touching it would fault).
        let mem = memfd(1 << 20);
        let region = |size: u64, offset: u64| VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: 0x7000_0000_0000,
            mmap_offset: offset,
            mmap_handle: mem.as_raw_fd(),
        };
        assert!(f.set_mem_table(&[region(64 << 20, 0)]).is_err());
        assert!(f.set_mem_table(&[region(1 << 20, 4096)]).is_err());
        // Bad vring sizes and indexes.
        assert!(
            f.set_vring_num(0, 3).is_err(),
            "a ring size that is not a power of two"
        );
        assert!(
            f.set_vring_num(0, 32768).is_err(),
            "a ring larger than the device takes"
        );
        f.set_vring_num(15, 128).expect("ring 15 of 128 entries");
        // Vring addresses outside every region (there is none yet).
        let cfg = VringConfigData {
            queue_max_size: 128,
            queue_size: 128,
            flags: 0,
            desc_table_addr: 0x7000_0000_0000,
            used_ring_addr: 0x7000_0000_1000,
            avail_ring_addr: 0x7000_0000_2000,
            log_addr: None,
        };
        assert!(f.set_vring_addr(0, &cfg).is_err());
        // A good region, then vring addresses past its end.
        f.set_mem_table(&[region(1 << 20, 0)]).unwrap();
        let outside = VringConfigData {
            desc_table_addr: 0x7000_0010_0000,
            ..cfg
        };
        assert!(f.set_vring_addr(0, &outside).is_err());
        // The configuration space is read-only; reads past it see zeroes.
        assert!(f
            .set_config(0, VhostUserConfigFlags::WRITABLE, &[0u8; 4])
            .is_err());
        let (_, cfg_bytes) = f
            .get_config(0, 8, VhostUserConfigFlags::empty(), &[0u8; 8])
            .unwrap();
        assert_eq!(
            u64::from_le_bytes(cfg_bytes[..8].try_into().unwrap()),
            16384 * 8,
            "capacity in sectors (round {round})"
        );
        drop(f);
    }
    // A refused request that needs an answer (GET_INFLIGHT_FD for more queues than the device
    // has) cannot be answered by the vhost crate: the connection closes rather than leave the
    // front end waiting forever.
    {
        use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
        use vhost::vhost_user::{Frontend, VhostUserFrontend};
        use vhost::VhostBackend;
        let mut f = Frontend::connect(&sock, 16).unwrap();
        f.set_owner().unwrap();
        let features = f.get_features().unwrap();
        f.set_features(features).unwrap();
        f.set_protocol_features(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
            .unwrap();
        let t0 = Instant::now();
        assert!(f
            .get_inflight_fd(&VhostUserInflight::new(0, 0, 100, 128))
            .is_err());
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "the refusal took until a timeout"
        );
        assert!(
            f.get_queue_num().is_err(),
            "connection still open after an unanswerable refusal"
        );
    }
    // After all that, a well-behaved client is served.
    let mut c = Client::connect(&sock, 2).expect("libblkio connects after hostile front ends");
    pattern::fill(c.buf(0, BLOCK), 0, BLOCK, 7);
    assert_eq!(c.write(1, 4096, 0, BLOCK), 0);
    assert_eq!(c.read(0, 4096, BLOCK, BLOCK), 0);
    let (a, b) = (c.buf(0, BLOCK).to_vec(), c.buf(BLOCK, BLOCK).to_vec());
    assert_eq!(a, b);
}

/// A front end that reconnects finds used entries its guest was never told about: the old
/// appliance died between the used ring and the call eventfd, or completed requests before
/// QEMU sent the call eventfd (which QEMU sends only after enabling the rings). The new
/// appliance signals the call eventfd once when a ring starts, so the guest looks again; without
/// that the guest waits for good (a CI run of ci/vhost-guest.sh hung this way).
/// Where `set_up_ring_0` puts guest memory in the front end's address space, and the avail
/// and used rings in it (the descriptor table is at its start).
const RING_VA: u64 = 0x7000_0000_0000;
const RING_AVAIL: u64 = 0x1000;
const RING_USED: u64 = 0x2000;

/// Gives the back end `mem` (1 MiB) as guest memory and sets up ring 0 (128 entries, next
/// avail index `base`) in it; kick, call and enable are the caller's.
fn set_up_ring_0(f: &mut vhost::vhost_user::Frontend, mem: &std::fs::File, base: u16) {
    use std::os::fd::AsRawFd;
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
    f.set_mem_table(&[VhostUserMemoryRegionInfo {
        // Not at 0: a descriptor table at guest address 0 reads as "not set yet".
        guest_phys_addr: 1 << 20,
        memory_size: 1 << 20,
        userspace_addr: RING_VA,
        mmap_offset: 0,
        mmap_handle: mem.as_raw_fd(),
    }])
    .unwrap();
    f.set_vring_num(0, 128).unwrap();
    f.set_vring_base(0, base).unwrap();
    f.set_vring_addr(
        0,
        &VringConfigData {
            queue_max_size: 128,
            queue_size: 128,
            flags: 0,
            desc_table_addr: RING_VA,
            avail_ring_addr: RING_VA + RING_AVAIL,
            used_ring_addr: RING_VA + RING_USED,
            log_addr: None,
        },
    )
    .unwrap();
}

#[test]
fn a_started_ring_signals_the_guest_once() {
    use vhost::vhost_user::message::VhostUserProtocolFeatures;
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::VhostBackend;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    let app = Appliance::start(
        "vhost_blk_signal_on_start",
        &config(json!([
            {"method": "vhost_create_blk_controller", "params": {"ctrlr": "vb0", "dev_name": "Malloc0"}},
        ])),
    );
    let mem = memfd(1 << 20);
    // Three requests were popped and used by the previous appliance (avail and used index 3),
    // and the guest has not seen them.
    use std::os::unix::fs::FileExt;
    mem.write_all_at(&3u16.to_le_bytes(), RING_AVAIL + 2)
        .unwrap();
    mem.write_all_at(&3u16.to_le_bytes(), RING_USED + 2)
        .unwrap();

    let mut f = Frontend::connect(app.socket("vb0"), 16).expect("vhost-user connect");
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    f.set_features(features).unwrap();
    let proto = f.get_protocol_features().unwrap();
    f.set_protocol_features(proto & VhostUserProtocolFeatures::MQ)
        .unwrap();
    set_up_ring_0(&mut f, &mem, 3);
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    // QEMU's order on a reconnect: kick, enable, and only then the call eventfd.
    f.set_vring_kick(0, &kick).unwrap();
    f.set_vring_enable(0, true).unwrap();
    f.set_vring_call(0, &call).unwrap();
    let t0 = Instant::now();
    let signalled = loop {
        match call.read() {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "no interrupt for the guest within 5 s of its ring starting"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("reading the call eventfd: {e}"),
        }
    };
    assert!(signalled >= 1);
}

/// Real crashes of the whole appliance: `unblend serve` on its embedded default (a
/// file-backed lsv pool, io_uring with O_DIRECT, two reactors, the cleaner), its volume
/// written over vhost-user-blk by libblkio (8 requests in flight, FLUSHes among them),
/// killed with SIGKILL at a random moment 0.3 to 1.5 s after the first write is acknowledged,
/// 20 times. After each restart every block must hold its last acknowledged write or one that
/// was in flight at the kill, whole. A restart after which no write is acknowledged in 10 s
/// fails, with the appliance's stats.
#[test]
fn lsv_behind_serve_keeps_flushed_writes_across_sigkill() {
    const CYCLES: u32 = 20;
    const BLOCKS: u64 = 2048;
    const QD: usize = 8;
    const FLUSH_SLOT: u64 = QD as u64;
    let dir = common::TestDir::new("lsv_serve_kill");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = SimRng::new(seed);
    let mut next = move |n: u64| rng.below(n);
    // Per block, the tags it may hold, oldest first (0: zeroes).
    let mut allowed: Vec<Vec<u64>> = vec![vec![0]; BLOCKS as usize];
    let mut next_tag = 1u64;
    for cycle in 0..=CYCLES {
        // The appliance is killed when dropped, so a failing check leaves none behind.
        let mut app = Appliance::boot(dir.to_path_buf(), None);
        let mut c = Client::connect(&dir.join("vhost.0"), 1)
            .unwrap_or_else(|e| panic!("cycle {cycle} (seed {seed}): connect: {e}"));
        // Verify every block, 64 at a time; what it holds now is all it may hold.
        for start in (0..BLOCKS).step_by(64) {
            assert_eq!(c.read(0, start * BLOCK as u64, 0, 64 * BLOCK), 0);
            for b in start..start + 64 {
                let off = (b - start) as usize * BLOCK;
                let tag = pattern::read_tag(c.buf(off, BLOCK), b)
                    .unwrap_or_else(|e| panic!("cycle {cycle} (seed {seed}): {e:?}"))
                    .unwrap_or(0);
                assert!(
                    allowed[b as usize].contains(&tag),
                    "cycle {cycle} (seed {seed}): block {b} holds write {tag}, allowed {:?}",
                    allowed[b as usize]
                );
                allowed[b as usize] = vec![tag];
            }
        }
        if cycle == CYCLES {
            break;
        }
        // Write until a random moment after the first write is acknowledged, then SIGKILL
        // with whatever is in flight. No acknowledged write in 10 s is a stall: the test fails
        // with what the appliance says of itself.
        let started = Instant::now();
        let kill_after = Duration::from_millis(300 + next(1200));
        let mut kill_at = started + Duration::from_secs(10);
        let mut first_write_ms = None;
        let mut slots: [Option<(u64, u64)>; QD] = [None; QD];
        let mut flush = false;
        let mut busy = vec![false; BLOCKS as usize];
        let (mut writes, mut flushes) = (0u64, 0u64);
        while Instant::now() < kill_at {
            for (s, slot) in slots.iter_mut().enumerate() {
                if slot.is_some() {
                    continue;
                }
                let b = next(BLOCKS);
                if busy[b as usize] {
                    continue;
                }
                let tag = next_tag;
                next_tag += 1;
                pattern::fill_tagged(c.buf(s * BLOCK, BLOCK), b, BLOCK, tag);
                let base = c.region.addr as *mut u8;
                // SAFETY: the slot's block of the mapped region, untouched until completion.
                c.queues[0].write(
                    b * BLOCK as u64,
                    unsafe { base.add(s * BLOCK) },
                    BLOCK,
                    s,
                    ReqFlags::empty(),
                );
                busy[b as usize] = true;
                allowed[b as usize].push(tag);
                *slot = Some((b, tag));
            }
            if !flush && next(20) == 0 {
                c.queues[0].flush(FLUSH_SLOT as usize, ReqFlags::empty());
                flush = true;
            }
            let mut done = [const { MaybeUninit::<Completion>::uninit() }; QD + 1];
            let mut timeout = Duration::from_millis(100);
            let n = c.queues[0]
                .do_io(&mut done, 1, Some(&mut timeout), None)
                .unwrap_or(0);
            for d in &done[..n] {
                // SAFETY: do_io initialised the first `n` completions.
                let d = unsafe { d.assume_init_read() };
                assert_eq!(d.ret, 0, "cycle {cycle} (seed {seed}): a request failed");
                if d.user_data == FLUSH_SLOT as usize {
                    assert!(flush, "a flush completed twice");
                    flush = false;
                    flushes += 1;
                } else {
                    // SIGKILL loses no completed O_DIRECT write (only a power loss would lose
                    // what no FLUSH covered), so every acknowledged write must survive: the
                    // block may hold this one or a newer one still in flight, nothing older.
                    let (b, t) = slots[d.user_data].take().expect("a write in flight");
                    allowed[b as usize].retain(|&x| x >= t);
                    busy[b as usize] = false;
                    writes += 1;
                    if first_write_ms.is_none() {
                        first_write_ms = Some(started.elapsed().as_millis());
                        kill_at = Instant::now() + kill_after;
                    }
                }
            }
        }
        if writes == 0 {
            let alive = matches!(app.child.try_wait(), Ok(None));
            let ask = |method: &str| {
                RpcClient::connect(&app.rpc, Duration::from_secs(5))
                    .map_err(|e| e.to_string())
                    .and_then(|mut c| c.call(method, Some(json!({}))).map_err(|e| e.to_string()))
            };
            let stats = ask("unblend_lsv_get_stats");
            let iostat = ask("bdev_get_iostat");
            panic!(
                "cycle {cycle} (seed {seed}): no write acknowledged in 10 s \
                 (appliance alive: {alive}); lsv stats: {stats:?}; iostat: {iostat:?}"
            );
        }
        let _ = app.child.kill();
        let _ = app.child.wait();
        println!(
            "cycle {cycle}: first write acknowledged after {} ms; {writes} writes and {flushes} \
             flushes acknowledged, then SIGKILL",
            first_write_ms.unwrap_or_default()
        );
        drop(c);
    }
}

/// An appliance exporting an 8 MiB thin volume `lvs/v` (on Malloc0) as controller `ctrlr`,
/// and a vhost-user front end connected to it with `protocol` negotiated.
fn volume_export(
    name: &str,
    lvs: &str,
    ctrlr: &str,
    protocol: vhost::vhost_user::message::VhostUserProtocolFeatures,
) -> (Appliance, vhost::vhost_user::Frontend) {
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::VhostBackend;
    let app = Appliance::start(name, &config(json!([])));
    app.call(
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": "Malloc0", "lvs_name": lvs, "cluster_sz": 1 << 20}),
    )
    .unwrap();
    app.call(
        "bdev_lvol_create",
        json!({"lvol_name": "v", "size_in_mib": 8, "lvs_name": lvs, "thin_provision": true}),
    )
    .unwrap();
    app.call(
        "vhost_create_blk_controller",
        json!({"ctrlr": ctrlr, "dev_name": format!("{lvs}/v")}),
    )
    .unwrap();
    let mut f = Frontend::connect(app.socket(ctrlr), 16).expect("vhost-user connect");
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    f.set_features(features).unwrap();
    let offered = f.get_protocol_features().unwrap();
    assert!(offered.contains(protocol), "offered {offered:?}");
    f.set_protocol_features(protocol).unwrap();
    (app, f)
}

/// A volume resized online: the controller follows its size (within its 100 ms control
/// poll) into the configuration space and its queues, and tells a front end that gave it a
/// back-end channel (CONFIG_CHANGE_MSG), which then reads the new capacity. Only a started
/// device is told (QEMU ignores the message before): a resize before the rings run is told
/// when they start. QEMU raises a configuration interrupt for it: `ci/vhost-guest.sh` shows a
/// real guest's disk growing.
#[test]
fn a_resized_volume_tells_the_front_end_its_new_capacity() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::VhostBackend;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    let want = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::BACKEND_REQ;
    let (app, mut f) = volume_export("vhost_blk_resize", "lvsG", "vg", want);
    let resize = |mib: u64| {
        app.call(
            "bdev_lvol_resize",
            json!({"name": "lvsG/v", "size_in_mib": mib}),
        )
        .unwrap();
    };
    let (ours, theirs) = UnixStream::pair().unwrap();
    f.set_backend_request_fd(&theirs).unwrap();
    // virtio-blk's capacity: the first 8 bytes of its configuration space, in 512-byte sectors.
    let capacity = |f: &mut Frontend| {
        let (_, payload) = f
            .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
            .unwrap();
        u64::from_le_bytes(payload[..8].try_into().unwrap())
    };
    // One CONFIG_CHANGE_MSG within `wait`, or none.
    let notice = |wait: Duration| -> Option<[u32; 3]> {
        ours.set_read_timeout(Some(wait)).unwrap();
        let mut header = [0u8; 12];
        match (&ours).read_exact(&mut header) {
            Ok(()) => Some(std::array::from_fn(|i| {
                u32::from_le_bytes(header[4 * i..4 * i + 4].try_into().unwrap())
            })),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("reading the back-end channel: {e}"),
        }
    };
    assert_eq!(capacity(&mut f), (8 << 20) / 512);

    // Resized before any ring runs: not told yet.
    resize(12);
    assert_eq!(
        notice(Duration::from_millis(500)),
        None,
        "told before the device started"
    );
    // A ring starts: now it is told.
    let mem = memfd(1 << 20);
    set_up_ring_0(&mut f, &mem, 0);
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    f.set_vring_call(0, &call).unwrap();
    f.set_vring_kick(0, &kick).unwrap();
    f.set_vring_enable(0, true).unwrap();
    let told = notice(Duration::from_secs(5)).expect("not told when the ring started");
    assert_eq!(
        told,
        [2, 1, 0],
        "CONFIG_CHANGE_MSG, version 1 with no reply asked, no payload"
    );
    assert_eq!(capacity(&mut f), (12 << 20) / 512);
    // Resized while running: told at once, each time.
    for mib in [16u64, 4] {
        resize(mib);
        let told = notice(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("not told of the resize to {mib} MiB within 5 s"));
        assert_eq!(told, [2, 1, 0]);
        assert_eq!(capacity(&mut f), (mib << 20) / 512);
    }
}

/// A front end that hands over a file instead of a socket as its back-end channel gets it
/// refused, and a resize later writes nothing into that file.
#[test]
fn a_back_end_channel_that_is_not_a_socket_is_never_written() {
    use std::os::unix::fs::FileExt;
    use vhost::vhost_user::message::VhostUserProtocolFeatures;
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::VhostBackend;

    let (app, mut f) = volume_export(
        "vhost_blk_bad_channel",
        "lvsB",
        "vb",
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::BACKEND_REQ,
    );
    let file = memfd(4096);
    let _ = f.set_backend_request_fd(&file);
    app.call(
        "bdev_lvol_resize",
        json!({"name": "lvsB/v", "size_in_mib": 12}),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut back = [0xFFu8; 16];
    file.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, [0u8; 16], "a resize wrote into the file");
    // The controller goes on: a new front end connects.
    drop(f);
    let g = Frontend::connect(app.socket("vb"), 16).expect("vhost-user reconnect");
    g.set_owner().unwrap();
}
