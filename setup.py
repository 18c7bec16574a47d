"""Build the native parts of tcp-zoo: the load generator and the C epoll server.

Metadata lives in pyproject.toml; this file only declares the C extensions, so
``pip install .`` and ``pip install -e .`` compile them (no download needed).
"""

from setuptools import Extension, setup

_CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]

setup(
    ext_modules=[
        Extension(
            "zoo_loadgen",
            sources=["bench/native/loadgen.c"],
            depends=["bench/native/hist.h"],
            extra_compile_args=_CFLAGS,
            libraries=["pthread", "m"],
        ),
        Extension(
            "zoo_cepoll",
            sources=["servers/native/cepoll.c"],
            extra_compile_args=_CFLAGS,
        ),
    ],
)
