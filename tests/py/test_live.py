"""Live outputs end to end: roid-sim streams the phantom scan into the daemon,
a subscriber hears every topic while the scan runs, a REQ client talks to the
control socket, and the final `map` must equal the RoI of the results file.

Checked: every topic (status, series, map, scan_here, frame) arrives with the
common keys; per-topic seq numbers have no gap; `frame` features equal the
results file's per-frame features; the final map equals /entry/roi/mask and
the clusters; scan_here boxes contain the RoI and its `next` list is what
`ask` returns; control errors are answered and the daemon goes on; a `set`
applies to the next series; a burst of messages with nothing after it is
processed to the last one (ZMQ_FD is edge-like: the loop must drain); on a
large grid the map interval in effect stretches to keep publishing within
its budget; a beam centre estimated from the first frame reaches the
results file."""
import json
import os
import re
import socket
import signal
import subprocess
import tempfile
import threading
import time

import cbor2
import h5py
import msgpack
import numpy as np
import zmq

from roidtest import CHILDREN, check, failures, finish, free_port, run, typed

ROID = os.environ["ROID"]
SIM = os.environ["ROID_SIM"]
NY = NX = 32


class Control:
    def __init__(self, ctx, ep):
        self.ctx, self.ep = ctx, ep
        self.open()

    def open(self):
        self.s = self.ctx.socket(zmq.REQ)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.setsockopt(zmq.RCVTIMEO, 20000)
        self.s.connect(self.ep)

    def raw(self, payload):
        self.s.send(payload)
        return msgpack.unpackb(self.s.recv(), raw=False)

    def __call__(self, **req):
        return self.raw(msgpack.packb(req))


