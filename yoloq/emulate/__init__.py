"""Scoring on another instruction set: an Arm (aarch64) userland under qemu-user, and the emulated twin records."""
