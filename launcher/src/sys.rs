//! Thin wrappers over the few Linux calls the launcher needs. Raw `libc`
//! rather than a bigger abstraction keeps the static binary small and the
//! behaviour obvious; every `unsafe` block is a single syscall on values we own.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Signals the launcher passes on to the trainer.
pub const FORWARDED: [i32; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGHUP,
];

/// Forwarded signals that mean "stop": the attempt counts as a preemption.
pub fn is_stop_signal(sig: i32) -> bool {
    matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGHUP)
}

pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("SIG{sig}"),
    };
    name.to_string()
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Resets the dispositions we rely on and blocks the signals we handle, then
/// returns a signalfd for them.
///
/// Ignored dispositions survive exec, so a launcher started with SIGTERM
/// ignored (nohup, some runtimes) would hand that on to the trainer, and an
/// ignored SIGCHLD would make the kernel auto-reap children and hide the
/// trainer's exit status. Blocking (not handling) means a signal that arrives
/// while we scan checkpoints stays pending instead of being lost, and PID 1 in
/// a PID namespace still receives blocked signals.
pub fn signalfd_for(signals: &[i32]) -> io::Result<OwnedFd> {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::signal(s, libc::SIG_DFL);
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = cvt(libc::signalfd(
            -1,
            &set,
            libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// For the child between fork and exec: only async-signal-safe calls.
pub fn unblock_all_signals() -> io::Result<()> {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub struct SigInfo {
    pub signo: i32,
    pub sender_pid: u32,
}

/// Drains a non-blocking signalfd.
pub fn read_signals(fd: &OwnedFd) -> io::Result<Vec<SigInfo>> {
    let mut out = Vec::new();
    loop {
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                &mut info as *mut _ as *mut libc::c_void,
                std::mem::size_of::<libc::signalfd_siginfo>(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(out);
            }
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n as usize != std::mem::size_of::<libc::signalfd_siginfo>() {
            return Ok(out);
        }
        out.push(SigInfo {
            signo: info.ssi_signo as i32,
            sender_pid: info.ssi_pid,
        });
    }
}

/// Makes orphaned descendants re-parent to us, so that we can reap them even
/// when we are not PID 1 (tests, `docker run --init`-less local runs).
pub fn set_child_subreaper() -> io::Result<()> {
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(|_| ())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell convention, which is also what the kubelet shows.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Reaps every child that has exited, without blocking.
pub fn reap_all() -> Vec<(i32, Exit)> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            // 0: children left but none exited; -1/ECHILD: no children left.
            if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return out;
        }
        let exit = if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            continue;
        };
        out.push((pid, exit));
    }
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    cvt(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

/// Waits until one of `fds` is readable; returns which ones.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(pfds.iter().map(|p| p.revents != 0).collect());
    }
}

pub struct Inotify {
    fd: OwnedFd,
}

#[derive(Debug, Clone)]
pub struct InotifyEvent {
    pub wd: i32,
    pub mask: u32,
    pub name: Option<OsString>,
}

impl Inotify {
    pub fn new() -> io::Result<Self> {
        let fd = cvt(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
        Ok(Inotify {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn add_watch(&self, path: &Path, mask: u32) -> io::Result<i32> {
        let c = cstring(path.as_os_str())?;
        cvt(unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) })
    }

    pub fn rm_watch(&self, wd: i32) {
        unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
    }

    pub fn read_events(&self) -> io::Result<Vec<InotifyEvent>> {
        // Aligned like struct inotify_event; large enough for many events with
        // NAME_MAX names so one read usually drains the queue.
        let mut buf = vec![0u64; 4096];
        let mut out = Vec::new();
        loop {
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len() * 8,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(out),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            if n == 0 {
                return Ok(out);
            }
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, n as usize) };
            let hdr = std::mem::size_of::<libc::inotify_event>();
            let mut off = 0;
            while off + hdr <= bytes.len() {
                let wd = i32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap());
                let mask = u32::from_ne_bytes(bytes[off + 4..off + 8].try_into().unwrap());
                let len =
                    u32::from_ne_bytes(bytes[off + 12..off + 16].try_into().unwrap()) as usize;
                let name_bytes = &bytes[off + hdr..(off + hdr + len).min(bytes.len())];
                let end = name_bytes
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(name_bytes.len());
                let name = (end > 0).then(|| OsString::from_vec(name_bytes[..end].to_vec()));
                out.push(InotifyEvent { wd, mask, name });
                off += hdr + len;
            }
        }
    }
}

pub fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// fsync of a directory, which is what makes a rename inside it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether a process with this pid exists (EPERM still means it exists).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
