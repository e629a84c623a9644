//! `BlkBackend`: the vhost-user protocol's back-end side for one controller (one connected
//! front end at a time). It runs on the controller's control thread, never on a reactor: it maps
//! guest memory, keeps each vring's setup, and starts and stops `VirtqueuePoller`s on reactors by
//! message. The protocol framing itself is the `vhost` crate's (`BackendReqHandler`).
//!
//! A vring runs once it has memory, a size, addresses and a kick eventfd, and is enabled. Any
//! change under a running vring (a new memory map, a new call eventfd) stops its poller, which
//! finishes its in-flight requests and hands the queue back, and starts a new one.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::{Queue, QueueT};
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::config_space::{BlkConfig, RING_F_EVENT_IDX, VHOST_USER_F_PROTOCOL_FEATURES};
use super::inflight::InflightMap;
use super::request::{Geometry, ID_BYTES};
use super::virtqueue::{QueueControl, QueueSetup, StoppedQueue, VirtqueuePoller};
use super::{ControllerShared, MAX_MEM_SLOTS, MAX_QUEUE_SIZE};
use crate::bdev::{BdevEntry, ChannelContext};
use crate::reactor::{PollerKind, Reactors};

/// How long a stopping poller may take to finish its in-flight requests.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reactor may take to start a poller.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One guest memory region as the front end described it.
struct MappedRegion {
    gpa: u64,
    size: u64,
    /// The front end's own address for it (vring addresses are given in these).
    user_addr: u64,
    region: Arc<GuestRegionMmap>,
}

struct Running {
    reactor: usize,
    control: Arc<QueueControl>,
    stopped: Receiver<StoppedQueue>,
}

#[derive(Default)]
struct Vring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    base: u16,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
    running: Option<Running>,
}

pub struct BlkBackend {
    ctrl: Arc<ControllerShared>,
    bdev: BdevEntry,
    reactors: Reactors,
    /// The reactors this controller's queues run on (from its cpumask).
    queue_reactors: Vec<usize>,
    config: BlkConfig,
    serial: [u8; ID_BYTES],
    acked_features: u64,
    regions: Vec<MappedRegion>,
    mem: Option<Arc<GuestMemoryMmap>>,
    vrings: Vec<Vring>,
    inflight: Option<Arc<InflightMap>>,
    /// Pollers that did not stop (or start) in time, by vring: their vring stays out of use
    /// until they hand their queue back, so that two pollers never share one ring.
    zombies: Vec<(usize, Running)>,
    /// A request that needs an answer failed (the `vhost` crate then sends none): the
    /// connection must close, or the front end would wait for that answer forever.
    pub reply_missing: bool,
    /// Our copy of the back-end channel (`backend_channel`), and the protocol features the
    /// front end acked (CONFIG_CHANGE_MSG needs CONFIG and BACKEND_REQ).
    channel: Option<std::os::unix::net::UnixStream>,
    protocol_features: VhostUserProtocolFeatures,
    /// The capacity the front end last read (GET_CONFIG at offset 0; u64::MAX: unknown).
    front_end_blocks: u64,
    /// A CONFIG_CHANGE_MSG is due once a ring runs (after a resize, or when rings start).
    notice_pending: bool,
    /// Whether a ring ran at the last look (a start makes a notice due again).
    was_running: bool,
}

fn invalid(why: &'static str) -> VuError {
    VuError::InvalidOperation(why)
}

impl BlkBackend {
    pub fn new(
        ctrl: Arc<ControllerShared>,
        bdev: BdevEntry,
        reactors: Reactors,
        queue_reactors: Vec<usize>,
        config: BlkConfig,
    ) -> BlkBackend {
        let mut serial = [0u8; ID_BYTES];
        let id = bdev.bdev.uuid().simple().to_string();
        let n = id.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        let vrings = (0..config.num_queues).map(|_| Vring::default()).collect();
        BlkBackend {
            ctrl,
            bdev,
            reactors,
            queue_reactors,
            config,
            serial,
            acked_features: 0,
            regions: Vec::new(),
            mem: None,
            vrings,
            inflight: None,
            zombies: Vec::new(),
            reply_missing: false,
            channel: None,
            protocol_features: VhostUserProtocolFeatures::empty(),
            front_end_blocks: u64::MAX,
            notice_pending: false,
            was_running: false,
        }
    }