def main():
    tmp = tempfile.mkdtemp(prefix="roid-live-")
    pd, pp, pc = free_port(), free_port(), free_port()
    det, pub, ctl_ep = (f"tcp://127.0.0.1:{p}" for p in (pd, pp, pc))
    conf = os.path.join(tmp, "roid.conf")
    with open(conf, "w") as f:
        f.write("[output]\nstatus_interval = 0.1\nframe_every = 7\n")
    roid = subprocess.Popen([ROID, "--config", conf, "--detector", det, "--publish", pub, "--control", ctl_ep,
                             "--output-dir", tmp, "--workers", "2", "--map-interval", "0.1", "--series", "2",
                             "--idle-timeout", "120"], stderr=subprocess.PIPE, text=True)
    CHILDREN.append(roid)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(pub)
    ctl = Control(ctx, ctl_ep)

    # The control socket answers before any series, and says there is no map yet.
    st = ctl(cmd="status")
    check(st["ok"] and st["state"] == "idle" and st["schema"] == 1, "control status before any series: idle")
    m = ctl(cmd="map")
    check(not m["ok"] and "no data" in m["error"], f"control map before any series: error ({m.get('error')})")
    sr = ctl(cmd="series")
    check(not sr["ok"] and "no series has started" in sr["error"], f"control series before any: {sr.get('error')}")
    # Malformed requests are answered and counted; the daemon goes on.
    bad = [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"cmd": "fly"}), msgpack.packb({"cmd": "ask", "n": 0})]
    answers = [ctl.raw(b) for b in bad]
    check(all(not a["ok"] and a["error"] for a in answers), "4 bad requests get error replies: " +
          "; ".join(a["error"] for a in answers))
    # Wait until the subscriber hears the status topic (slow joiner) before streaming.
    t0 = time.time()
    while time.time() - t0 < 20:
        if sub.poll(200) and sub.recv_multipart()[0] == b"status":
            break

    msgs = []
    truth = os.path.join(tmp, "truth.json")
    sim = subprocess.Popen([SIM, "--endpoint", det, "--source", f"phantom:seed=5,truth={truth}", "--shape",
                            "128x128", "--dtype", "uint32", "--scan", f"{NY}x{NX},snake", "--rate", "1500",
                            "--quiet"])
    CHILDREN.append(sim)
    got_final = got_end = False
    late = None
    t0 = time.time()
    while time.time() - t0 < 120 and not (got_final and got_end):
        if sub.poll(500):
            topic, body = sub.recv_multipart()
            b = msgpack.unpackb(body, raw=False)
            msgs.append((topic.decode(), b))
            got_end |= topic == b"series" and b["event"] == "end"
            if topic == b"map" and not b["final"] and late is None:
                late = ctl(cmd="series")  # a dashboard joining while the series runs
            if topic == b"map" and b["final"]:
                got_final = True
                # Right after the end, the control socket serves the same final map and the ask list.
                cm = ctl(cmd="map")
                ask = ctl(cmd="ask", n=5)
                stat = ctl(cmd="status")
    sim.wait()
    check(got_final, "a final map arrived")
    topics = {t for t, _ in msgs}
    check(topics >= {"status", "series", "map", "scan_here", "frame"}, f"every topic heard: {sorted(topics)}")

    # Common keys and gap-free sequence numbers per topic.
    last = {}
    gaps = 0
    for t, b in msgs:
        ok = b["schema"] == 1 and b["topic"] == t and abs(b["time"] - time.time()) < 600
        if not ok:
            failures.append(f"common keys of {t}")
        if t in last and b["seq"] != last[t] + 1:
            gaps += 1
        last[t] = b["seq"]
    check(gaps == 0, f"seq numbers consecutive on every topic ({len(msgs)} messages)")

    series = [b for t, b in msgs if t == "series"]
    start, end = series[0], series[-1]
    uid = start["series_unique_id"]
    check(start["event"] == "start" and end["event"] == "end" and end["series_unique_id"] == uid,
          "series start and end of the same series")
    check(end["frames_analysed"] == NY * NX and end["terminated"], f"end: {end['frames_analysed']} frames analysed")
    check(start["grid"]["ny"] == NY and start["grid"]["source"] == "series", "grid from the series' user data")
    # Latency over the whole series in its end message; every status while it
    # ran spoke of some of its frames, so none can exceed the series' maximum.
    lat = [end.get(k) for k in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms")]
    st99 = [b["latency_p99_ms"] for t, b in msgs if t == "status" and b["state"] == "acquiring"
            and b["series_unique_id"] == uid and b["latency_p99_ms"] is not None]
    check(all(isinstance(v, float) for v in lat) and 0 < lat[0] <= lat[1] <= lat[2] and
          all(v <= lat[2] * 1.006 for v in st99) and
          all(start.get(k, 0) is None for k in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms")),
          f"series latency p50 <= p99 <= max {lat} ms, above the {len(st99)} status p99s; nil in the start")
    # The control `series` request: what a dashboard joining late missed on the topic.
    body = ("topic", "seq", "time", "ok", "cmd", "schema")
    check(late and late["ok"] and {k: v for k, v in late.items() if k not in body} ==
          {k: v for k, v in start.items() if k not in body}, "control series while acquiring == the start message")
    now = ctl(cmd="series")
    check(now["ok"] and {k: v for k, v in now.items() if k not in body} == {k: v for k, v in end.items() if k not in body},
          f"control series after the end == the end message (results_file {now.get('results_file')})")
    online = [b for t, b in msgs if t == "map" and not b["final"]]
    check(len(online) >= 2, f"{len(online)} online maps while the scan ran")
    check(all(b["series_unique_id"] == uid for t, b in msgs if t in ("map", "scan_here", "frame")),
          "map, scan_here and frame name the series")

    roid_rc = None
    final = [b for t, b in msgs if t == "map" and b["final"]][-1]
    path = end["results_file"]
    # The results file is complete once the writer has closed it: wait for it.
    for _ in range(100):
        try:
            with h5py.File(path, "r") as f:
                mask = f["/entry/roi/mask"][()]
                ids = f["/entry/scan/image_id"][()]
                sums = f["/entry/features/sum"][()]
                comf = f["/entry/features/com"][()]
            break
        except (OSError, KeyError):
            time.sleep(0.1)
    check(np.array_equal(typed(final["roi"]), mask), f"final map RoI == results file mask ({mask.sum()} points)")
    check(cm["ok"] and np.array_equal(typed(cm["roi"]), mask) and cm["final"], "control map == final map")
    counts = typed(final["counts"])
    check(counts.sum() == NY * NX and counts.min() == 1, "counts: one frame per point")

    # Per-frame features published on `frame` equal the results file's.
    by_id = {int(i): (s, c) for i, s, c in zip(ids, sums, comf)}
    frames = [b for t, b in msgs if t == "frame"]
    match = all(abs(b["total"] - by_id[b["image_id"]][0]) < 1e-6 * max(1, b["total"]) and
                abs(b["com_x"] - by_id[b["image_id"]][1][0]) < 1e-9 for b in frames)
    check(len(frames) >= NY * NX // 7 - 1 and match, f"{len(frames)} frame messages match the results file")

    # scan_here: boxes contain the RoI, the final one is marked final, ask == next.
    sh = [b for t, b in msgs if t == "scan_here"]
    fin = sh[-1]
    check(fin["final"] and fin["updates"] >= 2, f"final scan_here after {fin['updates']} updates")
    fm = typed(fin["mask"])
    inside = np.zeros_like(fm)
    for bx in fin["boxes"]:
        inside[bx["row0"]:bx["row1"] + 1, bx["col0"]:bx["col1"] + 1] = 1
    check(fm.sum() > 0 and not np.any(fm & (1 - inside)), f"{len(fin['boxes'])} boxes cover the RoI")
    nxt = [(p["row"], p["col"]) for p in fin["next"]][:5]
    check(ask["ok"] and [(p["row"], p["col"]) for p in ask["points"]] == nxt,
          f"ask(5) returns the head of scan_here.next ({len(ask['points'])} points)")
    rs = typed(fin["rescan"])
    check(rs.shape[0] == fm.sum() * 4, f"rescan at half step: {rs.shape[0]} points for {fm.sum()} RoI points")
    check(stat["ok"] and stat["counters"]["frames_analysed"] == NY * NX, "control status counts the frames")
    # The map interval in effect: the configured 0.1 s; stretched only when a map takes more than its
    # budget of the analysis thread, which a small grid reaches only when the machine is loaded (the
    # whole suite at once): never shorter, and the configured value most of the time.
    ivs = [b["map_interval_s"] for t, b in msgs if t == "status" and b.get("map_interval_s") is not None]
    exact = sum(abs(v - 0.1) < 1e-9 for v in ivs)
    check(ivs and all(v > 0.1 - 1e-9 for v in ivs) and 2 * exact >= len(ivs) and stat["map_interval_s"] > 0.1 - 1e-9,
          f"status map_interval_s is the configured 0.1 s ({exact} of {len(ivs)} status messages; the others "
          f"stretched: {sorted(v for v in ivs if abs(v - 0.1) >= 1e-9)[:3]})")

    # The status topic carries the control socket's counts too: 6 requests (status, map and 4 bad ones)
    # before the stream, 5 of them errors (the map before any series, the 4 bad ones), every reply sent.
    cts = [b["control"] for t, b in msgs if t == "status"]
    check(cts and cts[-1]["requests"] >= 6 and cts[-1]["errors"] >= 5 and cts[-1]["unsent"] == 0 and
          all(a["requests"] <= b["requests"] for a, b in zip(cts, cts[1:])),
          f"status topic: control counts {cts[-1] if cts else None}")

    # A `set` applies to the next series: stream a second one with 4 segments.
    r = ctl(cmd="set", values={"segments": 4, "k": 3})
    check(r["ok"] and r["applied"] == ["analysis.segments", "analysis.k"], f"set applied: {r.get('applied')}")
    # Keys checked together go in one request, in any order; a request is applied whole or not at all.
    r = ctl(cmd="set", values={"center_y": 16.5, "k": 2, "center_x": 16})
    check(r["ok"] and r["applied"] == ["analysis.center_y", "analysis.k", "analysis.center_x"],
          f"set center_y, k, center_x in one request: {r.get('error') or r.get('applied')}")
    r = ctl(cmd="set", values={"k": 4, "df_outer": 5, "df_inner": 9})
    check(not r["ok"] and r["applied"] == [] and "df_inner" in r["error"],
          f"set df_inner above df_outer: refused whole, k not applied ({r.get('error')})")
    r = ctl(cmd="set", values={"k": 3, "df_inner": 9, "df_outer": 14})
    check(r["ok"], f"set df_inner before df_outer: {r.get('error') or 'applied'}")
    r = ctl(cmd="set", values={"directory": os.path.join(tmp, "no-such-dir")})
    check(not r["ok"] and "[output] directory" in r["error"] and "No such file" in r["error"],
          f"set output.directory to a missing directory: refused ({r.get('error')})")
    # A client that sets values at every step must not flood the log: 200 sets that change nothing
    # (debug lines), then 60 that change map_interval each time (rate-limited, with a count of the rest).
    for i in range(200):
        ctl(cmd="set", values={"k": 3})
    for i in range(60):
        ctl(cmd="set", values={"map_interval": 0.1 + 0.01 * (i % 2)})
    ctl(cmd="set", values={"map_interval": 0.1})
    # Issue 5's burst: 10,000 messages as fast as the simulator can, then nothing.
    sim = subprocess.run([SIM, "--endpoint", det, "--shape", "32x32", "--frames", "10000", "--series-id", "2",
                          "--quiet"], timeout=120)
    try:
        roid_rc = roid.wait(timeout=120)
    except subprocess.TimeoutExpired:
        roid.kill()
    err = roid.stderr.read()
    check(roid_rc == 0, f"roid exits 0 after 2 series (rc {roid_rc})")
    check("frames_analysed=" + str(NY * NX + 10000) in err, "every frame of the burst analysed")
    # The simulator closes its connection after each complete series: routine, not a loss.
    ctrs = dict(re.findall(r"(\w+)=(\d+)", err.split("counters:")[-1].splitlines()[0])) if "counters:" in err else {}
    check(re.search(r"connections? closed between series", err) and "closed during a series" not in err and
          not any("warning" in l and "closed" in l and "connection" in l for l in err.splitlines()) and
          int(ctrs.get("connections_closed", 0)) >= 1 and "connections_lost" not in ctrs,
          f"a sender leaving after its series ended is a notice, not a warning of lost messages, and counts as "
          f"closed, not lost (connections_closed {ctrs.get('connections_closed')}, connections_lost "
          f"{ctrs.get('connections_lost')})")
    sets = [l for l in err.splitlines() if "control: set" in l]
    check(len(sets) <= 16 and any("similar lines suppressed" in l for l in sets) and
          not any(l.endswith("control: set [analysis] k = 3 (from the next series)") for l in sets),
          f"261 control sets logged in {len(sets)} lines, the rest counted")
    files = sorted(p for p in os.listdir(tmp) if p.endswith(".h5"))
    check(len(files) == 2, f"two results files: {files}")
    for p in files:
        with h5py.File(os.path.join(tmp, p), "r") as f:
            if f["/entry/scan/image_id"].shape[0] == 10000:
                check(f["/entry/features/segment_sum"].shape[1] == 4, "second series analysed with 4 segments")
                a = f["/entry"].attrs
                conf = a["configuration"]
                conf = conf.decode() if isinstance(conf, bytes) else str(conf)
                check(a["df_radius_inner"] == 9 and a["df_radius_outer"] == 14 and "center_x = 16\n" in conf and
                      "center_y = 16.5\n" in conf and "\nk = 3\n" in conf,
                      "second series: df radii, beam centre and k set over the control socket")
    budget(tmp)
    preempted_maps(tmp)
    feedback_follows_refits(tmp)
    last_word_on_exit(tmp)
    off_grid_and_after(tmp)
    series_timeout(tmp)
    unreachable_detector()
    output_dir_checked(tmp)
    estimated_center(tmp)
    refused_state(tmp)
    geometry_at_start(tmp)
    ask_after_set(tmp)
    blank_first_frame(tmp)
    refused_images_counted()
    record_never_replaces(tmp)
    record_after_oversized(tmp)
    file_size_limit(tmp)
    replay_results_failed(tmp)
    if failures:
        print(err[-3000:])
        print(f"{len(failures)} failures")
        return 1
    return 0


def estimated_center(tmp):
    """A series that gives no beam centre (Stream V1, header detail none):
    the centre estimated from the first frame reaches the results file,
    opened before that frame, by the end of the series."""
    out = os.path.join(tmp, "bc")
    os.mkdir(out)
    pd = free_port()
    det = f"tcp://127.0.0.1:{pd}"
    roid = subprocess.Popen([ROID, "--detector", det, "--output-dir", out, "--series", "1"], stderr=subprocess.PIPE,
                            text=True)
    CHILDREN.append(roid)
    truth = os.path.join(tmp, "bc-truth.json")
    subprocess.run([SIM, "--endpoint", det, "--format", "v1", "--header-detail", "none", "--source",
                    f"phantom:seed=3,truth={truth}", "--shape", "128x128", "--scan", "16x16", "--quiet",
                    "--wait-connect", "20"], timeout=120)
    roid.wait(timeout=60)
    files = [p for p in os.listdir(out) if p.endswith(".h5")]
    with open(truth) as f:
        want = json.load(f)["beam_center"]
    with h5py.File(os.path.join(out, files[0]), "r") as f:
        bc, src = f["/entry"].attrs["beam_center"], f["/entry"].attrs["beam_center_source"]
    src = src.decode() if isinstance(src, bytes) else src
    check(src == "estimated" and np.all(np.isfinite(bc)) and np.hypot(*(np.array(bc) - want)) < 0.5,
          f"estimated beam centre in the results file: {bc} ({src}), phantom's {want}")


def file_size_limit(tmp):
    """Under a file-size limit (ulimit -f, systemd LimitFSIZE=) a results
    file that reaches it fails like a full disk, logged and counted, and the
    daemon goes on to the next series (it used to be killed by SIGXFSZ)."""
    import resource
    out = os.path.join(tmp, "fsize")
    os.mkdir(out)
    pd = free_port()
    det = f"tcp://127.0.0.1:{pd}"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))

    roid = subprocess.Popen([ROID, "--detector", det, "--output-dir", out, "--series", "2", "--idle-timeout", "60"],
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    CHILDREN.append(roid)
    for sid, scan in ((1, "90x90"), (2, "8x8")):
        subprocess.run([SIM, "--endpoint", det, "--shape", "32x32", "--scan", scan, "--series-id", str(sid),
                        "--quiet", "--wait-connect", "20"], timeout=120)
    rc, err = finish(roid, 120)
    check(rc == 1 and "exit status 1: 1 results file failed" in err,
          f"file-size limit: roid goes on to the end and exits 1, a results file having failed (rc {rc})")
    check("File too large" in err and "results_failed=1" in err,
          "the file at the limit is logged with the reason and counted (results_failed=1)")
    small = [p for p in os.listdir(out) if p.endswith(".h5") and os.path.getsize(os.path.join(out, p)) < (1 << 20)]
    ok = False
    for p in small:
        with h5py.File(os.path.join(out, p), "r") as f:
            ok |= f["/entry/scan/image_id"].shape[0] == 64
    check(ok, f"the next series is written whole ({small})")


def replay_results_failed(tmp):
    """`roid replay --output-dir` whose results file fails exits 1, as the
    daemon, saying why (it exited 0): at a file-size limit hit while the
    file's layout is written (which also crashed it at exit, in HDF5's
    cleanup: SIGSEGV) and at one hit later; without a limit it exits 0."""
    import resource
    cap = os.path.join(tmp, "replay-fail.cbors")
    port = free_port()
    rec = subprocess.Popen([ROID, "record", f"tcp://127.0.0.1:{port}", cap, "--series", "1"],
                           stderr=subprocess.PIPE, text=True)
    CHILDREN.append(rec)
    subprocess.run([SIM, "--endpoint", f"tcp://127.0.0.1:{port}", "--source", "phantom", "--shape", "64x64", "--scan",
                    "8x8", "--series-id", "3", "--wait-connect", "20", "--quiet"], check=True, timeout=60)
    rec.communicate(timeout=60)
    for kib, what in ((16, "the layout"), (256, "later"), (None, "no limit")):
        out = os.path.join(tmp, f"replay-fail-{kib}")
        os.mkdir(out)

        def limit():
            if kib:
                resource.setrlimit(resource.RLIMIT_FSIZE, (kib << 10, resource.RLIM_INFINITY))
        p = subprocess.run([ROID, "replay", "--output-dir", out, cap], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, preexec_fn=limit, timeout=120)
        files = [f for f in os.listdir(out) if f.endswith(".h5")]
        if kib is None:
            check(p.returncode == 0 and "exit status 1" not in p.stderr and len(files) == 1,
                  f"replay without a limit: exit 0, {files} written")
            continue
        check(p.returncode == 1 and "results not written" in p.stderr and "results_failed=1" in p.stderr and
              "exit status 1: 1 results file failed" in p.stderr,
              f"replay, file-size limit {kib} KiB ({what}): exit 1 (rc {p.returncode}), the failure logged and counted")
        if kib == 16:
            check("writing the layout failed" in p.stderr and not files,
                  f"  the file that failed while created is removed ({files})")
        else:
            rows = -1
            for f in files:  # as a file killed while written: readable in SWMR mode
                with h5py.File(os.path.join(out, f), "r", libver="latest", swmr=True) as h:
                    rows = h["/entry/features/sum"].shape[0]
            check(len(files) == 1 and 0 <= rows <= 64,
                  f"  the file that failed later is left readable by SWMR readers ({files}, {rows} rows)")


def blank_first_frame(tmp):
    """A series without a beam centre (V1, header detail none) whose first
    frame is blank, a closed shutter: that frame fails, the centre is
    estimated from the next one, and the rest of the series is analysed."""
    n, rows, cols = 16, 48, 64
    yy, xx = np.mgrid[0:rows, 0:cols]
    frames = np.zeros((n, rows, cols), np.uint16)
    for k in range(1, n):
        frames[k] = (1000 * np.exp(-((xx - 30.0) ** 2 + (yy - 20.0) ** 2) / 18) + 3 + (k % 5)).astype(np.uint16)
    src = os.path.join(tmp, "blank-first.h5")
    with h5py.File(src, "w") as f:
        f["/entry/data/data"] = frames
    det, roid, ctx, sub = daemon_with_subscriber(["--series", "1"])
    sim = subprocess.Popen([SIM, "--endpoint", det, "--format", "v1", "--header-detail", "none", "--source",
                            f"file:{src}", "--shape", f"{rows}x{cols}", "--scan", "4x4", "--quiet"])
    CHILDREN.append(sim)
    end = series_end(sub, 60)
    sim.wait(timeout=60)
    roid.wait(timeout=60)
    err = roid.stderr.read()
    sub.close(0)
    ctx.term()
    check(end is not None and end["frames_analysed"] == n - 1,
          f"blank first frame: {end and end['frames_analysed']} of {n} frames analysed (all but it)")
    check("no unmasked pixel above 0" in err and "tries again" in err,
          "the blank frame failed with the reason; the next one tried again")


def record_never_replaces(tmp):
    """roid record refuses a capture file that is there (an earlier run's),
    and a mistyped endpoint leaves no empty capture behind."""
    cap = os.path.join(tmp, "earlier.cbors")
    with open(cap, "wb") as f:
        f.write(b"an earlier capture")
    p = subprocess.run([ROID, "record", "tcp://127.0.0.1:9", cap, "--count", "1"], capture_output=True, text=True,
                       timeout=60)
    with open(cap, "rb") as f:
        kept = f.read()
    check(p.returncode != 0 and "exists: roid record never replaces a file" in p.stderr and
          kept == b"an earlier capture", f"record onto an existing file: refused, file kept ({p.stderr.strip()})")
    new = os.path.join(tmp, "never.cbors")
    p = subprocess.run([ROID, "record", "tcp://no-such-host-xyz:", new, "--count", "1"], capture_output=True,
                       text=True, timeout=60)
    check(p.returncode != 0 and not os.path.exists(new),
          f"record from a bad endpoint: fails, no capture file made ({p.stderr.strip()})")
    p = subprocess.run([ROID, "record", "tcp://127.0.0.1:9", "/dev/null", "--count", "1", "--idle-timeout", "1"],
                       capture_output=True, text=True, timeout=60)
    check("never replaces" not in p.stderr, f"record to /dev/null (a device) is allowed ({p.stderr.strip()})")


def record_after_oversized(tmp):
    """A part over max_message_bytes makes libzmq drop the connection and give
    the endpoint up: roid record connects again, as the daemon does, and
    records what the detector sends after it (it heard nothing more, without
    a word)."""
    conf = os.path.join(tmp, "small-messages.conf")
    with open(conf, "w") as f:
        f.write("[limits]\nmax_message_bytes = 4096\n")
    cap = os.path.join(tmp, "after-oversized.cbors")
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    rec = subprocess.Popen([ROID, "record", "--config", conf, f"tcp://127.0.0.1:{port}", cap, "--count", "6",
                            "--idle-timeout", "20"], stderr=subprocess.PIPE, text=True)
    CHILDREN.append(rec)
    push.send(b"small 0")
    push.send(b"x" * 10000)
    time.sleep(2.5)  # roid looks a second after a close whether libzmq connects again
    deadline = time.time() + 15
    for i in range(1, 6):  # without a peer a PUSH send waits: bounded here
        while time.time() < deadline:
            try:
                push.send(b"small %d" % i, zmq.NOBLOCK)
                break
            except zmq.Again:
                time.sleep(0.05)
    try:
        _, err = rec.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        rec.kill()
        _, err = rec.communicate()
    push.close(0)
    ctx.term()
    with open(cap, "rb") as f:
        dec = cbor2.CBORDecoder(f)
        got = []
        while f.tell() < os.path.getsize(cap):
            got.append(dec.decode()[0])
    check(rec.returncode == 0 and got == [b"small %d" % i for i in range(6)],
          f"record after a part over max_message_bytes: {len(got)} of the 6 small messages recorded "
          f"(exit {rec.returncode}; {err.strip().splitlines()[-3:]})")


def refused_images_counted():
    """Images of the series that the ingest refuses (the analysed channel
    missing, a wrong shape) count among the series' dropped frames in its end
    message, so that number_of_images - analysed - dropped, the images that
    never arrived, is 0; a duplicate is not counted again."""
    n, rows, cols, chans = 10, 32, 32, ["threshold_1", "threshold_2"]

    def arr(i, c=cols):
        a = np.random.default_rng(i).integers(1, 200, size=(rows, c), dtype=np.uint16)
        return cbor2.CBORTag(40, [[rows, c], cbor2.CBORTag(69, a.astype("<u2").tobytes())])

    def msg(m):
        return cbor2.dumps(cbor2.CBORTag(55799, dict(m, series_id=7, series_unique_id="REFUSED7")))

    msgs = [msg({"type": "start", "image_size_x": cols, "image_size_y": rows, "image_dtype": "uint16",
                 "number_of_images": n, "channels": chans, "beam_center_x": 16.0, "beam_center_y": 16.0})]
    for i in range(n):
        data = ({"threshold_2": arr(i)} if i == 3 else  # no analysed channel
                {c: arr(i, cols + 2) for c in chans} if i == 5 else  # wrong shape
                {c: arr(i) for c in chans})
        msgs.append(msg({"type": "image", "image_id": i, "data": data}))
    msgs.insert(3, msgs[2])  # image 1 twice
    msgs.append(msg({"type": "end"}))
    det, roid, ctx, sub = daemon_with_subscriber(["--series", "1", "--idle-timeout", "30"])
    push = ctx.socket(zmq.PUSH)
    push.bind(det)  # the detector binds, roid connects
    for m in msgs:  # the first send waits for roid
        push.send(m)
    end = series_end(sub, 60)
    try:
        rc = roid.wait(timeout=60)
    except subprocess.TimeoutExpired:
        roid.kill()
        rc = None
    err = roid.stderr.read()
    push.close(0)
    sub.close(0)
    ctx.term()
    got = end and (end["number_of_images"], end["frames_analysed"], end["frames_dropped"])
    check(rc == 0 and got == (n, n - 2, 2),
          f"2 refused images of {n}: end message (number_of_images, analysed, dropped) {got}, want ({n}, {n - 2}, 2)")
    check("no such channel" in err and "is 32 x 34" in err and "duplicate" in err,
          "the refused images and the duplicate are logged with their reasons")


def ask_after_set(tmp):
    """`set next_points` above the value roid started with: `ask` returns as
    many points as the series' feedback ranked (its final scan_here next),
    not the start-up value's worth."""
    pc = free_port()
    ctl_ep = f"tcp://127.0.0.1:{pc}"
    det, roid, ctx, sub = daemon_with_subscriber(["--control", ctl_ep, "--idle-timeout", "60"])
    sub.setsockopt(zmq.SUBSCRIBE, b"scan_here")
    ctl = Control(ctx, ctl_ep)
    r = ctl(cmd="set", values={"next_points": 300})
    check(r["ok"] and r["applied"] == ["feedback.next_points"], f"set next_points 300: {r.get('applied')}")
    sim = subprocess.Popen([SIM, "--endpoint", det, "--source", "phantom:seed=9", "--shape", "64x64", "--scan",
                            "24x24", "--quiet"])
    CHILDREN.append(sim)
    fin, end = None, None
    t0 = time.time()
    while time.time() - t0 < 60 and (fin is None or end is None):
        if sub.poll(500):
            topic, body = sub.recv_multipart()
            b = msgpack.unpackb(body, raw=False)
            if topic == b"scan_here" and b["final"]:
                fin = b
            if topic == b"series" and b["event"] == "end":
                end = b
    sim.wait(timeout=60)
    ask = ctl(cmd="ask", n=300)
    roid.send_signal(signal.SIGTERM)
    roid.wait(timeout=60)
    ctl.s.close(0)
    sub.close(0)
    ctx.term()
    n_next = len(fin["next"]) if fin else -1
    check(fin is not None and n_next > 32 and ask["ok"] and len(ask["points"]) == n_next,
          f"ask(300) after set next_points 300: {len(ask.get('points', []))} points, final scan_here next "
          f"{n_next} (more than the start-up 32)")


def series_end(sub, seconds):
    """The next series end message the subscriber hears within seconds, or None."""
    t0 = time.time()
    while time.time() - t0 < seconds:
        if sub.poll(200):
            topic, body = sub.recv_multipart()
            if topic == b"series":
                b = msgpack.unpackb(body, raw=False)
                if b["event"] == "end":
                    return b
    return None


def daemon_with_subscriber(args, env=None, sub_opts=()):
    """roid with its own detector and publish ports, and a subscriber of its
    status and series topics (socket options sub_opts, (option, value)
    pairs) that has seen a first status (so it misses nothing of the series
    to come)."""
    pd, pp = free_port(), free_port()
    det, pub = (f"tcp://127.0.0.1:{p}" for p in (pd, pp))
    roid = subprocess.Popen([ROID, "--detector", det, "--publish", pub] + args, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))
    CHILDREN.append(roid)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"status")
    sub.setsockopt(zmq.SUBSCRIBE, b"series")
    for opt, value in sub_opts:
        sub.setsockopt(opt, value)
    sub.connect(pub)
    t0 = time.time()
    while time.time() - t0 < 20 and not (sub.poll(200) and sub.recv_multipart()[0] == b"status"):
        pass
    return det, roid, ctx, sub


