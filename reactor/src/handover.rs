//! Handing listening sockets to the process that replaces this one, over a Unix socket
//! (`SCM_RIGHTS`), so that a server's binary is replaced without refusing a connect.
//!
//! The running process offers its listeners on a Unix socket path ([`Offer`], or
//! [`serve`], which runs the whole exchange on a thread of its own); its successor
//! connects ([`Takeover::connect`]), receives every listening socket in one message
//! with a small description naming which is which, starts accepting on them
//! ([`Builder::listen_inherited`](crate::Builder::listen_inherited)) and then says it is
//! ready ([`Takeover::ready`]). Only then does the running process stop accepting
//! ([`Reactor::stop_accepting`](crate::Reactor::stop_accepting)) and drain: the
//! sockets were never closed, so a connect that arrived meanwhile waits in their queue
//! for whichever process accepts first. A successor that fails before saying ready
//! (its connection closes, or it says nothing in time) changes nothing: the running
//! process goes on accepting and offers again to the next one.
//!
//! # Examples
//!
//! ```
//! use std::net::TcpListener;
//! use std::time::Duration;
//! use reactor::handover::{Offer, Takeover};
//!
//! let dir = tempfile_dir();
//! let path = dir.join("upgrade.sock");
//! let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//! let addr = listener.local_addr().unwrap();
//! let offer = Offer::bind(&path).unwrap();
//!
//! // The successor, usually another process:
//! let successor = std::thread::spawn(move || {
//!     let mut takeover = Takeover::connect(&path, Duration::from_secs(5)).unwrap();
//!     let sockets = takeover.take("http").unwrap();
//!     assert_eq!(sockets[0].local_addr().unwrap(), addr);
//!     // ... start accepting on them (Builder::listen_inherited), then:
//!     takeover.ready(Duration::from_secs(5)).unwrap();
//! });
//!
//! let mut peer = offer.accept_timeout(Duration::from_secs(5)).unwrap().unwrap();
//! peer.send(&[("http", std::slice::from_ref(&listener))]).unwrap();
//! peer.wait_ready(Duration::from_secs(5)).unwrap();
//! // The successor accepts now: stop accepting here, drain (handing established
//! // connections over with the `Handoff` returned), exit.
//! let _handoff = peer.confirm().unwrap();
//! successor.join().unwrap();
//! # fn tempfile_dir() -> std::path::PathBuf {
//! #     let d = std::env::temp_dir().join(format!("handover-doc-{}", std::process::id()));
//! #     std::fs::create_dir_all(&d).unwrap();
//! #     d
//! # }
//! ```
//!
//! # The exchange
//!
//! On one Unix stream connection:
//!
//! 1. running → successor, one message: the text `reactor-handover 1\n`, then a line
//!    `<name> <count>\n` per listener (names without spaces, as given), then an empty
//!    line; every socket rides with it as `SCM_RIGHTS`, in the order of the lines.
//! 2. successor → running: `ready\n` once it accepts on them.
//! 3. running → successor: `draining\n`: the running process stopped accepting.
//! 4. running → successor, any number of times while it drains: `conn <name> <len>\n`
//!    and `len` bytes, with one socket as `SCM_RIGHTS`: an established connection
//!    handed over between two of its requests ([`Handoff::send`]), and the input
//!    already read from it but not yet processed. The successor takes each on
//!    ([`Arrivals::recv`], then [`Ctx::adopt`](crate::Ctx::adopt)); the running
//!    process's exit ends the stream.
//!
//! # Errors
//!
//! Every function returns the I/O error met; a description that does not parse, too
//! many sockets ([`MAX_SOCKETS`]) or too long a description ([`MAX_DESCRIPTION`]) are
//! [`io::ErrorKind::InvalidData`], and sockets received with a message refused are
//! closed, never leaked.
//!
//! # Notes
//!
//! `SCM_RIGHTS` is POSIX: this builds on Linux, macOS and the BSDs. std's own ancillary
//! data API (`std::os::unix::net::SocketAncillary`) is not stable yet, so this module
//! calls `sendmsg`/`recvmsg` through `libc`, each `unsafe` block with a `SAFETY` note.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most sockets one handover carries.
pub const MAX_SOCKETS: usize = 64;
/// Longest description (bytes) one handover carries.
pub const MAX_DESCRIPTION: usize = 4096;
/// Most unprocessed input (bytes) a connection handed over may carry.
pub const MAX_HANDED_INPUT: usize = 64 << 20;
/// How long a connection handed over may take to write: the successor reads them as
/// they come, so only a stuck one hits this.
const HANDOFF_WRITE_WITHIN: Duration = Duration::from_secs(2);

