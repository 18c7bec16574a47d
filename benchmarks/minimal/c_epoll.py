"""Minimal C epoll echo (``c_epoll.c``): compiled on first use with ``cc -O2``, then run.

The binary is kept beside the source's hash under the user's cache directory, so a
changed source is compiled again; no compiler gives a clear error, exit status 1.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import parse

SOURCE = Path(__file__).with_name("c_epoll.c")

args = parse()
cc = shutil.which("cc")
if cc is None:
    sys.exit("minimal c-epoll: no C compiler (cc) to build c_epoll.c")
digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tcp-zoo"
binary = cache / f"minimal-c-epoll-{digest}"
if not binary.exists():
    cache.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(f".{os.getpid()}")
    subprocess.run([cc, "-O2", "-o", str(partial), str(SOURCE)], check=True)
    partial.replace(binary)  # atomic: a concurrent start never runs half a file
os.execv(binary, [str(binary), str(args.port)])