def output_dir_checked(tmp):
    """An output directory that is not there, or not a directory, stops roid
    (daemon and replay) at start with exit status 2, naming it."""
    plain = os.path.join(tmp, "plain-file")
    open(plain, "w").close()
    for d, why in ((os.path.join(tmp, "missing", "dir"), "No such file or directory"), (plain, "not a directory")):
        for cmd in ([ROID, "--output-dir", d, "--series", "1"],
                    [ROID, "replay", "--output-dir", d, os.path.join(tmp, "none.cbor")]):
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            check(p.returncode == 2 and f"[output] directory {d}: {why}" in p.stderr,
                  f"{'replay' if 'replay' in cmd else 'daemon'} with output directory {os.path.basename(d)}: "
                  f"exit 2 naming it (rc {p.returncode}: {p.stderr.strip()[-160:]})")


def off_grid_and_after(tmp):
    """Frames off the scan grid are published on the frame topic too, with
    row and col nil; after the series ends, status names it while idle."""
    pc = free_port()
    ctl_ep = f"tcp://127.0.0.1:{pc}"
    det, roid, ctx, sub = daemon_with_subscriber(["--scan", "4x5", "--frame-every", "1", "--control", ctl_ep,
                                                  "--status-interval", "0.1", "--workers", "2"])
    sub.setsockopt(zmq.SUBSCRIBE, b"frame")
    ctl = Control(ctx, ctl_ep)
    ask = ctl(cmd="ask", n=3)
    check(ask["ok"] and ask["updates"] == 0 and ask["points"] == [] and ask["series_id"] is None,
          f"ask before any series: ok, no update, no points ({ask.get('error')})")
    sim = subprocess.Popen([SIM, "--endpoint", det, "--shape", "16x16", "--frames", "24", "--series-id", "77",
                            "--quiet"])
    CHILDREN.append(sim)
    frames, end, idle = [], None, None
    t0 = time.time()
    while time.time() - t0 < 60 and idle is None:
        if sub.poll(500):
            topic, body = sub.recv_multipart()
            b = msgpack.unpackb(body, raw=False)
            if topic == b"frame":
                frames.append(b)
            if topic == b"series" and b["event"] == "end":
                end = b
            if topic == b"status" and end is not None and b["state"] == "idle":
                idle = b
    sim.wait(timeout=60)
    st = ctl(cmd="status")
    roid.send_signal(signal.SIGTERM)
    roid.wait(timeout=60)
    log = roid.stderr.read()
    ctl.s.close(0)
    sub.close(0)
    ctx.term()
    off = [b for b in frames if b["row"] is None]
    check(len(frames) == 24 and sorted(b["image_id"] for b in off) == [20, 21, 22, 23] and
          all(b["col"] is None and b["label"] is None for b in off),
          f"frame topic: 24 frames, the 4 off the 4 x 5 grid with row/col nil ({len(frames)}, {len(off)} off)")
    said = log.count("further ones are counted only")
    check(said == 1, f"the first frame off the grid is logged, once ({said} lines, two workers)")
    check(idle is not None and idle["series_id"] == 77 and st["ok"] and st["state"] == "idle" and
          st["series_id"] == 77,
          f"after the end, status (topic and reply) names the last series while idle "
          f"({idle and idle['series_id']}, {st.get('series_id')})")


