"""Kernel conformance suite: kmod/ servers exercised inside the QEMU guest."""
