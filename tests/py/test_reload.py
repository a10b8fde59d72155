"""SIGHUP reloads apply from the next series, to every module (issue: the
ingest kept decoding the channel it was started with while the pipeline took
the new one, so a whole series was silently not analysed).

A daemon runs with a configuration file; the test is the detector (a PUSH
socket sending hand-built Stream V2 messages: two channels with different
pixels, a pixel mask and a beam centre in the start, so the pipeline builds
the geometry of the channel it expects at the start).
  1. Series 1 (channel #0, 64 x 64 uint16): half of its images, then the file
     changes [detector] channel to #1, [limits] max_frame_bytes to 4K (below
     series 1's 8 KiB frames), receive_hwm, and the restart-only
     [output] publish_hwm; SIGHUP; the other half and the end.  Series 1 must
     be unaffected: threshold_1 analysed, every frame, no frame refused.
  2. Series 2 (32 x 32): threshold_2 is analysed (the series messages name it,
     frames_analysed equals the frames sent, the per-frame sums of the results
     file are threshold_2's, computed here with numpy), and one 64 x 64 image
     is refused by the new max_frame_bytes, counted in messages_bad_size with
     a log line naming the limit.  The reload logged a warning naming
     publish_hwm, and only the restart-only key.
  3. SIGHUP between series: channel by name (threshold_1), max_frame_bytes
     back to its default, [service] exit_after_series = 3.  Series 3 (64 x 64)
     analyses threshold_1 and the daemon exits by itself after it.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import cbor2
import h5py
import msgpack
import numpy as np
import zmq

from roidtest import check, failures, free_port

ROID = os.environ["ROID"]
CHANNELS = ["threshold_1", "threshold_2"]


def typed(a, tag):
    """A MultiDimArray of a 2-D little-endian array (tag 69 uint16, 70 uint32)."""
    return cbor2.CBORTag(40, [list(a.shape), cbor2.CBORTag(tag, a.astype(a.dtype.newbyteorder("<")).tobytes())])


def frame(sid, image_id, chan, rows, cols):
    """Pixels of one image and channel: threshold_2 counts about ten times more."""
    rng = np.random.default_rng(sid * 100003 + image_id * 7 + chan)
    hi = 200 if chan == 0 else 2000
    return rng.integers(0, hi, size=(rows, cols), dtype=np.uint16)


def mask(chan, rows, cols):
    """A masked row per channel (a different one), so the mask matters."""
    m = np.zeros((rows, cols), dtype=np.uint32)
    m[3 + chan, :] = 2
    return m


def expected_sum(sid, image_id, chan, rows, cols):
    f = frame(sid, image_id, chan, rows, cols)
    return int(f[mask(chan, rows, cols) == 0].astype(np.uint64).sum())


class Detector:
    def __init__(self, ctx, port):
        self.s = ctx.socket(zmq.PUSH)
        self.s.setsockopt(zmq.LINGER, 5000)
        self.s.setsockopt(zmq.SNDTIMEO, 60000)
        self.s.bind(f"tcp://127.0.0.1:{port}")

    def send(self, msg):
        self.s.send(cbor2.dumps(cbor2.CBORTag(55799, msg)))

    def start(self, sid, rows, cols, n):
        self.send({"type": "start", "series_id": sid, "series_unique_id": f"RELOAD{sid}",
                   "image_size_x": cols, "image_size_y": rows, "image_dtype": "uint16", "number_of_images": n,
                   "channels": CHANNELS, "beam_center_x": cols / 2.0, "beam_center_y": rows / 2.0,
                   "pixel_mask": {c: typed(mask(i, rows, cols), 70) for i, c in enumerate(CHANNELS)}})

    def image(self, sid, image_id, rows, cols):
        self.send({"type": "image", "series_id": sid, "series_unique_id": f"RELOAD{sid}", "image_id": image_id,
                   "data": {c: typed(frame(sid, image_id, i, rows, cols), 69) for i, c in enumerate(CHANNELS)}})

    def end(self, sid):
        self.send({"type": "end", "series_id": sid, "series_unique_id": f"RELOAD{sid}"})


class Daemon:
    def __init__(self, tmp, conf_text):
        self.conf = os.path.join(tmp, "roid.conf")
        self.out = os.path.join(tmp, "out")
        os.makedirs(self.out)
        self.write_conf(conf_text)
        self.det, self.pub, self.ctl = free_port(), free_port(), free_port()
        self.lines, self.lock = [], threading.Lock()
        self.proc = subprocess.Popen([ROID, "--config", self.conf, "--detector", f"tcp://127.0.0.1:{self.det}",
                                      "--publish", f"tcp://127.0.0.1:{self.pub}", "--control",
                                      f"tcp://127.0.0.1:{self.ctl}", "--output-dir", self.out],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def write_conf(self, text):
        with open(self.conf + ".new", "w") as f:
            f.write(text)
        os.replace(self.conf + ".new", self.conf)

    def log(self, start=0):
        with self.lock:
            return self.lines[start:]

    def wait_log(self, pattern, start, timeout=60):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log(start):
                if rx.search(line):
                    return line
            time.sleep(0.05)
        return None

    def reload(self, text):
        self.write_conf(text)
        mark = len(self.log())
        self.proc.send_signal(signal.SIGHUP)
        ok = self.wait_log(r"SIGHUP: configuration reloaded", mark)
        check(ok is not None, "SIGHUP: the reload is logged")
        return self.log(mark)


class Clients:
    def __init__(self, ctx, d):
        self.ctx, self.d = ctx, d
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        for t in (b"series", b"status"):
            self.sub.setsockopt(zmq.SUBSCRIBE, t)
        self.sub.connect(f"tcp://127.0.0.1:{d.pub}")
        self.series = []

    def rpc(self, req):
        s = self.ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{self.d.ctl}")
        try:
            s.send(msgpack.packb(req))
            return msgpack.unpackb(s.recv(), raw=False) if s.poll(30000) else None
        finally:
            s.close()

    def status(self):
        return self.rpc({"cmd": "status"})

    def counter(self, name):
        st = self.status()
        return st["counters"].get(name, 0) if st and st.get("counters") else None

    def wait_counter(self, name, want, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.counter(name) or 0) >= want:
                return True
            time.sleep(0.05)
        return False

    def pump(self, timeout):
        """Collects series messages for up to timeout seconds; True once a status arrived."""
        seen_status = False
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sub.poll(int(left * 1000) + 1):
                break
            topic, body = self.sub.recv_multipart()
            b = msgpack.unpackb(body, raw=False)
            if topic == b"series":
                self.series.append(b)
            else:
                seen_status = True
                break
        return seen_status

    def series_msg(self, sid, event, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for b in self.series:
                if b.get("series_id") == sid and b.get("event") == event:
                    return b
            self.pump(0.5)
        return None


def results_sums(path, timeout=60):
    """{image_id: sum} of a closed results file; {} if none appears."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with h5py.File(path, "r") as f:
                ids = f["/entry/scan/image_id"][:]
                sums = f["/entry/features/sum"][:]
                return {int(i): float(s) for i, s in zip(ids, sums)}
        except (OSError, KeyError):
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.1)