def unreachable_detector():
    """The detector endpoint is connected in the background: one nobody listens on is said once
    (ZeroMQ retries every 0.1 s), not silently waited for, and is not an error."""
    p = subprocess.run([ROID, "--detector", f"tcp://127.0.0.1:{free_port()}", "--idle-timeout", "1.5"],
                       capture_output=True, text=True, timeout=60)
    n = p.stderr.count("not reachable")
    check(p.returncode == 0 and n == 1, f"a detector endpoint nobody listens on: said once ({n}), exit {p.returncode}")


def series_timeout(tmp):
    """A sender killed mid-series sends no end: with [detector] series_timeout the series is closed
    as one without its end after that long (its end message, final map, a complete file), and status
    says meanwhile how long ago its last frame came (frame_age_s)."""
    out = os.path.join(tmp, "timeout")
    os.mkdir(out)
    det, roid, ctx, sub = daemon_with_subscriber(["--scan", "20x20", "--series-timeout", "1.5", "--output-dir", out,
                                                  "--status-interval", "0.1", "--map-interval", "0.2"])
    sub.setsockopt(zmq.SUBSCRIBE, b"map")
    sim = subprocess.Popen([SIM, "--endpoint", det, "--shape", "16x16", "--scan", "20x20", "--rate", "400",
                            "--series-id", "88", "--quiet"])
    CHILDREN.append(sim)
    ages, end, final, t_kill = [], None, None, None
    t0 = time.time()
    while time.time() - t0 < 60 and not (end and final):
        if t_kill is None and time.time() - t0 > 0.6:
            sim.kill()
            t_kill = time.time()
        if sub.poll(200):
            topic, body = sub.recv_multipart()
            b = msgpack.unpackb(body, raw=False)
            if topic == b"status" and b["state"] == "acquiring" and b["frame_age_s"] is not None:
                ages.append((time.time() - (t_kill or time.time()), b["frame_age_s"]))
            if topic == b"series" and b["event"] == "end":
                end = (time.time() - t_kill, b)
            if topic == b"map" and b["final"]:
                final = b
    sim.wait()
    roid.send_signal(signal.SIGTERM)
    roid.wait(timeout=60)
    log = roid.stderr.read()
    sub.close(0)
    ctx.term()
    check(end is not None and 1.4 < end[0] < 5 and end[1]["terminated"] is False and final is not None and
          0 < end[1]["frames_analysed"] < 400,
          f"series closed {end and round(end[0], 2)} s after its sender died (series_timeout 1.5 s), "
          f"not terminated, {end and end[1]['frames_analysed']} of 400 frames, final map sent")
    check("no message for 1.5 s (series_timeout)" in log, "the closing is logged with its reason")
    late = [a for t, a in ages if t > 1.0]
    check(late and max(late) > 0.9, f"status frame_age_s grows while the series waits ({late[-3:]})")
    files = os.listdir(out)
    if files:
        with h5py.File(os.path.join(out, files[0]), "r") as f:
            c = f["/entry/counters"].attrs
            check((int(c["terminated"]), int(c["complete"]), int(f["/entry/roi/final"][()])) == (0, 1, 1),
                  "its results file is complete, final, and not terminated")
    else:
        check(False, "a results file")

    # The wait for the first image does not count: a series armed for external triggers that come
    # later than series_timeout is analysed whole.  A 12-image capture is sent with a pause of 2.5 s
    # between its start and its first image.
    cap = os.path.join(tmp, "armwait.cbor")
    port = free_port()
    rec = subprocess.Popen([ROID, "record", f"tcp://127.0.0.1:{port}", cap, "--series", "1"], stderr=subprocess.PIPE,
                           text=True)
    subprocess.run([SIM, "--endpoint", f"tcp://127.0.0.1:{port}", "--shape", "16x16", "--scan", "3x4",
                    "--wait-connect", "10", "--quiet"], check=True, timeout=60)
    rec.communicate(timeout=60)
    with open(cap, "rb") as fp:
        dec = cbor2.CBORDecoder(fp)
        msgs = []
        while fp.peek(1):
            msgs.append(dec.decode())
    det, roid, ctx, sub = daemon_with_subscriber(["--scan", "3x4", "--series-timeout", "1.5"])
    push = ctx.socket(zmq.PUSH)
    push.bind(det.replace("127.0.0.1", "*"))
    push.send_multipart(msgs[0])
    time.sleep(2.5)
    for m in msgs[1:]:
        push.send_multipart(m)
    end = series_end(sub, 30)
    roid.send_signal(signal.SIGTERM)
    roid.wait(timeout=60)
    roid.stderr.read()
    push.close(0)
    sub.close(0)
    ctx.term()
    check(end is not None and end["terminated"] and end["frames_analysed"] == 12,
          f"a series whose first image comes 2.5 s after its start (series_timeout 1.5 s) is analysed whole "
          f"({end and end['frames_analysed']} frames, terminated {end and end['terminated']})")


