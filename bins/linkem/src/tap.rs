//! Creating a TAP device: one `TUNSETIFF` ioctl on `/dev/net/tun`.
//!
//! libc rather than a tun crate: the whole need is this one ioctl, blocking reads and writes
//! through `std::fs::File` and no configuration (addresses and namespaces are `ip`'s job in the
//! script). The tun crates in the registry bring an async runtime or `nix` and address setup we
//! would not use.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Creates the TAP device `name` (Ethernet frames, no packet-info header) and returns its file.
/// The device lives while the file is open; moving it to another network namespace keeps the
/// file valid.
pub fn create(name: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain old data (byte arrays, integers and pointers in a union); the
    // all-zero pattern is a valid value of it.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1 to 15 bytes"),
        ));
    }
    for (slot, &b) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = b as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: the descriptor is open for the duration of the call, and TUNSETIFF reads and
    // writes exactly one `struct ifreq`, which `request` is.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}