const MAGIC: &str = "reactor-handover 1";
const READY: &[u8] = b"ready\n";
const DRAINING: &[u8] = b"draining\n";

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The running process's side: a Unix socket a successor connects to.
#[derive(Debug)]
pub struct Offer {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's `(device, inode)`, to remove only our own on drop.
    identity: (u64, u64),
}

impl Offer {
    /// Listens on `path` (mode 0600: only this user may connect). A socket file left there (by a process that exited, or the one
    /// this process replaced) is removed first; any other kind of file is an error.
    ///
    /// # Errors
    /// `path` holds something else than a socket, or binding failed.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Offer> {
        let path = path.as_ref();
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        listener.set_nonblocking(true)?;
        Ok(Offer {
            listener,
            path: path.to_path_buf(),
            identity: file_identity(path)?,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for a successor to connect (`None`: nobody did).
    ///
    /// # Errors
    /// Accepting failed.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<Option<Successor>> {
        let end = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false)?;
                    return Ok(Some(Successor {
                        stream,
                        said: Vec::new(),
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        // Only our own socket file: a successor may have bound a new one there since.
        if file_identity(&self.path).ok() == Some(self.identity) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The `(device, inode)` of the file at `path` (not following a link).
fn file_identity(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(path)?;
    Ok((md.dev(), md.ino()))
}

/// A successor connected to an [`Offer`].
#[derive(Debug)]
pub struct Successor {
    stream: UnixStream,
    /// What it said so far.
    said: Vec<u8>,
}

impl Successor {
    /// Sends the listeners: `(name, sockets)` per listener (names non-empty, without
    /// whitespace), in one message.
    ///
    /// # Errors
    /// A bad name, over [`MAX_SOCKETS`] sockets or [`MAX_DESCRIPTION`] bytes, or the
    /// connection failed.
    pub fn send(&mut self, listeners: &[(&str, &[TcpListener])]) -> io::Result<()> {
        let mut text = format!("{MAGIC}\n");
        let mut fds = Vec::new();
        for (name, socks) in listeners {
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("listener name {name:?}"),
                ));
            }
            text.push_str(&format!("{name} {}\n", socks.len()));
            fds.extend(socks.iter().map(AsRawFd::as_raw_fd));
        }
        text.push('\n');
        if fds.len() > MAX_SOCKETS || text.len() > MAX_DESCRIPTION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many listeners for one handover",
            ));
        }
        send_with_fds(&self.stream, text.as_bytes(), &fds)
    }

    /// Waits up to `timeout` for the successor to say it accepts on the sockets.
    ///
    /// # Errors
    /// The successor closed the connection (it failed), said something else, or
    /// nothing in time ([`io::ErrorKind::TimedOut`] or `WouldBlock`).
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the successor did not say ready in time",
                ));
            }
            if self.poll_ready(left)? {
                return Ok(());
            }
        }
    }

    /// Waits at most `timeout` for the successor to say it accepts: `Ok(true)` once it
    /// did, `Ok(false)` if not yet (ask again, or give up).
    ///
    /// # Errors
    /// The successor closed the connection (it failed) or said something else.
    pub fn poll_ready(&mut self, timeout: Duration) -> io::Result<bool> {
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; READY.len()];
        let room = READY.len() - self.said.len().min(READY.len());
        match self.stream.read(&mut buf[..room]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the successor closed the connection",
                ))
            }
            Ok(n) => self.said.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        }
        if !READY.starts_with(&self.said) {
            return Err(invalid("the successor did not say ready"));
        }
        Ok(self.said == READY)
    }

    /// Tells the successor this process stopped accepting (it may now take the offer's
    /// path over for its own successor); what it returns hands established
    /// connections over too, while this process drains.
    ///
    /// # Errors
    /// The connection failed.
    pub fn confirm(mut self) -> io::Result<Handoff> {
        self.stream.write_all(DRAINING)?;
        Ok(Handoff::new(self.stream))
    }
}

