# Basalt OS: the two commands of the README, and a few helpers.
.PHONY: demo test setup node-binaries fmt clippy

# The main job: build an image for the default board (qemu-arm64) and boot it under QEMU.
demo:
	scripts/demo

# Everything CI runs: setup-host, fmt, clippy, workspace tests, node cross-build.
test:
	scripts/test-all

setup:
	scripts/setup-host

node-binaries: setup
	scripts/build-node aarch64 x86_64

fmt:
	cargo fmt --all

clippy:
	cargo clippy --workspace --all-targets -- -D warnings