def check_series(c, out, sid, chan, rows, cols, n, what):
    """The series messages name the channel, every frame is analysed, and the
    results file's sums are that channel's."""
    start, end = c.series_msg(sid, "start"), c.series_msg(sid, "end")
    check(start is not None and end is not None, f"{what}: start and end on the series topic")
    if not (start and end):
        return
    name = CHANNELS[chan]
    check(start["detector"]["channel"] == name and end["detector"]["channel"] == name,
          f"{what}: the series messages name {name} ({start['detector']['channel']}, {end['detector']['channel']})")
    check(end["frames_analysed"] == n, f"{what}: frames_analysed {end['frames_analysed']} of {n} sent")
    # The file by its documented name (roid_<series_unique_id>.h5).
    got = results_sums(os.path.join(out, f"roid_RELOAD{sid}.h5"))
    want = {i: expected_sum(sid, i, chan, rows, cols) for i in range(n)}
    other = {i: expected_sum(sid, i, 1 - chan, rows, cols) for i in range(n)}
    check(sorted(got) == list(range(n)), f"{what}: the results file has a row per image ({len(got)})")
    check(all(got.get(i) == want[i] for i in range(n)),
          f"{what}: per-frame sums are {name}'s (image 0: {got.get(0)}, {name} {want[0]}, other {other[0]})")