/// The running process's way to hand established connections to its successor (step 4
/// of the exchange), from any thread: clones share one connection to it. The last
/// clone dropped tells the successor nothing more comes.
#[derive(Debug, Clone)]
pub struct Handoff {
    stream: Arc<Mutex<UnixStream>>,
}

impl Handoff {
    fn new(stream: UnixStream) -> Handoff {
        Handoff {
            stream: Arc::new(Mutex::new(stream)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UnixStream> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `conn` over under `name` (the successor's way to know what it is: the
    /// listener it came from, say), with `input`: bytes read from it and not yet
    /// processed. The successor gets a duplicate of the socket: drop this one (without
    /// shutting it down) once this returns `Ok`. Blocks for as long as the successor
    /// takes to read it (bounded, a couple of seconds).
    ///
    /// # Errors
    /// A bad name (empty or with whitespace), `input` over [`MAX_HANDED_INPUT`], or the
    /// successor is gone: then keep serving the connection, or close it.
    pub fn send(&self, name: &str, conn: &TcpStream, input: &[u8]) -> io::Result<()> {
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("connection name {name:?}"),
            ));
        }
        if input.len() > MAX_HANDED_INPUT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too much unprocessed input to hand over",
            ));
        }
        let mut message = format!("conn {name} {}\n", input.len()).into_bytes();
        message.extend_from_slice(input);
        let stream = self.lock();
        stream.set_write_timeout(Some(HANDOFF_WRITE_WITHIN))?;
        send_with_fds(&stream, &message, &[conn.as_raw_fd()])
    }
}

/// A connection received from the running process ([`Arrivals::recv`]).
#[derive(Debug)]
pub struct Arrival {
    /// The name it was handed over under.
    pub name: String,
    /// The socket, open both ways.
    pub stream: TcpStream,
    /// Bytes the running process read from it and did not process: they come before
    /// anything still in the socket.
    pub input: Vec<u8>,
}

/// The successor's side of step 4: connections the running process hands over while
/// it drains, until it exits.
#[derive(Debug)]
pub struct Arrivals {
    stream: UnixStream,
    /// Bytes received and not yet parsed.
    buf: Vec<u8>,
    /// Sockets received and not yet paired with their line.
    fds: VecDeque<OwnedFd>,
}

