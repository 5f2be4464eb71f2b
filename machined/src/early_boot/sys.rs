//! The one raw `ioctl(2)` helper the loop, device-mapper and FIBMAP code share.
//!
//! rustix's typed ioctl patterns cover fixed-size arguments; device-mapper passes a
//! variable-length buffer, so a pointer-taking [`Ioctl`] is implemented here once. Every
//! caller passes a pointer to memory it owns for the duration of the call and sized for
//! what the command reads and writes.

use rustix::fd::AsFd;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};
use std::ffi::c_void;
use std::io;

struct Raw {
    opcode: Opcode,
    arg: *mut c_void,
}

// SAFETY: the opcode and pointer come from the caller of `ioctl_ptr`, who guarantees that
// `arg` is valid for every read and write the command does; the output is the return value.
unsafe impl Ioctl for Raw {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.arg
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// `ioctl(fd, opcode, arg)`, returning the call's non-negative result.
///
/// # Safety
///
/// `arg` must be null for a command that takes no argument, or point to memory that stays
/// valid, and is large enough, for everything the command reads and writes.
pub(crate) unsafe fn ioctl_ptr<F: AsFd>(
    fd: F,
    opcode: Opcode,
    arg: *mut c_void,
) -> io::Result<i32> {
    // SAFETY: forwarded from this function's contract.
    let out = unsafe { rustix::ioctl::ioctl(fd, Raw { opcode, arg }) }?;
    Ok(out)
}