    /// The front end's back-end channel, as the control thread caught it on its way in.
    pub fn set_channel(&mut self, channel: std::os::unix::net::UnixStream) {
        self.channel = Some(channel);
    }

    /// Follows the bdev's size (a volume resized online): the configuration space and the
    /// queue pollers take the new size, and a front end that gave us a back-end channel is
    /// told (CONFIG_CHANGE_MSG), so that it reads the configuration again and its guest sees
    /// the new capacity.
    ///
    /// The notice goes only to a started device, and again whenever rings start while the
    /// front end has not read the size since: QEMU ignores it before the device starts (and
    /// QEMU before 7.2 crashed on it then), and reads the configuration only at realize and
    /// on this notice.
    pub fn follow_size(&mut self) {
        if !self.bdev.bdev.resizable() {
            return;
        }
        let now = self.bdev.bdev.num_blocks();
        if now != self.config.num_blocks {
            tracing::info!(ctrlr = %self.ctrl.name, from = self.config.num_blocks, to = now, "bdev resized");
            self.config.num_blocks = now;
            self.ctrl.num_blocks.store(now, Ordering::Relaxed);
            self.notice_pending = true;
        }
        let running = self.vrings.iter().any(|v| v.running.is_some());
        if running && !std::mem::replace(&mut self.was_running, running) {
            self.notice_pending = true;
        }
        self.was_running = running;
        if !self.notice_pending || !running {
            return;
        }
        self.notice_pending = false;
        if self.front_end_blocks == self.config.num_blocks {
            return;
        }
        let wanted = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::BACKEND_REQ;
        if let (Some(ch), true) = (
            &self.channel,
            self.protocol_acked() && self.protocol_features.contains(wanted),
        ) {
            if let Err(e) = super::backend_channel::send_config_change(ch) {
                tracing::warn!(ctrlr = %self.ctrl.name, "telling the front end of the new size failed: {e}");
                self.channel = None;
            }
        }
    }

    fn vring(&mut self, index: u32) -> VuResult<&mut Vring> {
        self.vrings
            .get_mut(index as usize)
            .ok_or(VuError::InvalidParam)
    }

    fn protocol_acked(&self) -> bool {
        self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES != 0
    }

    /// The front end went away (or asked for a reset): stop every queue and forget its memory.
    pub fn disconnect(&mut self) {
        self.reply_missing = false;
        for i in 0..self.vrings.len() {
            self.stop(i);
        }
        for v in self.vrings.iter_mut() {
            *v = Vring::default();
        }
        self.mem = None;
        self.regions.clear();
        self.inflight = None;
        self.acked_features = 0;
        self.channel = None;
        self.protocol_features = VhostUserProtocolFeatures::empty();
        self.front_end_blocks = u64::MAX;
        self.notice_pending = false;
        self.was_running = false;
    }

    /// Translates a front-end virtual address (vring addresses) to a guest-physical one.
    fn va_to_gpa(&self, va: u64) -> VuResult<u64> {
        self.regions
            .iter()
            .find(|r| va >= r.user_addr && va - r.user_addr < r.size)
            .map(|r| r.gpa + (va - r.user_addr))
            .ok_or(VuError::InvalidParam)
    }