impl Arrivals {
    /// Waits for the next connection: `Ok(None)` once the running process closed the
    /// exchange (it exited, or handed everything over).
    ///
    /// # Errors
    /// A message that does not parse, a connection without its socket, or the
    /// connection failed: nothing more can be read after it.
    pub fn recv(&mut self) -> io::Result<Option<Arrival>> {
        loop {
            if let Some(arrival) = self.parse()? {
                return Ok(Some(arrival));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = recv_some(&self.stream, &mut chunk, &mut self.fds)?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(invalid("a handed-over connection cut short"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One whole message off the front of the buffer, if there is one.
    fn parse(&mut self) -> io::Result<Option<Arrival>> {
        let Some(eol) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > 256 {
                return Err(invalid("a handed-over connection's line is too long"));
            }
            return Ok(None);
        };
        let line = std::str::from_utf8(&self.buf[..eol])
            .map_err(|_| invalid("a handed-over connection's line is not UTF-8"))?;
        let mut words = line.split(' ');
        let (Some("conn"), Some(name), Some(len), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(invalid(format!("bad line {line:?}")));
        };
        let len: usize = len
            .parse()
            .ok()
            .filter(|&n| n <= MAX_HANDED_INPUT)
            .ok_or_else(|| invalid(format!("bad length in {line:?}")))?;
        let name = name.to_owned();
        if self.buf.len() < eol + 1 + len {
            return Ok(None);
        }
        let fd = self
            .fds
            .pop_front()
            .ok_or_else(|| invalid("a handed-over connection without its socket"))?;
        let input = self.buf[eol + 1..eol + 1 + len].to_vec();
        self.buf.drain(..eol + 1 + len);
        Ok(Some(Arrival {
            name,
            stream: TcpStream::from(fd),
            input,
        }))
    }
}

/// One listener received: its name and sockets.
#[derive(Debug)]
pub struct Inherited {
    /// The name the running process gave it.
    pub name: String,
    /// Its listening sockets (one per loop of the running process, usually).
    pub sockets: Vec<TcpListener>,
}

/// The successor's side: connected to the running process, with its listeners.
#[derive(Debug)]
pub struct Takeover {
    stream: UnixStream,
    listeners: Vec<Inherited>,
}

impl Takeover {
    /// Connects to the running process's [`Offer`] at `path` and receives its
    /// listeners, waiting at most `timeout` for them.
    ///
    /// # Errors
    /// Nobody listens there, or the message is not a handover (then any socket that
    /// came with it is closed).
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> io::Result<Takeover> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|e| {
            io::Error::new(e.kind(), format!("connecting to {}: {e}", path.display()))
        })?;
        stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let (text, fds) = recv_with_fds(&stream)?;
        let listeners = parse(&text, fds)?;
        Ok(Takeover { stream, listeners })
    }

    /// The names of the listeners received, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.listeners.iter().map(|l| l.name.as_str())
    }

    /// Takes the sockets of listener `name` (`None`: none of that name, or taken).
    pub fn take(&mut self, name: &str) -> Option<Vec<TcpListener>> {
        let i = self.listeners.iter().position(|l| l.name == name)?;
        Some(self.listeners.remove(i).sockets)
    }

    /// Says this process accepts on the sockets, and waits up to `timeout` for the
    /// running process to confirm it stopped accepting. Sockets not taken are closed
    /// (the running process still holds them). What it returns receives the
    /// connections the running process hands over while it drains (drop it to refuse
    /// them: the running process then closes them itself).
    ///
    /// # Errors
    /// The connection failed or closed first.
    pub fn ready(mut self, timeout: Duration) -> io::Result<Arrivals> {
        self.listeners.clear();
        self.stream.write_all(READY)?;
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut arrivals = Arrivals {
            stream: self.stream,
            buf: Vec::new(),
            fds: VecDeque::new(),
        };
        // Through recvmsg: a connection handed over may follow at once, its socket
        // attached.
        while arrivals.buf.len() < DRAINING.len() {
            let mut chunk = [0u8; 512];
            let n = recv_some(&arrivals.stream, &mut chunk, &mut arrivals.fds)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the running process closed the handover connection",
                ));
            }
            arrivals.buf.extend_from_slice(&chunk[..n]);
        }
        if !arrivals.buf.starts_with(DRAINING) {
            return Err(invalid("the running process did not confirm"));
        }
        arrivals.buf.drain(..DRAINING.len());
        arrivals.stream.set_read_timeout(None)?;
        Ok(arrivals)
    }
}

