//! Integration tests of Basalt OS.
//!
//! Tests under `tests/tests/` boot images built by `basalt-image` under QEMU (TCG), start
//! several `machined` processes on loopback, and inject faults into links. This library
//! holds the shared harness: process guards that kill QEMU and servers on drop, port
//! allocation, and paths to the workspace's built binaries.
