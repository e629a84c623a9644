//! The back-end channel: the socket a front end hands over with SET_BACKEND_REQ_FD, on which
//! the back end sends it messages. We send one: CONFIG_CHANGE_MSG, when the bdev was resized,
//! so that the front end reads the configuration space again and its guest sees the new
//! capacity (QEMU raises a configuration interrupt).
//!
//! The `vhost` crate (0.18) takes that socket and offers no way to send this message on it.
//! So the control thread peeks at each message before the crate reads it: a peek at a message
//! carrying file descriptors receives copies of them (the kernel installs them again), so the
//! copy of SET_BACKEND_REQ_FD's socket is kept and every other copy is closed at once.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// vhost-user front-end request code of SET_BACKEND_REQ_FD.
const SET_BACKEND_REQ_FD: u32 = 21;
/// vhost-user back-end request code of CONFIG_CHANGE_MSG.
const CONFIG_CHANGE_MSG: u32 = 2;
/// The header's flags: protocol version 1, no reply wanted (QEMU answers this message by
/// asking us for the configuration on the main socket, which the same thread serves).
const VERSION_1: u32 = 1;
/// How long a send may wait for a front end that does not read its channel.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Peeks at the next message on the vhost-user socket `sock` without consuming it; if it is
/// SET_BACKEND_REQ_FD with one descriptor, returns our own copy of that socket.
pub fn peek_backend_req_fd(sock: RawFd) -> Option<UnixStream> {
    let mut header = [0u8; 12];
    let mut iov = libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: header.len(),
    };
    // u64s: aligned for cmsghdr.
    let mut control = [0u64; 64];
    // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg into the buffers `msg` points at, all live for the call.
    let n = unsafe {
        libc::recvmsg(
            sock,
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    let mut fds: Vec<OwnedFd> = Vec::new();
    if n < 0 {
        return None; // nothing waiting (EAGAIN), or the crate's read will see the error
    }
    // SAFETY: walking the control messages recvmsg filled in, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                // At most what the control buffer holds (fewer than 128 descriptors).
                for i in 0..count.min(128) {
                    // Each is a descriptor the kernel just installed for us: ours to close.
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let request = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    if n < header.len() as isize || request != SET_BACKEND_REQ_FD || fds.len() != 1 {
        return None; // the copies close as `fds` drops
    }
    let fd = fds.pop().expect("one descriptor");
    // As the vhost crate checks: a Unix stream socket, not (say) a file we would write into.
    let int_opt = |opt| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a live c_int of the length given.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    if int_opt(libc::SO_DOMAIN) != Some(libc::AF_UNIX)
        || int_opt(libc::SO_TYPE) != Some(libc::SOCK_STREAM)
    {
        return None;
    }
    let stream = UnixStream::from(fd);
    stream.set_write_timeout(Some(SEND_TIMEOUT)).ok()?;
    Some(stream)
}

/// Sends CONFIG_CHANGE_MSG (no payload, no reply asked) on the back-end channel. A short
/// send (the timeout hit) is an error: the caller then drops the channel.
pub fn send_config_change(channel: &UnixStream) -> std::io::Result<()> {
    let mut header = [0u8; 12];
    header[..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
    header[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
    // SAFETY: send from a live 12-byte buffer; MSG_NOSIGNAL: a closed peer is an error, not
    // a SIGPIPE.
    let n = unsafe {
        libc::send(
            channel.as_raw_fd(),
            header.as_ptr().cast(),
            header.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    match n {
        12 => Ok(()),
        n if n < 0 => Err(std::io::Error::last_os_error()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "CONFIG_CHANGE_MSG sent in part",
        )),
    }
}