/// Parses a description and pairs its lines with the sockets received.
fn parse(text: &[u8], fds: Vec<OwnedFd>) -> io::Result<Vec<Inherited>> {
    let text = std::str::from_utf8(text).map_err(|_| invalid("description not UTF-8"))?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(invalid("not a handover (or another version)"));
    }
    let mut fds = fds.into_iter();
    let mut out = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, count) = line
            .split_once(' ')
            .ok_or_else(|| invalid(format!("bad line {line:?}")))?;
        let count: usize = count
            .parse()
            .map_err(|_| invalid(format!("bad count in {line:?}")))?;
        if count > MAX_SOCKETS {
            return Err(invalid("too many sockets"));
        }
        let mut sockets = Vec::with_capacity(count);
        for _ in 0..count {
            let fd = fds
                .next()
                .ok_or_else(|| invalid("fewer sockets than described"))?;
            sockets.push(TcpListener::from(fd));
        }
        out.push(Inherited {
            name: name.to_owned(),
            sockets,
        });
    }
    if fds.next().is_some() {
        return Err(invalid("more sockets than described"));
    }
    Ok(out)
}

/// Writes `data` with `fds` attached (`SCM_RIGHTS`), then whatever of `data` the first
/// `sendmsg` did not take.
#[allow(unsafe_code)]
fn send_with_fds(stream: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds);
    // u64 units keep the control buffer aligned for `cmsghdr`.
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg_control` points to `space` zeroed, aligned bytes, room for one
        // header with `fd_bytes` of data (CMSG_SPACE above), so CMSG_FIRSTHDR is
        // non-null and CMSG_DATA has `fd_bytes` writable bytes after it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() {
                return Err(io::Error::other("no room for the control message"));
            }
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    let sent = loop {
        // SAFETY: `msg` points to `iov` (valid for `data.len()` bytes) and `control`,
        // both alive for the call; the descriptors are open (borrowed from the caller).
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut w = stream;
    w.write_all(data.get(sent..).unwrap_or_default())
}

/// Reads one description (up to its empty line) and the descriptors that came with it.
fn recv_with_fds(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = vec![0u8; MAX_DESCRIPTION];
    let mut fds = Vec::new();
    let n = recv_some(stream, &mut data, &mut fds)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the running process closed the handover connection",
        ));
    }
    data.truncate(n);
    // The rest of the description, if the stream split it.
    let mut r = stream;
    while !data.ends_with(b"\n\n") {
        if data.len() >= MAX_DESCRIPTION {
            return Err(invalid("description too long"));
        }
        let mut more = [0u8; 512];
        let room = (MAX_DESCRIPTION - data.len()).min(more.len());
        match r.read(&mut more[..room]) {
            Ok(0) => return Err(invalid("description cut short")),
            Ok(m) => data.extend_from_slice(&more[..m]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((data, fds))
}

/// One `recvmsg`: bytes into `data` (their count returned, 0 at the end of the
/// stream), and every descriptor that came with them appended to `fds`, owned and
/// close-on-exec.
#[allow(unsafe_code)]
fn recv_some(
    stream: &UnixStream,
    data: &mut [u8],
    fds: &mut impl Extend<OwnedFd>,
) -> io::Result<usize> {
    let fd_bytes = MAX_SOCKETS * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    ))]
    let flags = libc::MSG_CMSG_CLOEXEC;
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    )))]
    let flags = 0;
    let n = loop {
        // SAFETY: `msg` points to `iov` (valid for `data.len()` writable bytes) and to
        // `control` (`space` writable, aligned bytes), both alive for the call.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // Take ownership of every descriptor received first, so that none leaks whatever
    // is wrong with the message.
    let mut received = Vec::new();
    // SAFETY: recvmsg filled `msg_controllen` bytes of `control` with well-formed
    // control messages; CMSG_FIRSTHDR/CMSG_NXTHDR walk them within that length, and an
    // SCM_RIGHTS message's data holds `(cmsg_len - CMSG_LEN(0)) / size_of::<c_int>()`
    // descriptors now open in this process, each owned once by the `OwnedFd` made of it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let count = len / std::mem::size_of::<RawFd>();
                let base = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(base.add(i));
                    received.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    )))]
    for fd in &received {
        // SAFETY: `fd` is open and ours; F_SETFD with FD_CLOEXEC only sets a flag.
        unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    fds.extend(received);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(invalid("too many sockets for one handover"));
    }
    Ok(n)
}

/// What [`serve`] does with a successor.
pub trait Offered: Send + 'static {
    /// The listeners to hand over now, by name (fresh duplicates, e.g. from
    /// [`Reactor::listeners`](crate::Reactor::listeners)).
    ///
    /// # Errors
    /// They could not be duplicated: the successor is turned away.
    fn listeners(&mut self) -> io::Result<Vec<(String, Vec<TcpListener>)>>;
    /// The successor accepts on them: stop accepting (and start draining). Called once;
    /// the exchange ends and the offer is withdrawn. `handoff` hands established
    /// connections to the successor while draining (keep clones where they are
    /// needed; a connection handed over before the successor heard that this process
    /// stopped accepting waits for that).
    fn ready(&mut self, handoff: Handoff);
    /// A successor failed before it was ready (logged already): nothing to do, usually.
    fn failed(&mut self, _error: &io::Error) {}
}

/// A thread serving an [`Offer`]: see [`serve`]. Dropping it withdraws the offer.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Withdraws the offer and waits for the thread (at most one in-progress exchange).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serves `offer` on a thread named `name`: each successor that connects gets
/// `offered`'s listeners and has `ready_within` to say it accepts on them; the first
/// that does ends the service (after [`Offered::ready`] returned, it is told so and
/// the offer's socket is removed). One that fails leaves everything as it was, and the
/// next may try.
///
/// # Errors
/// The thread could not be started.
pub fn serve(
    offer: Offer,
    name: &str,
    ready_within: Duration,
    mut offered: impl Offered,
) -> io::Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                let mut peer = match offer.accept_timeout(Duration::from_millis(100)) {
                    Ok(Some(p)) => p,
                    Ok(None) => continue,
                    Err(e) => {
                        log::warn!("handover socket {}: {e}", offer.path().display());
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                log::info!("handover: a successor connected; handing it the listeners");
                let exchange = offered.listeners().and_then(|ls| {
                    let refs: Vec<(&str, &[TcpListener])> =
                        ls.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
                    peer.send(&refs)?;
                    drop(ls);
                    // In slices, so that withdrawing the offer is never held up.
                    let end = Instant::now() + ready_within;
                    loop {
                        if peer.poll_ready(Duration::from_millis(100))? {
                            return Ok(true);
                        }
                        if stopped.load(Ordering::Acquire) {
                            return Ok(false);
                        }
                        if Instant::now() >= end {
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "no ready in time",
                            ));
                        }
                    }
                });
                match exchange {
                    Ok(false) => return, // withdrawn meanwhile
                    Ok(true) => {
                        log::info!("handover: the successor accepts; this process drains");
                        let handoff = Handoff::new(peer.stream);
                        // Held until the successor heard `draining`: connections the
                        // loops hand over meanwhile follow it.
                        let mut stream = handoff.lock();
                        offered.ready(handoff.clone());
                        // The socket file goes before the successor hears of it, so the
                        // one it binds there for its own successor is never removed.
                        drop(offer);
                        if let Err(e) = stream.write_all(DRAINING) {
                            log::warn!("handover: confirming to the successor: {e}");
                        }
                        return;
                    }
                    Err(e) => {
                        log::warn!(
                            "handover: the successor failed before it was ready ({e}); \
                             serving on as before"
                        );
                        offered.failed(&e);
                    }
                }
            }
        })?;
    Ok(Server {
        stop,
        thread: Some(thread),
    })
}
