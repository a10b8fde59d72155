"""What the Python tests share: the record of failed checks, free TCP ports
on loopback, and the typed arrays roid publishes (proto/live.md).  Imported
by the tests, which /usr/bin/python3 runs from this directory."""
import socket
import subprocess
import sys

import numpy as np

failures = []
CHILDREN = []  # processes a test started: killed at its end whatever happened


def check(cond, what):
    """Prints one line per check; a test exits non-zero when any failed."""
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


_given = set()


def free_port():
    """A TCP port on loopback that nothing listens on now, and one this process
    has not been given before: the kernel may hand the same free port to
    two binds in a row, and a daemon given it for two endpoints fails (seen
    about twice in 10,000 triples)."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port
    raise RuntimeError("no fresh free port")


def typed(a):
    """A published typed array {dtype, shape, data (little-endian)} as numpy."""
    return np.frombuffer(a["data"], dtype=np.dtype(a["dtype"]).newbyteorder("<")).reshape(a["shape"])


def run(main):
    """sys.exit(main()), never leaving a process of CHILDREN behind (a check
    that raised, a timeout)."""
    try:
        sys.exit(main())
    finally:
        for p in CHILDREN:
            if p.poll() is None:
                p.kill()


def finish(proc, timeout):
    """Waits for a daemon started with stderr=PIPE, text=True: (exit code or
    None when it had to be killed after timeout seconds, its stderr)."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = None
    return rc, proc.stderr.read()
