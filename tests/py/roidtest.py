"""What the Python tests share: the record of failed checks, free TCP ports
on loopback, the service manager's end of NOTIFY_SOCKET, and the typed arrays
roid publishes (proto/live.md).  Imported by the tests, which
/usr/bin/python3 runs from this directory."""
import os
import random
import socket
import subprocess
import sys
import threading
import time

import numpy as np

failures = []
CHILDREN = []  # processes a test started: killed at its end whatever happened


def check(cond, what):
    """Prints one line per check; a test exits non-zero when any failed."""
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


_given = set()
# Below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by
# default), so no connect() or bind(0) in any process can take a port between our
# probe and the daemon's bind; each test process draws its own random ports.
_PORTS = (20000, 32767)
_rng = random.Random(os.getpid() ^ time.monotonic_ns())


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(v) for v in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port():
    """A TCP port on loopback that nothing listens on now, outside the
    kernel's ephemeral range where it can, and one this process has not been
    given before (a daemon given the same port for two endpoints fails)."""
    elo, ehi = _ephemeral_range()
    outside = elo > _PORTS[1] or ehi < _PORTS[0]
    for _ in range(2000):
        port = _rng.randint(*_PORTS) if outside else 0
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port
    raise RuntimeError("no fresh free port")


class Notify:
    """The service manager's end of NOTIFY_SOCKET.  A thread reads every
    datagram at once, as systemd does: the kernel queues only
    net.unix.max_dgram_qlen (often 10) unread datagrams, after which
    sd_notify() in the daemon blocks."""

    def __init__(self, d):
        self.path = os.path.join(d, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.log = []  # (monotonic time, {key: value}, raw text)
        self.next = 0  # the first datagram poll() has not returned yet
        self.cond = threading.Condition()
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.running:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            text = data.decode()
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            with self.cond:
                self.log.append((time.monotonic(), fields, text))
                self.cond.notify_all()

    def close(self):
        self.running = False
        self.thread.join(5)
        self.sock.close()

    def poll(self, timeout):
        """The next datagram not returned before, or None after timeout seconds."""
        with self.cond:
            if self.cond.wait_for(lambda: self.next < len(self.log), max(timeout, 0)):
                self.next += 1
                return self.log[self.next - 1][1]
            return None

    def wait(self, pred, timeout):
        """The first new datagram for which pred(fields) holds, or None."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            m = self.poll(left)
            if m is not None and pred(m):
                return m

    def drain(self, seconds):
        """Everything that arrives within the next `seconds` (and anything unread)."""
        got, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            m = self.poll(left)
            if m is not None:
                got.append(m)
        return got

    def since(self, t, key):
        with self.cond:
            return [(ts, f) for ts, f, _ in self.log if ts >= t and key in f]


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