    fn map_region(r: &VhostUserMemoryRegion, file: File) -> VuResult<MappedRegion> {
        if r.memory_size == 0
            || r.guest_phys_addr.checked_add(r.memory_size).is_none()
            || r.user_addr.checked_add(r.memory_size).is_none()
        {
            return Err(VuError::InvalidParam);
        }
        // A region larger than its file would fault (SIGBUS) on the first access past the end.
        let file_bytes = file.metadata().map_err(VuError::ReqHandlerError)?.len();
        let (size, offset) = (r.memory_size, r.mmap_offset);
        if offset.checked_add(size).is_none_or(|end| end > file_bytes) {
            tracing::warn!(
                "guest memory region of {size} bytes at offset {offset} does not fit its {file_bytes}-byte file"
            );
            return Err(VuError::InvalidParam);
        }
        let mmap = MmapRegion::<()>::from_file(
            FileOffset::new(file, r.mmap_offset),
            r.memory_size as usize,
        )
        .map_err(|e| {
            tracing::warn!("cannot map guest memory region: {e}");
            VuError::InvalidParam
        })?;
        let region = GuestRegionMmap::new(mmap, GuestAddress(r.guest_phys_addr))
            .ok_or(VuError::InvalidParam)?;
        Ok(MappedRegion {
            gpa: r.guest_phys_addr,
            size: r.memory_size,
            user_addr: r.user_addr,
            region: Arc::new(region),
        })
    }

    /// Rebuilds the guest memory map from `self.regions`, stopping running queues first (their
    /// in-flight requests point into the old map) and starting every ready queue after.
    fn remap(&mut self) -> VuResult<()> {
        for i in 0..self.vrings.len() {
            self.stop(i);
        }
        self.regions.sort_by_key(|r| r.gpa);
        let result = if self.regions.is_empty() {
            self.mem = None;
            Ok(())
        } else {
            match GuestMemoryMmap::from_arc_regions(
                self.regions.iter().map(|r| r.region.clone()).collect(),
            ) {
                Ok(m) => {
                    self.mem = Some(Arc::new(m));
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(ctrlr = %self.ctrl.name, "guest memory regions refused: {e}");
                    Err(VuError::InvalidParam)
                }
            }
        };
        // Every ring that can run now (also those that could not start before this map).
        for i in 0..self.vrings.len() {
            self.try_start(i);
        }
        result
    }

    /// Forgets the zombies that have handed their queue back at last; true if vring `i` still
    /// has one.
    fn zombie_holds(&mut self, i: usize) -> bool {
        self.zombies.retain(|(_, run)| {
            matches!(
                run.stopped.try_recv(),
                Err(std::sync::mpsc::TryRecvError::Empty)
            )
        });
        self.zombies.iter().any(|(z, _)| *z == i)
    }