def one_series(daemon_args, sim_args, topic, subscribe_topic=False, env=None):
    """Runs roid (--series 1, environment `env` added) and roid-sim with
    these arguments; returns the bodies heard on `topic` (status, series, or
    scan_here with subscribe_topic) and the series end message (None if none
    came)."""
    det, roid, ctx, sub = daemon_with_subscriber(daemon_args + ["--series", "1"], env)
    # read as it comes: a full pipe would block the daemon's log
    log = []
    reader = threading.Thread(target=lambda: log.extend(roid.stderr), daemon=True)
    reader.start()
    if subscribe_topic:
        sub.setsockopt(zmq.SUBSCRIBE, topic)
        time.sleep(0.3)
    sim = subprocess.Popen([SIM, "--endpoint", det, "--shape", "32x32", "--quiet"] + sim_args)
    CHILDREN.append(sim)
    heard, end = [], None
    t0 = time.time()
    while time.time() - t0 < 60 and end is None:
        if sub.poll(500):
            t, body = sub.recv_multipart()
            b = msgpack.unpackb(body, raw=False)
            if t == topic:
                heard.append(b)
            if t == b"series" and b["event"] == "end":
                end = b
    sim.wait()
    roid.wait(timeout=60)
    reader.join(timeout=10)
    sub.close(0)
    ctx.term()
    ONE_SERIES_LOG[:] = log
    return heard, end