CONF1 = """[detector]
channel = #0
receive_hwm = 1000

[output]
status_interval = 0.1
map_interval = 0.2
publish_hwm = 100
"""

CONF2 = """[detector]
channel = #1
receive_hwm = 500

[output]
status_interval = 0.1
map_interval = 0.2
publish_hwm = 50

[limits]
max_frame_bytes = 4K
"""

CONF3 = """[detector]
channel = threshold_1
receive_hwm = 500

[output]
status_interval = 0.1
map_interval = 0.2
publish_hwm = 50

[service]
exit_after_series = 3
"""


def main():
    tmp = tempfile.mkdtemp(prefix="roid-reload-")
    d = Daemon(tmp, CONF1)
    ctx = zmq.Context()
    c = Clients(ctx, d)
    det = Detector(ctx, d.det)
    try:
        check(c.status() is not None, "the control socket answers")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30 and not c.pump(1):
            pass  # the subscriber has joined once a status arrives

        # Series 1: SIGHUP in the middle.
        n1, half = 40, 20
        det.start(1, 64, 64, n1)
        for i in range(half):
            det.image(1, i, 64, 64)
        check(c.wait_counter("images_received", half), f"series 1: {half} images received before the SIGHUP")
        lines = d.reload(CONF2)
        warn = [ln for ln in lines if "needs a restart" in ln]
        check(len(warn) == 1 and "[output] publish_hwm" in warn[0], f"the restart-only key is named: {warn}")
        check(all("receive_hwm" not in ln and "max_frame_bytes" not in ln and "channel" not in ln for ln in warn),
              "receive_hwm, max_frame_bytes and channel are not refused")
        bad0 = c.counter("messages_bad_size")
        for i in range(half, n1):
            det.image(1, i, 64, 64)
        det.end(1)
        check_series(c, d.out, 1, 0, 64, 64, n1, "series 1 (SIGHUP after half of it)")
        check(c.counter("messages_bad_size") == bad0,
              "series 1: its 8 KiB frames after the SIGHUP pass (the new 4K max_frame_bytes waits for series 2)")

        # Series 2: the new channel and the new limit.
        n2 = 30
        mark = len(d.log())
        det.start(2, 32, 32, n2)
        for i in range(n2):
            det.image(2, i, 32, 32)
            if i == 10:
                det.image(2, n2, 64, 64)  # above max_frame_bytes 4K
        det.end(2)
        check_series(c, d.out, 2, 1, 32, 32, n2, "series 2 (after the SIGHUP)")
        check(c.counter("messages_bad_size") == bad0 + 1, "series 2: the 8 KiB image is refused, messages_bad_size + 1")
        line = d.wait_log(r"exceeds max_frame_bytes 4096.*\[messages_bad_size\]", mark, 10)
        check(line is not None, f"... logged naming the limit: {line}")

        # A control set, then a reload: the file's values replace it, and the log says so.
        r = c.rpc({"cmd": "set", "values": {"k": 3}})
        check(r and r["ok"], f"control set k = 3: {r}")
        r = c.rpc({"cmd": "set", "values": {"output.flush_interval": 30}})
        check(r and not r["ok"] and "restart roid" in r["error"],
              f"control set of output.flush_interval refused (fixed while the writer runs): {r and r.get('error')}")

        # Series 3: a reload between series; exit_after_series applies too.
        mark = len(d.log())
        lines = d.reload(CONF3)
        check(any("replace what 1 control set request changed" in ln for ln in lines),
              "the reload warns that it replaces a control set")
        n3 = 20
        det.start(3, 64, 64, n3)
        for i in range(n3):
            det.image(3, i, 64, 64)
        det.end(3)
        check_series(c, d.out, 3, 0, 64, 64, n3, "series 3 (channel by name, default max_frame_bytes)")
        check(not any("[messages_bad_size]" in ln for ln in d.log(mark)), "series 3: nothing refused")
        try:
            rc = d.proc.wait(60)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, f"the reloaded exit_after_series = 3 stops the daemon after series 3 (exit status {rc})")
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        d.reader.join(10)
        det.s.close(0)
        c.sub.close()
        ctx.term()
    if failures:
        print("\n".join(d.log()), file=sys.stderr)
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
