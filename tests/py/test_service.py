"""roid as a systemd service (issue 5): the sd_notify protocol as the service
manager sees it on a datagram socket the test owns (READY=1 only once the PUB
and control endpoints are bound, STATUS= with counters, WATCHDOG=1 and its stall
policy, RELOADING=1/READY=1 on SIGHUP, STOPPING=1), a clean stop on SIGTERM
during traffic with a consistent results file, SIGHUP reloads (good and bad
files), and configuration errors at start (exit status 2, the key named).
Frames come from roid-sim's ptychography phantom."""
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import h5py
import msgpack
import zmq

from roidtest import Notify, free_port

ROID = os.environ["ROID"]
SIM = os.environ["ROID_SIM"]
NY = NX = 24
FRAMES = NY * NX


def sanitized():
    """A sanitizer build runs several times slower: stop deadlines scale."""
    try:
        out = subprocess.run(["ldd", ROID], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "libasan" in out or "libubsan" in out


SLOW = 5.0 if sanitized() else 1.0


def note(msg):
    print(f"# {msg}", file=sys.stderr)


class Daemon:
    """roid with a configuration file, its endpoints on free ports, stderr
    collected by a thread, NOTIFY_SOCKET (and the watchdog) in its
    environment."""

    def __init__(self, d, conf, notify, watchdog_usec=None, env=None, args=()):
        self.dir, self.notify = d, notify
        self.conf = os.path.join(d, "roid.conf")
        self.out = os.path.join(d, "out")
        os.makedirs(self.out, exist_ok=True)
        self.write_conf(conf)
        self.det, self.pub, self.ctl = free_port(), free_port(), free_port()
        cmd = [ROID, "--config", self.conf, "--detector", f"tcp://127.0.0.1:{self.det}",
               "--publish", f"tcp://127.0.0.1:{self.pub}", "--control", f"tcp://127.0.0.1:{self.ctl}",
               "--output-dir", self.out, *args]
        e = dict(os.environ, NOTIFY_SOCKET=notify.path)
        for k in ("WATCHDOG_USEC", "WATCHDOG_PID", "ROID_FAULT"):
            e.pop(k, None)
        if watchdog_usec:
            # WATCHDOG_PID must be the daemon's pid: the shell exports its own and execs roid.
            cmd = ["sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh", *cmd]
            e["WATCHDOG_USEC"] = str(watchdog_usec)
        e.update(env or {})
        self.lines, self.lock = [], threading.Lock()
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=e, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self.lock:
                self.lines.append((time.monotonic(), line.rstrip("\n")))

    def write_conf(self, text):
        tmp = self.conf + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.conf)

    def stderr(self, since=0.0):
        with self.lock:
            return [line for t, line in self.lines if t >= since]

    def wait_stderr(self, pattern, since, timeout):
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern, re.I)
        while time.monotonic() < deadline:
            for line in self.stderr(since):
                if rx.search(line):
                    return line
            if self.proc.poll() is not None:
                self.reader.join(5)
            time.sleep(0.05)
        return None

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        self.proc.stderr.close()
        return self.proc.returncode