# roid's stderr of the last one_series, for a failed check to show
ONE_SERIES_LOG = []


def show_log_if(failed, lines=12):
    if failed:
        print("".join("     | " + l for l in ONE_SERIES_LOG[-lines:]), end="")


def budget(tmp):
    """A large grid with the shortest map interval: publishing a map of
    160,000 points costs more than a quarter of 2 ms, so the interval in
    effect stretches (status map_interval_s) and no frame is lost."""
    status, end = one_series(["--scan", "400x400", "--segments", "1", "--map-interval", "0.002",
                              "--status-interval", "0.05"], ["--frames", "4000", "--rate", "2000"], b"status")
    ivs = [b["map_interval_s"] for b in status if b.get("map_interval_s") is not None]
    check(end is not None and end["frames_analysed"] == 4000 and end["frames_dropped"] == 0,
          f"160,000-point grid at a 2 ms map interval: every frame analysed ({end and end['frames_analysed']})")
    check(ivs and max(ivs) > 0.002, f"the map interval in effect stretched past 2 ms: up to {max(ivs or [0]):.4f} s")


def preempted_maps(tmp):
    """The map budget counts the analysis thread's CPU time, not the time a
    map took on the clock: a thread that loses its core while it publishes
    (ROID_FAULT=preempt-analysis: 15 ms asleep in every map) keeps the
    configured 50 ms interval.  Counted on the clock, every interval
    stretched to 4 x 15 ms = 60 ms, and one map preempted for 6.5 ms at
    2,000 frames/s had made the next 27 ms late."""
    status, end = one_series(["--scan", "20x20", "--map-interval", "0.05", "--status-interval", "0.1"],
                             ["--frames", "400", "--rate", "400"], b"status", env={"ROID_FAULT": "preempt-analysis"})
    ivs = [b["map_interval_s"] for b in status if b.get("map_interval_s") is not None]
    check(end is not None and end["frames_analysed"] == 400 and len(ivs) >= 3 and
          all(abs(v - 0.05) < 1e-9 for v in ivs),
          f"maps preempted 15 ms each keep the 50 ms interval: map_interval_s {sorted(set(ivs))}")


