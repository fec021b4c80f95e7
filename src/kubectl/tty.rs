//! The local terminal of `exec -t`: raw mode while the remote terminal runs (keys, Ctrl-C
//! included, go to the remote shell), put back by a guard's drop on every way out, and the
//! window size the remote terminal is told.
//!
//! Through `libc`: the `nix` in the lock file is built without its `term` feature, and
//! turning that on is a Cargo.toml change (then `nix::sys::termios` replaces the unsafe
//! blocks below one for one).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

/// Standard input's descriptor.
pub const STDIN: RawFd = 0;
/// Standard output's descriptor.
pub const STDOUT: RawFd = 1;

/// A terminal in raw mode; its settings before are restored when this is dropped.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts the terminal `fd` in raw mode (no echo, no line editing, no signals from keys).
    pub fn enter(fd: RawFd) -> io::Result<RawMode> {
        let mut saved = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: `saved` is storage for one termios, which tcgetattr fills on success.
        if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: tcgetattr returned 0, so it initialized `saved`.
        let saved = unsafe { saved.assume_init() };
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios; cfmakeraw only changes its flags.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: a valid termios for a descriptor tcgetattr accepted.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: the settings read from this descriptor when the guard was made.
        if unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) } != 0 {
            eprintln!(
                "warning: could not restore the terminal ({}); run `stty sane` to fix it",
                io::Error::last_os_error()
            );
        }
    }
}

/// The terminal's size as (columns, rows), from stdout or else stdin, as kubectl reads it.
pub fn size() -> Option<(u16, u16)> {
    [STDOUT, STDIN].into_iter().find_map(|fd| {
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into the valid `ws`.
        let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
        (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
    })
}
