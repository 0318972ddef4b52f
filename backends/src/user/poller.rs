//! One epoll set for all of the stack's host sockets plus a timer for the TCP state machine:
//! its descriptor is what the device polls, so a single queue worker serves every flow.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::sys;

/// What a readiness event is about; encoded in the epoll data word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Token {
    /// The stack's timer expired.
    Timer,
    /// A TCP flow's host socket (by flow id).
    Tcp(u64),
    /// A UDP flow's host socket.
    Udp(u64),
    /// An ICMP echo flow's ping socket.
    Icmp(u64),
    /// A `hostfwd` rule's listening or bound socket (by rule index).
    HostFwd(u64),
}

const KIND_SHIFT: u32 = 56;

impl Token {
    fn encode(self) -> u64 {
        let (kind, id) = match self {
            Token::Timer => (0, 0),
            Token::Tcp(id) => (1, id),
            Token::Udp(id) => (2, id),
            Token::Icmp(id) => (3, id),
            Token::HostFwd(id) => (4, id),
        };
        (kind << KIND_SHIFT) | (id & ((1 << KIND_SHIFT) - 1))
    }

    fn decode(word: u64) -> Token {
        let id = word & ((1 << KIND_SHIFT) - 1);
        match word >> KIND_SHIFT {
            1 => Token::Tcp(id),
            2 => Token::Udp(id),
            3 => Token::Icmp(id),
            4 => Token::HostFwd(id),
            _ => Token::Timer,
        }
    }
}

/// A readiness event.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub token: Token,
    /// Data or the peer's end of stream.
    pub readable: bool,
    pub writable: bool,
    /// Error or hang-up.
    pub failed: bool,
}

/// The epoll set and the timer in it.
#[derive(Debug)]
pub struct Poller {
    epoll: OwnedFd,
    timer: OwnedFd,
    /// When the timer is set to fire (`None`: disarmed or already fired).
    armed: Option<Instant>,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let epoll = sys::check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: the descriptor was just created and is owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        // SAFETY: timerfd_create takes no pointers; the result is checked.
        let timer = sys::check(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: as above.
        let timer = unsafe { OwnedFd::from_raw_fd(timer) };
        let poller = Poller {
            epoll,
            timer,
            armed: None,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
        };
        poller.add_readable(poller.timer.as_raw_fd(), Token::Timer)?;
        Ok(poller)
    }

    /// The descriptor that is readable while any event is pending.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn ctl(&self, fd: RawFd, token: Token, events: libc::c_int) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: events as u32,
            u64: token.encode(),
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        sys::check(unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
        })?;
        Ok(())
    }

    /// Watches a socket (or the timer) for data or its peer's end of stream.
    pub fn add_readable(&self, fd: RawFd, token: Token) -> io::Result<()> {
        self.ctl(fd, token, libc::EPOLLIN | libc::EPOLLRDHUP)
    }

    /// Watches a stream socket for every change, edge-triggered: readable (new data or the
    /// peer's end of stream), writable, failed. Its owner reads until it would block or keeps
    /// track of what it left.
    pub fn add_edge(&self, fd: RawFd, token: Token) -> io::Result<()> {
        let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        self.ctl(fd, token, events)
    }

    /// Arms the timer to fire once at `deadline` (`None` disarms it). Re-arming for the
    /// deadline already set costs nothing: no system call.
    pub fn arm_timer(&mut self, deadline: Option<Instant>) {
        if deadline == self.armed {
            return;
        }
        self.armed = deadline;
        let delay = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let value = match delay {
            // A zero it_value would disarm: fire as soon as possible instead.
            Some(d) => libc::timespec {
                tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: d.subsec_nanos().max(1) as libc::c_long,
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `spec` is valid for the call; the old value is not asked for.
        unsafe { libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }

    /// Clears an expired timer so that it stops being readable.
    fn drain_timer(&self) {
        let mut expirations = [0u8; 8];
        let _ = sys::read(self.timer.as_raw_fd(), &mut expirations);
    }

    /// Collects pending events without waiting.
    pub fn poll_now(&mut self, out: &mut Vec<Ready>) -> io::Result<()> {
        out.clear();
        // SAFETY: `events` has room for `len` entries the kernel writes.
        let n = sys::check(unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                libc::c_int::try_from(self.events.len()).unwrap_or(libc::c_int::MAX),
                0,
            )
        })?;
        for e in &self.events[..n as usize] {
            let token = Token::decode(e.u64);
            if token == Token::Timer {
                self.armed = None;
                self.drain_timer();
            }
            let bits = e.events;
            out.push(Ready {
                token,
                readable: bits & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0,
                writable: bits & libc::EPOLLOUT as u32 != 0,
                failed: bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token::Timer,
            Token::Tcp(7),
            Token::Udp(1 << 40),
            Token::Icmp(0),
            Token::HostFwd(3),
        ] {
            assert_eq!(Token::decode(t.encode()), t);
        }
    }

    #[test]
    fn timer_makes_the_set_readable() {
        let mut p = Poller::new().unwrap();
        let mut ready = Vec::new();
        p.poll_now(&mut ready).unwrap();
        assert!(ready.is_empty());
        p.arm_timer(Some(Instant::now()));
        let r = sys::poll_one(&p.epoll, libc::POLLIN, 1000).unwrap();
        assert!(r & libc::POLLIN != 0);
        p.poll_now(&mut ready).unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].token, Token::Timer);
        p.poll_now(&mut ready).unwrap();
        assert!(ready.is_empty(), "the expiry was consumed");
    }
}