def feedback_follows_refits(tmp):
    """scan_here goes out at the map cadence, but its content (and the
    `stable` count) changes with the refits, as proto/live.md says: 400 frames
    with a refit every 64 make 6 online updates and the final one, however
    many maps (2 ms apart here, one or two frames each) went out (the old
    code: 400 and 401)."""
    here, end = one_series(["--scan", "20x20", "--map-interval", "0.002"], ["--frames", "400", "--rate", "200"],
                           b"scan_here", subscribe_topic=True)
    online = [b for b in here if not b["final"]]
    final = [b for b in here if b["final"]]
    ups = sorted({b["updates"] for b in online})
    seqs = [b["seq"] for b in here]
    gaps = sum(1 for a, b in zip(seqs, seqs[1:]) if b != a + 1)
    # 6 refits, or 5 if the refit budget (a refit's cost x 4, which ASan on a
    # loaded machine can stretch past a frame) held some back a frame or more
    n = final[0]["updates"] if len(final) == 1 else -1
    ok = (end is not None and end["frames_analysed"] == 400 and 6 <= n <= 7 and ups == list(range(ups[0], n)) and
          len(online) > 50 and gaps == 0)
    check(ok,
          f"scan_here: {len(online)} online messages, updates {ups[:8]}{' ...' if len(ups) > 8 else ''}, "
          f"final {[b['updates'] for b in final]} (6 refits of 400 frames at cadence 64, and the final); "
          f"{gaps} gaps in seq; end {end and {k: v for k, v in end.items() if k.startswith('frames')}}")
    show_log_if(not ok)


def last_word_on_exit(tmp):
    """roid stopping after its last series (--series 1) sends what is still
    queued for a subscriber first: a subscriber that reads nothing while
    maps of a 400 x 400 grid fill its queues (a receive queue of one
    message and small socket buffers, so that roid's side holds the rest),
    and starts reading only after roid has logged that it stops, still gets
    the final map, the final scan_here and the series end.  The PUB socket
    closed with linger 0 had dropped them (and, 1 run in 8, the end of a
    series read promptly)."""
    det, roid, ctx, sub = daemon_with_subscriber(["--scan", "400x400", "--segments", "1", "--map-interval",
                                                  "0.02", "--series", "1"],
                                                 sub_opts=((zmq.RCVHWM, 1), (zmq.RCVBUF, 65536)))
    for t in (b"map", b"scan_here"):
        sub.setsockopt(zmq.SUBSCRIBE, t)
    time.sleep(0.3)
    ended = threading.Event()
    log = []

    def read():
        for line in roid.stderr:
            log.append(line)
            if "stopping:" in line:
                ended.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sim = subprocess.Popen([SIM, "--endpoint", det, "--shape", "32x32", "--quiet", "--scan", "400x400",
                            "--frames", "600", "--rate", "2000"])
    CHILDREN.append(sim)
    sim.wait()
    stopped = ended.wait(60)
    time.sleep(0.2)  # roid is closing its sockets now
    heard = {}
    end = None
    t0 = time.time()
    while time.time() - t0 < 30 and end is None and sub.poll(3000):
        t, body = sub.recv_multipart()
        b = msgpack.unpackb(body, raw=False)
        heard.setdefault(t, []).append(b)
        if t == b"series" and b["event"] == "end":
            end = b
    rc = None
    try:
        rc = roid.wait(timeout=30)
    except subprocess.TimeoutExpired:
        roid.kill()
    reader.join(timeout=10)
    sub.close(0)
    ctx.term()
    finals = {t.decode(): sum(1 for b in heard.get(t, []) if b.get("final")) for t in (b"map", b"scan_here")}
    check(stopped and rc == 0 and end is not None and end["frames_analysed"] == 600 and
          finals == {"map": 1, "scan_here": 1},
          f"a subscriber that reads only after roid stopped gets the final map and scan_here ({finals}) and the "
          f"series end ({end is not None}; {len(heard.get(b'map', []))} maps in all; rc {rc})")