    /// Starts vring `i`'s poller if everything it needs is there.
    fn try_start(&mut self, i: usize) {
        let Some(mem) = self.mem.clone() else { return };
        if self.zombie_holds(i) {
            tracing::warn!(ctrlr = %self.ctrl.name, queue = i, "queue not started: its previous poller has not stopped yet");
            return;
        }
        let event_idx = self.acked_features & RING_F_EVENT_IDX != 0;
        let inflight = self.inflight.clone();
        let reactor = self.queue_reactors[i % self.queue_reactors.len()];
        let v = &mut self.vrings[i];
        if v.running.is_some() || v.size == 0 || v.kick.is_none() || !v.enabled || v.desc == 0 {
            return;
        }
        let mut queue = match Queue::new(MAX_QUEUE_SIZE) {
            Ok(q) => q,
            Err(_) => return,
        };
        let setup_ok = queue.try_set_size(v.size).is_ok()
            && queue
                .try_set_desc_table_address(GuestAddress(v.desc))
                .is_ok()
            && queue
                .try_set_avail_ring_address(GuestAddress(v.avail))
                .is_ok()
            && queue
                .try_set_used_ring_address(GuestAddress(v.used))
                .is_ok();
        queue.set_event_idx(event_idx);
        queue.set_next_avail(v.base);
        queue.set_next_used(v.base);
        queue.set_ready(true);
        if !setup_ok || !queue.is_valid(&*mem) {
            tracing::warn!(ctrlr = %self.ctrl.name, queue = i, "vring addresses or size are not valid in guest memory; queue not started");
            return;
        }
        let mut resubmit = Vec::new();
        let mut inflight_q = None;
        if let Some(map) = &inflight {
            if let Some(mut q) = map.queue(i as u16, v.size) {
                match q.recover(&mem, GuestAddress(v.used)) {
                    Some((used_idx, next_avail, heads)) => {
                        tracing::debug!(ctrlr = %self.ctrl.name, queue = i, base = v.base, used_idx, next_avail, in_flight = heads.len(), "inflight region read");
                        if !heads.is_empty() {
                            tracing::info!(ctrlr = %self.ctrl.name, queue = i, requests = heads.len(), "running again the requests in flight when the last connection ended");
                        }
                        queue.set_next_used(used_idx);
                        queue.set_next_avail(next_avail);
                        resubmit = heads;
                    }
                    None => {
                        tracing::warn!(ctrlr = %self.ctrl.name, queue = i, "inflight region unreadable; not used")
                    }
                }
                inflight_q = Some(q);
            }
        }
        let control = Arc::new(QueueControl::default());
        let (stopped_tx, stopped_rx) = sync_channel(1);
        let (ack_tx, ack_rx) = sync_channel::<Result<(), String>>(1);
        let kick = v.kick.take().expect("checked above");
        let call = v.call.take();
        let geometry = Geometry {
            block_size: self.config.block_size,
            num_blocks: self.config.num_blocks,
            max_segs: self.config.seg_max as usize,
            max_rw_blocks: self.bdev.bdev.max_rw_blocks(),
            readonly: self.config.readonly,
        };
        let bdev = self.bdev.clone();
        let serial = self.serial;
        let ctrl = self.ctrl.clone();
        let ctl = control.clone();
        let queue_size = v.size as u32;
        let name = format!("vhost:{}:q{i}", self.ctrl.name);
        let sent = self.reactors.send(reactor, move |r| {
            let channel = match bdev.open_channel(&ChannelContext {
                queue_depth: queue_size,
                buffers: None,
            }) {
                Ok(c) => c,
                Err(e) => {
                    let _ = stopped_tx.send(StoppedQueue { queue, kick, call });
                    let _ = ack_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let mut poller = VirtqueuePoller::new(QueueSetup {
                index: i as u16,
                queue,
                mem,
                kick,
                call,
                channel,
                geometry,
                serial,
                control: ctl,
                ctrl,
                inflight: inflight_q,
                resubmit,
                stopped: stopped_tx,
            });
            let fd = poller.kick_fd();
            if r.register_poller_with_wake_fd(name, PollerKind::Io, 0, Some(fd), move |ctx| {
                poller.poll(ctx)
            }) {
                let _ = ack_tx.send(Ok(()));
            } else {
                let _ = ack_tx.send(Err("the reactor has too many pollers".into()));
            }
        });
        if let Err(e) = sent {
            tracing::error!(ctrlr = %self.ctrl.name, queue = i, "cannot start queue: {e}");
            return;
        }
        match ack_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => {
                tracing::debug!(ctrlr = %self.ctrl.name, queue = i, reactor, "queue started");
                v.running = Some(Running {
                    reactor,
                    control,
                    stopped: stopped_rx,
                });
            }
            Ok(Err(e)) => {
                tracing::error!(ctrlr = %self.ctrl.name, queue = i, "cannot start queue: {e}");
                if let Ok(s) = stopped_rx.try_recv() {
                    v.kick = Some(s.kick);
                    v.call = s.call;
                }
            }
            Err(_) => {
                tracing::error!(ctrlr = %self.ctrl.name, queue = i, "reactor {reactor} did not start the queue in time");
                // It may still start later: have it stop at once, and keep the ring out of use
                // until it hands the queue back.
                control.stop.store(true, Ordering::Relaxed);
                self.zombies.push((
                    i,
                    Running {
                        reactor,
                        control,
                        stopped: stopped_rx,
                    },
                ));
            }
        }
    }

    /// Stops vring `i`'s poller (after its in-flight requests finish) and keeps its state.
    fn stop(&mut self, i: usize) {
        let Some(run) = self.vrings[i].running.take() else {
            return;
        };
        run.control.stop.store(true, Ordering::Relaxed);
        // Wake the reactor in case it sleeps; the poller sees the flag on its next pass.
        let _ = self.reactors.send(run.reactor, |_| {});
        match run.stopped.recv_timeout(STOP_TIMEOUT) {
            Ok(s) => {
                let v = &mut self.vrings[i];
                v.base = s.queue.next_avail();
                v.kick = Some(s.kick);
                v.call = s.call;
            }
            Err(_) => {
                tracing::error!(
                    ctrlr = %self.ctrl.name,
                    queue = i,
                    "queue did not stop within {STOP_TIMEOUT:?}; the ring stays out of use until it does"
                );
                self.zombies.push((i, run));
            }
        }
    }
}

impl VhostUserBackendReqHandlerMut for BlkBackend {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.disconnect();
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.disconnect();
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.config.features())
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !self.config.features() != 0 {
            return Err(VuError::InvalidParam);
        }
        self.acked_features = features;
        if !self.protocol_acked() {
            // Without protocol features a vring is enabled as soon as it is set up.
            for v in self.vrings.iter_mut() {
                v.enabled = true;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if ctx.len() != files.len() || ctx.len() > MAX_MEM_SLOTS as usize {
            return Err(VuError::InvalidParam);
        }
        let mut regions = Vec::with_capacity(ctx.len());
        for (r, f) in ctx.iter().zip(files) {
            regions.push(Self::map_region(r, f)?);
        }
        self.regions = regions;
        self.remap()?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        if num == 0 || num > MAX_QUEUE_SIZE as u32 || !num.is_power_of_two() {
            return Err(VuError::InvalidParam);
        }
        self.vring(index)?.size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let desc = self.va_to_gpa(descriptor)?;
        let used = self.va_to_gpa(used)?;
        let avail = self.va_to_gpa(available)?;
        let v = self.vring(index)?;
        v.desc = desc;
        v.used = used;
        v.avail = avail;
        self.try_start(index as usize);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let v = self.vring(index)?;
        if v.running.is_some() {
            return Err(invalid("vring base set while the vring runs"));
        }
        v.base = base as u16;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        if self.vring(index).is_err() {
            self.reply_missing = true;
            return Err(VuError::InvalidParam);
        }
        self.stop(index as usize);
        if self.zombie_holds(index as usize) {
            // No true base to report while the old poller may still move the ring.
            self.reply_missing = true;
            return Err(invalid("vring did not stop"));
        }
        let v = &mut self.vrings[index as usize];
        // The vring is stopped until a new kick eventfd starts it again.
        v.kick = None;
        v.call = None;
        if self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            v.enabled = false;
        }
        Ok(VhostUserVringState::new(index, v.base as u32))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let i = index as usize;
        self.vring(index as u32)?;
        if fd.as_ref().is_some_and(|f| !is_eventfd(f)) {
            return Err(invalid("the kick descriptor is not an eventfd"));
        }
        self.stop(i);
        let protocol = self.protocol_acked();
        let v = &mut self.vrings[i];
        // A vring without a kick eventfd is polled without one: an eventfd that is never written
        // stands in for it, so the reactor still has something to sleep on.
        v.kick = Some(match fd {
            Some(f) => f,
            None => new_eventfd().map_err(VuError::ReqHandlerError)?,
        });
        if !protocol {
            v.enabled = true;
        }
        self.try_start(i);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let i = index as usize;
        self.vring(index as u32)?;
        // A pipe or socket here could block the reactor when the guest is signalled.
        if fd.as_ref().is_some_and(|f| !is_eventfd(f)) {
            return Err(invalid("the call descriptor is not an eventfd"));
        }
        let was_running = self.vrings[i].running.is_some();
        self.stop(i);
        self.vrings[i].call = fd;
        if was_running {
            self.try_start(i);
        }
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        self.vring(index as u32)?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        // The vhost crate keeps the acked set and checks each request against it; ours says
        // which messages we may send.
        self.protocol_features = VhostUserProtocolFeatures::from_bits_truncate(features);
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.vring(index)?.enabled = enable;
        if enable {
            self.try_start(index as usize);
        } else {
            self.stop(index as usize);
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        let bytes = self.config.bytes();
        if offset == 0 && size >= 8 {
            // The capacity (the first 8 bytes): what the front end now knows.
            self.front_end_blocks = self.config.num_blocks;
        }
        let start = offset as usize;
        // vhost-user's configuration space is at most 256 bytes.
        if offset > 256 || size > 256 - offset {
            self.reply_missing = true;
            return Err(VuError::InvalidParam);
        }
        let end = start + size as usize;
        if end > bytes.len() {
            // Reads past what we describe see zeroes, as on a device with a shorter space.
            let mut out = vec![0u8; size as usize];
            if start < bytes.len() {
                out[..bytes.len() - start].copy_from_slice(&bytes[start..]);
            }
            return Ok(out);
        }
        Ok(bytes[start..end].to_vec())
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        Err(invalid("the virtio-blk configuration space is read-only"))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(invalid("not a GPU device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(invalid("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        let queues = inflight.num_queues;
        let size = inflight.queue_size;
        tracing::debug!(ctrlr = %self.ctrl.name, queues, size, "new inflight region");
        if queues as usize > self.vrings.len() || size as u32 > MAX_QUEUE_SIZE as u32 {
            self.reply_missing = true;
            return Err(VuError::InvalidParam);
        }
        let (map, file) = InflightMap::create(queues, size).map_err(|e| {
            self.reply_missing = true;
            VuError::ReqHandlerError(e)
        })?;
        let len = super::inflight::queue_region_bytes(size) as u64 * queues as u64;
        drop(map);
        Ok((VhostUserInflight::new(len, 0, queues, size), file))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VuResult<()> {
        tracing::debug!(ctrlr = %self.ctrl.name, bytes = inflight.mmap_size, queues = inflight.num_queues, size = inflight.queue_size, "inflight region handed over");
        let map = InflightMap::map(
            &file,
            inflight.mmap_offset,
            inflight.mmap_size,
            inflight.num_queues,
            inflight.queue_size,
        )
        .map_err(VuError::ReqHandlerError)?;
        self.inflight = Some(Arc::new(map));
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        if self.regions.len() >= MAX_MEM_SLOTS as usize {
            return Err(VuError::InvalidParam);
        }
        let mapped = Self::map_region(region, fd)?;
        let (gpa, size) = (mapped.gpa, mapped.size);
        self.regions.push(mapped);
        if let Err(e) = self.remap() {
            // `remap` sorted the regions: take back exactly the one just added.
            self.regions.retain(|r| !(r.gpa == gpa && r.size == size));
            let _ = self.remap();
            return Err(e);
        }
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        let before = self.regions.len();
        self.regions
            .retain(|r| !(r.gpa == region.guest_phys_addr && r.size == region.memory_size));
        if self.regions.len() == before {
            return Err(VuError::InvalidParam);
        }
        self.remap()
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(invalid("device state transfer is not supported"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(invalid("device state transfer is not supported"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(invalid("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(invalid("dirty logging (migration) is not supported"))
    }
}

/// Whether `f` is an eventfd (the only kind of kick or call descriptor taken: a pipe or a
/// socket could block the reactor that reads or writes it).
fn is_eventfd(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map(|p| p.as_os_str() == "anon_inode:[eventfd]")
        .unwrap_or(false)
}

fn new_eventfd() -> std::io::Result<File> {
    // SAFETY: eventfd returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}