def sim(port, series_id, rate=500, frames=FRAMES, extra=()):
    """roid-sim streaming one phantom scan series into the daemon (in the background)."""
    return subprocess.Popen([SIM, "--endpoint", f"tcp://127.0.0.1:{port}", "--source", "phantom", "--shape", "64x64",
                             "--scan", f"{NY}x{NX}", "--frames", str(frames), "--rate", str(rate), "--series-id",
                             str(series_id), "--wait-connect", "120", "--quiet", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(p, timeout=120):
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return p.returncode, err


def kill(p):
    if p.poll() is None:
        p.kill()
    p.communicate()


def frames_analysed(status):
    m = re.search(r"(\d+) frames analysed", status)
    return int(m.group(1)) if m else None


class Zmq:
    """A SUB on the daemon's publish endpoint and REQ requests to its control endpoint."""

    def __init__(self, daemon, topics=(b"series",)):
        self.ctx = zmq.Context()
        self.daemon = daemon
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        for t in topics:
            self.sub.setsockopt(zmq.SUBSCRIBE, t)
        self.sub.connect(f"tcp://127.0.0.1:{daemon.pub}")

    def close(self):
        self.sub.close()
        self.ctx.term()

    def request(self, req, timeout=30):
        s = self.ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{self.daemon.ctl}")
        try:
            s.send(msgpack.packb(req))
            if not s.poll(int(timeout * 1000)):
                return None
            return msgpack.unpackb(s.recv(), raw=False)
        finally:
            s.close()

    def recv(self, topic, pred, timeout):
        """The first message on `topic` whose body satisfies pred, or None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sub.poll(int(left * 1000) + 1):
                return None
            parts = self.sub.recv_multipart()
            if parts[0] == topic:
                body = msgpack.unpackb(parts[1], raw=False)
                if pred(body):
                    return body
        return None

    def series_end(self, series_id, timeout=180):
        return self.recv(b"series", lambda b: b.get("event") == "end" and b.get("series_id") == series_id, timeout)


def read_results(path, timeout=60):
    """(rows of /entry/features/sum, of /entry/scan/image_id, segment_sum
    shape) once the writer has closed the file (opening fails until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with h5py.File(path, "r") as f:
                seg = f["/entry/features/segment_sum"].shape if "/entry/features/segment_sum" in f else None
                return f["/entry/features/sum"].shape[0], f["/entry/scan/image_id"].shape[0], seg
        except (OSError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


BASE_CONF = """[output]
status_interval = 0.1
map_interval = 0.2

[analysis]
segments = 8
"""


class Service(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="roid-svc-")
        self.notify = Notify(self.tmp.name)
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if isinstance(p, Daemon):
                p.stop(signal.SIGKILL)
            else:
                kill(p)
        self.notify.close()
        self.tmp.cleanup()

    def start(self, conf=BASE_CONF, **kw):
        d = Daemon(self.tmp.name, conf, self.notify, **kw)
        self.procs.append(d)
        return d

    def sim(self, d, series_id, **kw):
        p = sim(d.det, series_id, **kw)
        self.procs.append(p)
        return p

    def ready(self, d, timeout=120):
        m = self.notify.wait(lambda f: f.get("READY") == "1", timeout)
        self.assertIsNotNone(m, "no READY=1:\n" + "\n".join(d.stderr()))
        return m

    def test_ready_status_watchdog(self):
        """READY=1 after the endpoints are bound; STATUS= counters while a
        series runs; WATCHDOG=1 every WATCHDOG_USEC/2; STOPPING=1 on SIGTERM."""
        d = self.start(watchdog_usec=500000)
        m = self.ready(d)
        # Bound before READY=1: a plain TCP connect succeeds at once (no retry).
        for port in (d.pub, d.ctl):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        self.assertIn("STATUS", m, "READY=1 comes with a status line")
        z = Zmq(d, topics=(b"series", b"status"))
        try:
            rep = z.request({"cmd": "status"})
            self.assertIsNotNone(rep, "no reply to status on the control socket")
            self.assertTrue(rep["ok"], rep)
            self.assertEqual(rep["cmd"], "status")
            self.assertEqual(rep["state"], "idle")
            self.assertIsNotNone(z.recv(b"status", lambda b: True, 30), "no status on the publish socket")

            pings = [f for f in self.notify.drain(2.0) if f.get("WATCHDOG") == "1"]
            note(f"idle: {len(pings)} WATCHDOG=1 in 2 s (WATCHDOG_USEC=500000)")
            self.assertGreaterEqual(len(pings), 3)

            t1 = time.monotonic()
            p = self.sim(d, 1)
            end = z.series_end(1)
            self.assertIsNotNone(end, "no series end on the publish socket")
            self.assertEqual(finish(p)[0], 0)
            self.notify.drain(0.5)  # the status after the end
            statuses = [f["STATUS"] for _, f in self.notify.since(t1, "STATUS")]
            counts = [frames_analysed(s) for s in statuses if s.startswith("acquiring")]
            note(f"{len(statuses)} STATUS= lines during the series, e.g. '{statuses[len(statuses) // 2]}'")
            self.assertGreaterEqual(len(counts), 2, statuses)
            self.assertTrue(all(c is not None for c in counts), statuses)
            self.assertEqual(counts, sorted(counts), "counters only grow")
            self.assertGreater(counts[-1], counts[0], statuses)
            self.assertEqual(frames_analysed(statuses[-1]), FRAMES, statuses[-1])
            busy = self.notify.since(t1, "WATCHDOG")
            self.assertGreaterEqual(len(busy), 2, "pings go on while a series runs")
        finally:
            z.close()
        t2 = time.monotonic()
        self.assertEqual(d.stop(), 0, "\n".join(d.stderr()))
        self.notify.drain(0.2)
        self.assertTrue(self.notify.since(t2, "STOPPING"), "STOPPING=1 on SIGTERM")

    def test_watchdog_stops_when_stalled(self):
        """Workers stall (ROID_FAULT=stall-workers): with frames queued and no
        progress for [service] watchdog_stall = 1 s, WATCHDOG=1 stops."""
        self.watchdog_stall("wait", rate=0, frames=FRAMES)

    def test_watchdog_stops_when_stalled_dropping(self):
        """The same with queue_full = drop while the detector keeps sending:
        the loop goes on receiving and dropping, which is no progress (the
        messages received used to count as progress, and pings went on)."""
        self.watchdog_stall("drop", rate=400, frames=100000)

    def test_watchdog_stops_when_the_end_stalls(self):
        """The analysis thread stalls in the series end (ROID_FAULT=stall-end,
        as behind a results disk that hangs) after every frame was handled:
        the queues are empty, but the end it took is pending, so WATCHDOG=1
        stops (it went on: only queued items counted as pending)."""
        self.watchdog_stall("wait", rate=500, frames=FRAMES, fault="stall-end")

    def watchdog_stall(self, policy, rate, frames, fault="stall-workers"):
        conf = BASE_CONF + f"\n[service]\nwatchdog_stall = 1\n\n[pipeline]\nqueue_depth = 4\nqueue_full = {policy}\n"
        d = self.start(conf, watchdog_usec=500000, env={"ROID_FAULT": fault})
        self.ready(d)
        idle = [f for f in self.notify.drain(1.5) if f.get("WATCHDOG") == "1"]
        self.assertGreaterEqual(len(idle), 2, "pings while idle, before the stall")
        t0 = time.monotonic()
        p = self.sim(d, 1, rate=rate, frames=frames)
        last, deadline, silent = time.monotonic(), time.monotonic() + 90, False
        while time.monotonic() < deadline and d.proc.poll() is None:
            m = self.notify.poll(0.1)
            if m is not None and m.get("WATCHDOG") == "1":
                last = time.monotonic()
            if time.monotonic() - last > 2.5:
                silent = True
                break
        n = len(self.notify.since(t0, "WATCHDOG"))
        self.assertTrue(silent, f"{policy}: WATCHDOG=1 never stopped for > 2 s ({n} pings since the frames started)")
        if policy == "drop":
            self.assertIsNone(p.poll(), "the detector was still sending when the pings stopped")
        self.assertIsNone(d.proc.poll(), "the daemon keeps running; systemd is the one to restart it")
        self.assertIsNotNone(d.wait_stderr(r"watchdog", t0, 10), "the stall is logged")

    def test_sigterm_during_traffic(self):
        """SIGTERM while frames arrive: exit 0 within 1 s; the results file
        holds as many feature rows as scan rows."""
        d = self.start()
        self.ready(d)
        p = self.sim(d, 1, rate=150)  # about 4 s of traffic
        m = self.notify.wait(lambda f: (frames_analysed(f.get("STATUS", "")) or 0) >= 50, 120)
        self.assertIsNotNone(m, "no STATUS= with frames analysed")
        self.assertIsNone(p.poll(), "the simulator is still sending")
        t = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        try:
            rc = d.proc.wait(60)
        except subprocess.TimeoutExpired:
            rc = None
        dt = time.monotonic() - t
        note(f"SIGTERM to exit: {dt:.3f} s (limit {1.0 * SLOW:.1f} s)")
        self.assertEqual(rc, 0, "\n".join(d.stderr()))
        self.assertLessEqual(dt, 1.0 * SLOW)
        self.notify.drain(0.1)
        self.assertTrue(self.notify.since(t, "STOPPING"), "STOPPING=1")
        files = glob.glob(os.path.join(d.out, "roid_*.h5"))
        self.assertEqual(len(files), 1, files)
        rows, ids, _ = read_results(files[0], timeout=0)
        note(f"results file after SIGTERM: {rows} feature rows, {ids} scan rows of {FRAMES}")
        self.assertGreater(rows, 0)
        self.assertEqual(rows, ids)
        self.assertLessEqual(rows, FRAMES)

    def test_signals_while_stopping(self):
        """SIGHUP and a second SIGTERM while roid finishes its queued work
        after SIGTERM are logged and ignored: it exits 0 with the results
        file complete.  (stop() used to close the signal handles at once,
        which put back the default actions: a reload in that time killed
        roid with the file half written.)"""
        conf = BASE_CONF + "\n[pipeline]\nqueue_depth = 256\nworkers = 1\n"
        # 5 ms more a frame: 256 queued take 1.3 s, the signals below have that long
        d = self.start(conf, env={"ROID_FAULT": "slow-workers"})
        self.ready(d)
        self.sim(d, 1, rate=0)
        m = self.notify.wait(lambda f: (frames_analysed(f.get("STATUS", "")) or 0) >= 10, 120)
        self.assertIsNotNone(m, "no STATUS= with frames analysed")
        t = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)
        d.proc.send_signal(signal.SIGTERM)
        try:
            rc = d.proc.wait(60 * SLOW)
        except subprocess.TimeoutExpired:
            rc = None
        note(f"SIGTERM, SIGHUP and SIGTERM 50 ms apart: exit {rc} after {time.monotonic() - t:.2f} s")
        self.assertEqual(rc, 0, "\n".join(d.stderr()))
        self.assertIsNotNone(d.wait_stderr(r"SIGHUP received while stopping: ignored", t, 5), "\n".join(d.stderr()))
        files = glob.glob(os.path.join(d.out, "roid_*.h5"))
        self.assertEqual(len(files), 1, files)
        rows, ids, _ = read_results(files[0], timeout=0)
        with h5py.File(files[0], "r") as f:
            complete = f["/entry/counters"].attrs.get("complete")
            final = f["/entry/roi/final"][()]
        note(f"results file: {rows} rows, complete {complete}, final {final}")
        self.assertEqual((rows, complete, final), (ids, 1, 1))
        self.assertGreater(rows, 10)

    def test_connection_lost_is_counted(self):
        """A message part over max_message_bytes makes libzmq close the
        detector connection, losing what was on its way over it: roid says
        so, counts it (connections_lost) and takes the next series whole."""
        d = self.start(BASE_CONF + "\n[limits]\nmax_message_bytes = 64K\n")
        self.ready(d)
        z = Zmq(d)
        try:
            t = time.monotonic()
            big = subprocess.Popen([SIM, "--endpoint", f"tcp://127.0.0.1:{d.det}", "--shape", "256x256",
                                    "--compression", "none", "--frames", "3", "--series-id", "1", "--rate", "0",
                                    "--wait-connect", "120", "--quiet"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.procs.append(big)
            line = d.wait_stderr(r"connection closed.*max_message_bytes 65536.*\[connections_lost\]", t, 60)
            self.assertIsNotNone(line, "\n".join(d.stderr()))
            big.kill()
            big.wait()
            st = z.request({"cmd": "status"})
            self.assertGreaterEqual(st["counters"].get("connections_lost", 0), 1, st["counters"])
            p = self.sim(d, 2, frames=NY * NX)
            end = z.series_end(2)
            rc, err = finish(p)
            self.assertEqual(rc, 0, err)
            self.assertIsNotNone(end)
            self.assertEqual((end["frames_analysed"], end["frames_dropped"]), (NY * NX, 0))
        finally:
            z.close()

    def test_runs_without_the_connection_watch(self):
        """When the detector connections cannot be watched (no file
        descriptor left for the monitor: ROID_FAULT=no-watch stands for it),
        roid says so and takes the series as usual (it crashed at start)."""
        d = self.start(env={"ROID_FAULT": "no-watch"})
        self.ready(d)
        z = Zmq(d)
        try:
            p = self.sim(d, 1, frames=NY * NX)
            end = z.series_end(1)
        finally:
            z.close()
        self.assertEqual(finish(p)[0], 0)
        self.assertIsNotNone(end, "\n".join(d.stderr()))
        self.assertEqual(end["frames_analysed"], NY * NX)
        self.assertTrue(any("detector connections not watched" in line for line in d.stderr()))
        self.assertEqual(d.stop(), 0)

    def test_left_out_user_data_is_not_placed(self):
        """A fly-scan image whose user data is left out (nested beyond
        max_depth) has an unknown position: it is kept, off the grid, and
        counted, not placed by its image_id as if it were a step scan."""
        d = self.start(BASE_CONF + "\n[limits]\nmax_depth = 4\n")
        self.ready(d)
        n = 16
        z = Zmq(d, topics=(b"series", b"status"))
        self.assertIsNotNone(z.recv(b"status", lambda b: True, 30), "the subscriber has joined")
        p = subprocess.Popen([SIM, "--endpoint", f"tcp://127.0.0.1:{d.det}", "--shape", "32x32", "--scan", "4x4",
                              "--fly", "repeat=1,order=shuffle,seed=3", "--image-user-data",
                              '{"position": [0, 0], "deep": {"a": {"b": {"c": {"d": 1}}}}}', "--series-id", "1",
                              "--wait-connect", "120", "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        try:
            end = z.series_end(1)
        finally:
            z.close()
        self.assertEqual(finish(p)[0], 0)
        self.assertIsNotNone(end, "\n".join(d.stderr()))
        self.assertEqual(d.stop(), 0)
        (path,) = glob.glob(os.path.join(d.out, "roid_*.h5"))
        with h5py.File(path, "r") as f:
            index = f["/entry/scan/index"][()]
            ignored = int(f["/entry/counters"].attrs["user_data_ignored"])
            unplaced = int(f["/entry/counters"].attrs["frames_unplaced"])
        note(f"{len(index)} rows, index rows {sorted(set(index[:, 0].tolist()))}, user_data_ignored {ignored}, "
             f"frames_unplaced {unplaced}")
        self.assertEqual(len(index), n)
        self.assertTrue((index == 0xFFFFFFFF).all(), "no image placed by its image_id")
        self.assertEqual((ignored, unplaced), (n, n))

    def test_configuration_is_the_series_own(self):
        """A reload after a series' start reached roid, before the analysis
        thread got to it (frames queued): the results file's `configuration`
        attribute is the one the series was analysed with, like its
        parameters (it used to be the reloaded one)."""
        conf = BASE_CONF + "\n[pipeline]\nqueue_depth = 64\n"
        d = self.start(conf, env={"ROID_FAULT": "stall-workers"})  # held until SIGTERM
        self.ready(d)
        t = time.monotonic()
        p = subprocess.Popen([SIM, "--endpoint", f"tcp://127.0.0.1:{d.det}", "--source", "phantom", "--shape", "64x64",
                              "--scan", "4x4", "--series", "2", "--rate", "0", "--wait-connect", "120", "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        self.assertEqual(finish(p)[0], 0)
        for n in (1, 2):
            self.assertIsNotNone(d.wait_stderr(rf"series {n} \S+ started", t, 30), "\n".join(d.stderr()))
        d.write_conf(conf.replace("segments = 8", "segments = 2"))
        t = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        self.assertIsNotNone(d.wait_stderr(r"reload", t, 30), "\n".join(d.stderr()))
        self.assertEqual(d.stop(), 0)
        files = sorted(glob.glob(os.path.join(d.out, "roid_*.h5")))
        self.assertEqual(len(files), 2, files)
        for path in files:
            with h5py.File(path, "r") as f:
                seg = int(f["/entry"].attrs["segments"])
                text = f["/entry"].attrs["configuration"]
                text = text.decode() if isinstance(text, bytes) else text
                said = [line.split("=")[1].strip() for line in text.splitlines() if line.startswith("segments")]
                shape = f["/entry/features/segment_sum"].shape
            note(f"{os.path.basename(path)}: segments {seg}, segment_sum {shape}, configuration says {said}")
            self.assertEqual((seg, shape[1], said), (8, 8, ["8"]))

    def test_end_counts_queue_drops(self):
        """queue_full = drop with slow workers: the series end message's
        frames_dropped includes the frames the work queue dropped (it used to
        count only those lost after decoding), so analysed + dropped = sent."""
        conf = BASE_CONF + "\n[pipeline]\nqueue_full = drop\nqueue_depth = 4\nworkers = 1\n"
        d = self.start(conf, env={"ROID_FAULT": "slow-workers"})
        self.ready(d)
        z = Zmq(d, topics=(b"series", b"status"))
        try:
            time.sleep(0.3)  # the SUB connected
            p = self.sim(d, 1, rate=0)
            end = z.series_end(1)
            self.assertIsNotNone(end, "\n".join(d.stderr()))
            self.assertEqual(finish(p)[0], 0)
            st = z.request({"cmd": "status"})
        finally:
            z.close()
        dropped = st["counters"]["frames_dropped"]
        note(f"end: {end['frames_analysed']} analysed, {end['frames_dropped']} dropped of {FRAMES}; "
             f"counter frames_dropped {dropped}")
        self.assertGreater(dropped, 0, "the queue dropped frames")
        self.assertEqual(end["frames_analysed"] + end["frames_dropped"], FRAMES)
        self.assertEqual(end["frames_dropped"], dropped, "one series: all the drops are its own")

    def test_rates_after_reset(self):
        """A control reset zeroes the counters mid-stream: the next status
        rates count from it (they wrapped to about 9e19 before)."""
        d = self.start()
        self.ready(d)
        z = Zmq(d, topics=(b"status",))
        try:
            time.sleep(0.3)
            self.sim(d, 1, rate=300)
            # well into the stream: the counters then fall at the reset below their last status
            first = z.recv(b"status", lambda b: (b.get("counters") or {}).get("frames_analysed", 0) >= 200, 60)
            self.assertIsNotNone(first, "no status with 200 frames analysed")
            self.assertTrue(z.request({"cmd": "reset"})["ok"])
            t, rates = time.monotonic(), []
            while time.monotonic() - t < 1.0:
                m = z.recv(b"status", lambda b: True, 1.0)
                if m is not None:
                    rates.append((m.get("frames_per_s") or 0, m.get("bytes_per_s") or 0))
            st = z.request({"cmd": "status"})
        finally:
            z.close()
        note(f"frames/s, bytes/s in the second after the reset: {rates[:4]} ...; control status {st['frames_per_s']}")
        self.assertGreaterEqual(len(rates), 3)
        self.assertTrue(all(0 <= f < 3000 and 0 <= b < 1e9 for f, b in rates), rates)
        self.assertLess(st["frames_per_s"], 3000)

    def test_idle_timeout_waits_for_queued_work(self):
        """idle_timeout counts time without messages and without queued work:
        with the workers stuck the queues fill, roid stops reading the
        detector, which goes on sending; roid used to exit as if idle."""
        # idle_timeout 3 s: the detector's first message must come before it, even on a loaded machine
        conf = BASE_CONF + "\n[pipeline]\nqueue_depth = 4\n\n[service]\nidle_timeout = 3\n"
        d = self.start(conf, env={"ROID_FAULT": "stall-workers"})
        self.ready(d)
        self.sim(d, 1, rate=300)
        time.sleep(6.0)
        self.assertIsNone(d.proc.poll(), "exited with frames queued:\n" + "\n".join(d.stderr()))
        self.assertEqual(d.stop(), 0)

    def test_end_counts_from_a_reset(self):
        """A control reset mid-series zeroes the counters and the series'
        state: the end message's drops count from it too, as the counters do
        (they mixed both sides of the reset)."""
        conf = BASE_CONF + "\n[pipeline]\nqueue_full = drop\nqueue_depth = 4\nworkers = 1\n"
        d = self.start(conf, env={"ROID_FAULT": "slow-workers"})
        self.ready(d)
        z = Zmq(d, topics=(b"series", b"status"))
        try:
            time.sleep(0.3)
            p = self.sim(d, 1, rate=600)  # three times what the slowed worker takes
            m = z.recv(b"status", lambda b: (b.get("counters") or {}).get("frames_dropped", 0) >= 20, 60)
            self.assertIsNotNone(m, "no drops")
            self.assertTrue(z.request({"cmd": "reset"})["ok"])
            end = z.series_end(1)
            self.assertIsNotNone(end, "\n".join(d.stderr()))
            self.assertEqual(finish(p)[0], 0)
            dropped = z.request({"cmd": "status"})["counters"]["frames_dropped"]
        finally:
            z.close()
        note(f"after the reset: end says {end['frames_dropped']} dropped, the counter {dropped}")
        self.assertGreater(dropped, 0)
        self.assertEqual(end["frames_dropped"], dropped)

    def test_results_after_a_reset(self):
        """A control reset mid-series: the results file keeps every frame, and
        its final map's image_ids and per-frame cluster labels are of the
        frames since the reset (/entry/roi/first_row on): they listed frames
        measured before it, at points only those frames had reached, and
        broke len(image_ids) == counts[mask & ~outliers].sum()."""
        d = self.start()
        self.ready(d)
        z = Zmq(d, topics=(b"series", b"status"))
        try:
            time.sleep(0.3)
            p = self.sim(d, 1, rate=300)
            m = z.recv(b"status", lambda b: (b.get("counters") or {}).get("frames_analysed", 0) >= 200, 60)
            self.assertIsNotNone(m, "the series did not start")
            self.assertTrue(z.request({"cmd": "reset"})["ok"])
            end = z.series_end(1)
            self.assertIsNotNone(end, "\n".join(d.stderr()))
            self.assertEqual(finish(p)[0], 0)
        finally:
            z.close()
        read_results(end["results_file"])  # once the writer has closed it
        with h5py.File(end["results_file"], "r") as f:
            roi, scan = f["/entry/roi"], f["/entry/scan"]
            first, n = int(roi["first_row"][()]), scan["image_id"].shape[0]
            ids, rows = roi["image_ids"][()], scan["image_id"][()]
            counts, mask, outl = roi["counts"][()], roi["mask"][()], roi["outliers"][()]
            labels = f["/entry/clusters/labels"][()]
            final, version = roi["final"][()], f["/entry"].attrs["results_version"]
        note(f"reset after {first} of {n} rows; {len(ids)} image_ids; {end['frames_analysed']} analysed since")
        self.assertEqual((final, version, n), (1, 5, FRAMES))
        self.assertTrue(200 <= first < n and n - first == end["frames_analysed"], (first, n, end["frames_analysed"]))
        self.assertGreater(len(ids), 0, "the phantom has a region of interest")
        self.assertEqual(len(ids), int(counts[(mask == 1) & (outl == 0)].sum()))
        row_of = {int(i): r for r, i in enumerate(rows)}
        self.assertTrue(all(row_of[int(i)] >= first for i in ids), "image_ids from before the reset")
        self.assertTrue((labels[:first] == 255).all() and (labels[first:] != 255).any())

    def test_keys_checked_together_name_the_file(self):
        """An error between two keys (df_inner not below df_outer) names the
        file, as single-key errors name its line."""
        path = os.path.join(self.tmp.name, "two-keys.conf")
        with open(path, "w") as f:
            f.write("[analysis]\ndf_inner = 5\ndf_outer = 5\n")
        for extra, want in (((), path + ": "), (("--segments", "4"), path + " with the command line: ")):
            p = subprocess.run([ROID, "--config", path, *extra],
                               capture_output=True, text=True, timeout=60)
            note(p.stderr.strip())
            self.assertEqual(p.returncode, 2)
            self.assertIn("configuration: " + want + "[analysis] df_inner: 5 is not below df_outer 5", p.stderr)

    def series_segments(self, d, z, series_id):
        before = set(glob.glob(os.path.join(d.out, "roid_*.h5")))
        p = self.sim(d, series_id)
        end = z.series_end(series_id)
        self.assertIsNotNone(end, f"series {series_id} did not end:\n" + "\n".join(d.stderr()))
        self.assertEqual(finish(p)[0], 0)
        new = set(glob.glob(os.path.join(d.out, "roid_*.h5"))) - before
        self.assertEqual(len(new), 1, new)
        rows, ids, seg = read_results(new.pop())
        self.assertEqual((rows, ids), (FRAMES, FRAMES))
        self.assertIsNotNone(seg, "no segment_sum")
        self.assertEqual(seg[0], FRAMES)
        return seg[1]

    def reload(self, d):
        t = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        r = self.notify.wait(lambda f: f.get("RELOADING") == "1", 60)
        self.assertIsNotNone(r, "RELOADING=1 after SIGHUP")
        self.assertTrue(r.get("MONOTONIC_USEC", "").isdigit(), r)
        self.assertIsNotNone(self.notify.wait(lambda f: f.get("READY") == "1", 60), "READY=1 after RELOADING=1")
        return t

    def test_sighup_reload(self):
        """SIGHUP re-reads the file (RELOADING=1, READY=1, a log line) and the
        next series uses it; a bad file is refused, logged with the key, and the
        running configuration stays."""
        d = self.start()
        self.ready(d)
        z = Zmq(d)
        try:
            self.assertEqual(self.series_segments(d, z, 1), 8)

            d.write_conf(BASE_CONF.replace("segments = 8", "segments = 4"))
            t = self.reload(d)
            self.assertIsNotNone(d.wait_stderr(r"reload", t, 30), "a log line about the reload")
            self.assertEqual(self.series_segments(d, z, 2), 4, "the reloaded segments apply")

            d.write_conf(BASE_CONF.replace("segments = 8", "segments = 6\nbogus_key = 1"))
            t = self.reload(d)
            line = d.wait_stderr(r"\[analysis\] bogus_key", t, 30)
            self.assertIsNotNone(line, "the bad key is named:\n" + "\n".join(d.stderr(t)))
            self.assertIsNone(d.proc.poll(), "a bad file does not stop the daemon")
            self.assertEqual(self.series_segments(d, z, 3), 4, "the old configuration stays")
        finally:
            z.close()
        self.assertEqual(self.notify.since(0, "WATCHDOG"), [], "no WATCHDOG_USEC: no pings")
        self.assertEqual(d.stop(), 0)

    def test_bad_config_at_start(self):
        """Unknown key, out-of-range value, syntax error: exit status 2 before
        READY=1, stderr naming the key (or the line)."""
        cases = [("[analysis]\nsegments = 4\nbogus_key = 1\n", r"\[analysis\] bogus_key"),
                 ("[analysis]\nsegments = 99\n", r"\[analysis\] segments"),
                 ("[service]\nwatchdog_stall = 0\n", r"\[service\] watchdog_stall"),
                 ("[analysis]\nsegments = 4\nthis is not a key value line\n", r"roid\.conf:3\b")]
        for conf, want in cases:
            with self.subTest(conf=conf):
                d = self.start(conf)
                try:
                    rc = d.proc.wait(60)
                except subprocess.TimeoutExpired:
                    rc = None
                d.reader.join(10)
                err = "\n".join(d.stderr())
                self.assertEqual(rc, 2, err)
                self.assertRegex(err, want)
                self.assertEqual(self.notify.drain(0.1), [], "nothing sent to the service manager")


if __name__ == "__main__":
    unittest.main(verbosity=2)