def refused_state(tmp):
    """A scan grid whose RoI state would pass [limits] max_analysis_bytes: the
    series is decoded but not analysed, says why in its series messages, its
    frames are counted as not analysed, and the next series (a small grid) is
    analysed as usual."""
    conf = os.path.join(tmp, "small-state.conf")
    with open(conf, "w") as f:
        f.write("[limits]\nmax_analysis_bytes = 4M\n")
    det, roid, ctx, sub = daemon_with_subscriber(["--config", conf, "--series", "2", "--idle-timeout", "60"])
    series = []
    # 200 x 200 points at 8 segments: about 70 MB of RoI state; then 16 x 16: 0.5 MB
    for sid, scan, frames in ((1, "200x200", 900), (2, "16x16", 256)):
        subprocess.run([SIM, "--endpoint", det, "--shape", "32x32", "--scan", scan, "--frames", str(frames),
                        "--series-id", str(sid), "--quiet"], timeout=120)
        t0 = time.time()
        while time.time() - t0 < 30:
            if sub.poll(500):
                topic, body = sub.recv_multipart()
                b = msgpack.unpackb(body, raw=False)
                if topic == b"series":
                    series.append(b)
                    if b["event"] == "end":
                        break
    rc, err = finish(roid, 60)
    sub.close(0)
    ctx.term()
    by = {(b["series_id"], b["event"]): b for b in series}
    s1, e1 = by.get((1, "start"), {}), by.get((1, "end"), {})
    s2, e2 = by.get((2, "start"), {}), by.get((2, "end"), {})
    check(rc == 0, f"roid exits 0 after a refused and an analysed series (rc {rc})")
    check(isinstance(s1.get("analysis_error"), str) and "max_analysis_bytes" in s1["analysis_error"]
          and "200 x 200" in s1["analysis_error"],
          f"the refused series' start says why: {s1.get('analysis_error')!r}")
    check(e1.get("frames_analysed") == 0 and e1.get("frames_dropped") == 900
          and e1.get("analysis_error") == s1.get("analysis_error"),
          f"its end: 0 analysed, 900 not ({e1.get('frames_analysed')}, {e1.get('frames_dropped')})")
    check("frames_not_analysed=900" in err and "max_analysis_bytes" in err,
          "the log names the limit and counts the 900 frames as frames_not_analysed")
    check("analysis_error" in s2 and s2["analysis_error"] is None and e2.get("frames_analysed") == 256,
          f"the next series (16 x 16) is analysed: {e2.get('frames_analysed')} frames")


def geometry_at_start(tmp):
    """A start that gives the frame shape, the beam centre and the pixel mask
    of the analysed channel: the detector geometry is built before the first
    image arrives (here a second later), not by it, and that image and the
    rest are analysed with it."""
    cap = os.path.join(tmp, "masked.cbors")
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    rec = subprocess.Popen([ROID, "record", f"tcp://127.0.0.1:{port}", cap, "--count", "5"],
                           stderr=subprocess.PIPE, text=True)
    man = os.path.join(tmp, "masked.jsonl")
    subprocess.run([SIM, "--endpoint", f"tcp://127.0.0.1:{port}", "--shape", "64x96", "--frames", "3",
                    "--header-detail", "all", "--mask", "--manifest", man, "--quiet"], check=True, timeout=60)
    rec.communicate(timeout=60)
    with open(cap, "rb") as f:
        dec = cbor2.CBORDecoder(f)
        msgs = []
        while f.tell() < os.path.getsize(cap):
            msgs.append(dec.decode())
    check(len(msgs) == 5, f"recorded start, 3 images, end: {len(msgs)} messages")

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    pd = push.bind_to_random_port("tcp://127.0.0.1")
    out = os.path.join(tmp, "geometry-at-start")
    os.mkdir(out)
    roid = subprocess.Popen([ROID, "--detector", f"tcp://127.0.0.1:{pd}", "--series", "1", "--idle-timeout", "30",
                             "--output-dir", out], stderr=subprocess.PIPE, text=True)
    CHILDREN.append(roid)
    lines = []

    def read():
        for line in roid.stderr:
            lines.append((time.time(), line))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    push.send_multipart(msgs[0])
    time.sleep(1.0)
    t_first_image = time.time()
    for m in msgs[1:]:
        push.send_multipart(m)
    try:
        rc = roid.wait(timeout=60)
    except subprocess.TimeoutExpired:
        roid.kill()
        rc = None
    reader.join(timeout=10)
    push.close(0)
    ctx.term()
    geom = [(t, l) for t, l in lines if "beam centre" in l]
    check(rc == 0 and len(geom) == 1 and "from start" in geom[0][1] and geom[0][0] < t_first_image,
          f"geometry built at the start, {t_first_image - geom[0][0] if geom else float('nan'):.2f} s before the "
          f"first image: {geom[0][1].strip() if geom else None}")
    err = "".join(l for _, l in lines)
    check("frames_analysed=3" in err and "frames_failed" not in err.split("counters:")[-1],
          "the three images analysed with it")
    # with the start's pixel mask: the totals are the simulator's sums over unmasked pixels
    with open(man) as f:
        want = {m["image_id"]: m["sum"] for m in map(json.loads, f)}
    files = [p for p in os.listdir(out) if p.endswith(".h5")]
    got = {}
    if files:
        with h5py.File(os.path.join(out, files[0]), "r") as f:
            got = dict(zip(f["/entry/scan/image_id"][()].tolist(), f["/entry/features/sum"][()].tolist()))
    check(got and got == {k: float(v) for k, v in want.items()},
          f"its totals leave out the masked pixels, as the simulator's manifest: {got} vs {want}")


if __name__ == "__main__":
    run(main)
