"""Adaptive scanning closes the loop: roid's "scan here" feedback is enough for a
scan controller to measure only what matters at a finer step.

1. roid-sim rasters the phantom coarsely (24 x 24, snake, motor origin and step
   in um, announced in the start message) into the daemon; a subscriber keeps
   every scan_here message.
2. The final rescan lattice (rescan_factor 2), its boxes and the online skip
   lists are checked against the phantom's ground truth, computed here from the
   truth file's geometry at every point of the fine lattice with the rule of the
   truth file's own masks (a probe position touches the object when an object
   pixel lies within R90 of the probe centre; the file's coarse object_mask
   checks that computation), and "on the object" (the probe centre is).
3. A second series measures exactly the rescan positions (roid-sim --positions:
   one image per position, rendered where it was taken, the start message
   announcing the fine lattice as the scan grid); roid must analyse it on the
   fine grid, every image at its own point, and its RoI must cover the object.

Twice: with the daemon's default border 0 (a tight rescan) and border 1 (a
margin of one step: every point touching the object, more background).  The
bounds are fractions computed from the truth, not results of roid."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import h5py
import msgpack
import numpy as np
import zmq

from roidtest import CHILDREN, check, failures, finish, free_port, run, typed

ROID = os.environ["ROID"]
SIM = os.environ["ROID_SIM"]
NY = NX = 24
N = 64  # detector frame, pixels
STEP_PX = 8  # phantom scan step in object pixels: the fine lattice's quarter steps are whole pixels
ORIGIN = (-3.0, 1.5)  # um
STEP = (0.25, 0.2)  # um: x, y differ so that a swapped axis shows
UNITS = "um"
FACTOR = 2
PHANTOM = f"seed=3,step={STEP_PX}"


def c_round(v):
    """C's round(): halves away from zero."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def touch_map(t):
    """Object pixels (oh x ow) within R90 of an object pixel: the probe centres at which
    the probe meets the object (membership >= 0.5 is inside the ellipses and discs)."""
    oh, ow = t["object_shape"]
    yy, xx = np.mgrid[0:oh, 0:ow].astype(np.float64)
    inside = np.zeros((oh, ow), bool)
    for e in t["main"]["ellipses"]:
        c, s = np.cos(e["angle"]), np.sin(e["angle"])
        dx, dy = xx - e["x"], yy - e["y"]
        inside |= np.hypot((dx * c + dy * s) / e["a"], (-dx * s + dy * c) / e["b"]) <= 1
    for d in t["particles"]:
        inside |= np.hypot(xx - d["x"], yy - d["y"]) <= d["radius"]
    r = t["probe_radius_px"]
    out = np.zeros_like(inside)
    k = int(np.ceil(r))
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            if np.hypot(dx, dy) > r:
                continue
            out[max(dy, 0):oh + min(dy, 0), max(dx, 0):ow + min(dx, 0)] |= \
                inside[max(-dy, 0):oh + min(-dy, 0), max(-dx, 0):ow + min(-dx, 0)]
    return out


def truth_at(touch, t, u, v):
    """On the object at scan coordinates (u = column, v = row, in coarse steps, any
    fraction): the phantom renders the probe at round(u * step) pixels, clamped to its field."""
    s, half = t["step_px"], t["rows"] // 2
    ox = np.clip(c_round(np.asarray(u) * s), 0, (t["nx"] - 1) * s).astype(int) + half
    oy = np.clip(c_round(np.asarray(v) * s), 0, (t["ny"] - 1) * s).astype(int) + half
    return touch[oy, ox]


def dilate(mask, k):
    out = mask.copy()
    ny, nx = mask.shape
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            out[max(dy, 0):ny + min(dy, 0), max(dx, 0):nx + min(dx, 0)] |= \
                mask[max(-dy, 0):ny + min(-dy, 0), max(-dx, 0):nx + min(-dx, 0)]
    return out


def acquisition_rank(ny, nx, snake):
    """rank[row, col] = image number of the raster point (x fast)."""
    rank = np.arange(ny * nx).reshape(ny, nx)
    if snake:
        rank[1::2] = rank[1::2, ::-1]
    return rank


def collect(sub, series_id, timeout):
    """Every scan_here, map and series message of one series until its final map and end, and
    whatever of it follows within 0.5 s (a second final message would be a defect)."""
    got = {"scan_here": [], "map": [], "series": []}
    t0 = time.time()
    done = None
    while time.time() - t0 < timeout and (done is None or time.time() < done):
        if not sub.poll(100):
            continue
        topic, body = sub.recv_multipart()
        b = msgpack.unpackb(body, raw=False)
        if topic.decode() not in got or b["series_id"] != series_id:
            continue
        got[topic.decode()].append(b)
        if done is None and any(m["final"] for m in got["map"]) and any(m["final"] for m in got["scan_here"]) and \
                any(m["event"] == "end" for m in got["series"]):
            done = time.time() + 0.5
    return got


def fine_truth(t, touch):
    """Truth at every point of the fine lattice (FACTOR x FACTOR points per coarse step)."""
    fr, fc = np.mgrid[0:NY * FACTOR, 0:NX * FACTOR]
    return truth_at(touch, t, (fc + 0.5) / FACTOR - 0.5, (fr + 0.5) / FACTOR - 0.5)


def check_coarse(fb, coarse, t, truths, border, lim):
    """The final scan_here of the coarse raster against the truth; returns the rescan
    points (motor units) and the fine lattice's origin and step."""
    obj = np.array(t["object_mask"], bool)
    main_mask = np.array(t["main_mask"], bool)
    F, Fcore, Fmain = truths
    mask = typed(fb["mask"]).astype(bool)
    check(fb["motor"] and fb["units"] == UNITS and np.allclose(fb["step"], STEP),
          f"feedback in motor units: motor {fb['motor']}, units {fb['units']!r}, step {fb['step']}")
    check(np.allclose(fb["rescan_step"], [STEP[0] / FACTOR, STEP[1] / FACTOR]),
          f"rescan step {fb['rescan_step']} = step / {FACTOR}")
    iou = (mask & obj).sum() / max((mask | obj).sum(), 1)
    print(f"# coarse RoI (border {border}): {mask.sum()} points, object {obj.sum()}, IoU {iou:.3f}")

    # Boxes: motor coordinates of their corner points, and every RoI point in one.
    inbox = np.zeros_like(mask)
    box_ok = True
    for b in fb["boxes"]:
        inbox[b["row0"]:b["row1"] + 1, b["col0"]:b["col1"] + 1] = True
        want = (ORIGIN[0] + b["col0"] * STEP[0], ORIGIN[1] + b["row0"] * STEP[1], ORIGIN[0] + b["col1"] * STEP[0],
                ORIGIN[1] + b["row1"] * STEP[1])
        box_ok &= np.allclose((b["x0"], b["y0"], b["x1"], b["y1"]), want, atol=1e-9)
    check(box_ok and mask.any() and not (mask & ~inbox).any() and sum(b["points"] for b in fb["boxes"]) == mask.sum(),
          f"{len(fb['boxes'])} boxes hold the {mask.sum()} RoI points, corners at origin + index * step (um)")
    check((main_mask & ~inbox).sum() == 0, "the boxes contain the main particle")

    # The rescan lattice: on the fine grid (origin - step/4, step/2) in motor units ...
    rs = typed(fb["rescan"])
    f_origin = [ORIGIN[i] - STEP[i] * (FACTOR - 1) / (2 * FACTOR) for i in (0, 1)]
    f_step = [STEP[i] / FACTOR for i in (0, 1)]
    kc = (rs[:, 0] - f_origin[0]) / f_step[0]
    kr = (rs[:, 1] - f_origin[1]) / f_step[1]
    on_lattice = len(rs) > 0 and max(np.abs(kc - np.round(kc)).max(), np.abs(kr - np.round(kr)).max()) < 1e-6
    check(on_lattice and not fb["rescan_truncated"],
          f"{len(rs)} rescan points lie on the fine lattice origin {f_origin}, step {f_step} (um)")
    kc, kr = np.round(kc).astype(int), np.round(kr).astype(int)
    fny, fnx = NY * FACTOR, NX * FACTOR
    inside = (kc >= 0) & (kc < fnx) & (kr >= 0) & (kr < fny)
    R = np.zeros((fny, fnx), bool)
    R[kr[inside], kc[inside]] = True
    check(inside.all() and R.sum() == len(rs), "rescan points are distinct and inside the scanned field")
    # ... exactly the fine points of the grown RoI's cells (feedback.h: c = floor((k + 1/2) / f))
    check(np.array_equal(R, np.kron(mask, np.ones((FACTOR, FACTOR), bool))),
          f"the rescan lattice is {FACTOR} x {FACTOR} fine points per RoI point, none elsewhere")

    # Against the truth at every fine point.
    cover, core, cmain = ((R & X).sum() / X.sum() for X in (F, Fcore, Fmain))
    bg_in = (R & ~F).sum() / R.sum()
    bg_left = 1 - (R & ~F).sum() / (~F).sum()
    print(f"# fine lattice {fny}x{fnx}: {F.sum()} points touch the object, on it {Fcore.sum()}, "
          f"touch the main particle {Fmain.sum()}; background {(~F).sum() / F.size:.3f} of the lattice")
    print(f"# rescan {R.sum()} points = {R.sum() / R.size:.3f} of the lattice; covers {cover:.3f} of the points "
          f"touching the object, {core:.3f} of those on it, {cmain:.3f} of the main particle's; "
          f"{bg_in:.3f} of it is background ({(R & ~F).sum() / R.size:.3f} of the lattice); "
          f"{bg_left:.3f} of the background left out")
    check(core >= 0.99 and cmain >= 0.99, f"the rescan covers every fine point on the object ({core:.3f}) and "
          f"touching the main particle ({cmain:.3f}) (>= 0.99)")
    # The bounds are margins from an ideal rescan: the true coarse object mask, grown by the border,
    # 2 x 2 fine points per point (what a perfect classification would ask for).
    ideal = np.kron(dilate(obj, border), np.ones((FACTOR, FACTOR), bool))
    i_cover, i_bg_in = (ideal & F).sum() / F.sum(), (ideal & ~F).sum() / ideal.sum()
    i_bg_left = 1 - (ideal & ~F).sum() / (~F).sum()
    print(f"# ideal rescan (the true object, border {border}): covers {i_cover:.3f}, {i_bg_in:.3f} background, "
          f"{i_bg_left:.3f} of the background left out")
    check(cover >= i_cover - lim["cover"], f"the rescan covers {cover:.3f} of the fine points touching the object "
          f"(>= ideal {i_cover:.3f} - {lim['cover']})")
    check(bg_left >= i_bg_left - lim["bg_left"], f"the rescan leaves out {bg_left:.3f} of the background "
          f"(>= ideal {i_bg_left:.3f} - {lim['bg_left']})")
    check(bg_in <= i_bg_in + lim["bg_in"], f"background is {bg_in:.3f} of the rescan "
          f"(<= ideal {i_bg_in:.3f} + {lim['bg_in']})")

    # Skip lists while the raster ran: only unmeasured points, never next to the published
    # RoI, never within 2 steps of a measured point with the probe centred on the main particle.
    # A point whose probe only touches its edge gives a weak signal, and at the scan front its
    # 3x3 mean lacks the row ahead: the online RoI may take it only once that row is measured
    # (seen once in ~100 runs: an edge point measured 4 frames before the update).
    rank = acquisition_rank(NY, NX, True).ravel()
    rows, cols = np.mgrid[0:NY, 0:NX]
    main_core = truth_at(touch_map(dict(t, probe_radius_px=0, particles=[])), t, cols, rows)
    online = [m for m in coarse["scan_here"] if not m["final"] and m["updates"] > 0]
    skipped = set()
    measured = near_mask = near_main = near_edge = on_bg = pairs = 0
    why_main = []
    for m in online:
        sk = typed(m["skip"]).astype(int)
        meas = (rank < m["frames"]).reshape(NY, NX)
        measured += int(meas.ravel()[sk].sum())
        near_mask += int(dilate(typed(m["mask"]).astype(bool), 1).ravel()[sk].sum())
        bad = dilate(main_core & meas, 2).ravel()[sk]
        near_main += int(bad.sum())
        near_edge += int(dilate(main_mask & meas, 2).ravel()[sk].sum()) - int(bad.sum())
        if bad.any():  # the measured main-particle points the update's RoI left out
            out = main_core & meas & ~typed(m["mask"]).astype(bool)
            why_main.append(f"update {m['updates']} at frame {m['frames']}: skip {sk[bad].tolist()}, "
                            f"main particle's measured points outside its RoI {np.flatnonzero(out).tolist()}")
        on_bg += int((~dilate(obj, 1)).ravel()[sk].sum())
        pairs += len(sk)
        skipped.update(sk.tolist())
    print(f"# {len(online)} online updates offered {pairs} skips of {len(skipped)} distinct points; "
          f"{on_bg / max(pairs, 1):.3f} of them more than a step from the object; {near_edge} within 2 steps of "
          f"a measured point only touching the main particle")
    check(len(online) >= 3 and len(skipped) > 0, f"online updates offered points to skip ({len(skipped)})")
    check(measured == 0 and near_mask == 0, f"skip never lists a measured point ({measured}) nor one next to "
          f"that update's RoI ({near_mask})")
    check(main_core.sum() > 20 and near_main == 0, f"skip never lists a point within 2 steps of a measured point "
          f"centred on the main particle ({near_main}; {main_core.sum()} such points)"
          + "".join(f"\n     | {w}" for w in why_main))
    check(len(typed(fb["skip"])) == 0, "nothing left to skip once every point is measured")
    return rs, R, f_origin, f_step


def check_fine(fine, end, R, truths, f_origin, f_step, lim):
    """The second series, at the rescan positions only."""
    F, Fcore, _ = truths
    fm = [m for m in fine["map"] if m["final"]][-1]
    g = end["grid"]
    check((fm["ny"], fm["nx"]) == R.shape and g["source"] == "series" and np.allclose(g["origin"], f_origin) and
          np.allclose(g["step"], f_step) and g["units"] == UNITS,
          f"the fine series is analysed on the announced {fm['ny']}x{fm['nx']} grid {g['origin']} + {g['step']}")
    counts = typed(fm["counts"])
    check(end["frames_analysed"] == R.sum() and end["frames_dropped"] == 0,
          f"{end['frames_analysed']} frames analysed, {end['frames_dropped']} dropped")
    check(np.array_equal(counts > 0, R) and counts.max() == 1, "each image sits at its own fine point, none elsewhere")
    roi = typed(fm["roi"]).astype(bool)
    core = (roi & R & Fcore).sum() / (R & Fcore).sum()
    touch = (roi & R & F).sum() / (R & F).sum()
    bg = (roi & ~F).sum() / max(roi.sum(), 1)
    print(f"# fine RoI {roi.sum()} points: {core:.3f} of the measured points on the object, {touch:.3f} of those "
          f"touching it; {bg:.3f} of it background ({(R & ~F).sum()} background points measured)")
    check(core >= 0.95, f"the fine RoI covers the object: {core:.3f} of the measured points on it (>= 0.95)")
    check(bg <= lim["fine_bg"], f"background is {bg:.3f} of the fine RoI (<= {lim['fine_bg']})")
    check(not (roi & ~R).any(), "the fine RoI holds measured points only")
    if end["results_file"] and os.path.exists(end["results_file"]):
        with h5py.File(end["results_file"], "r") as f:
            check(np.array_equal(f["/entry/roi/mask"][()].astype(bool), roi),
                  "the results file's RoI is the published one")
            a = f["/entry"].attrs
            units = a["scan_units"].decode() if isinstance(a["scan_units"], bytes) else a["scan_units"]
            check(np.allclose(a["scan_origin"], f_origin) and np.allclose(a["scan_step"], f_step) and units == UNITS,
                  f"the results file names the fine grid: origin {list(a['scan_origin'])}, step "
                  f"{list(a['scan_step'])}, units {units!r}")
    else:
        check(False, f"the fine series has a results file ({end['results_file']})")


def loop(border, lim):
    """The daemon, a coarse raster, its feedback, a fine scan of only what it asked for."""
    print(f"# ---- border {border}")
    tmp = tempfile.mkdtemp(prefix="roid-adaptive-")
    det, pub = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    conf = os.path.join(tmp, "roid.conf")
    with open(conf, "w") as f:
        f.write(f"[feedback]\nrescan_factor = {FACTOR}\n")
    roid = subprocess.Popen([ROID, "--config", conf, "--detector", det, "--publish", pub, "--output-dir", tmp,
                             "--map-interval", "0.05", "--status-interval", "0.05", "--border", str(border),
                             "--series", "2", "--idle-timeout", "60"], stderr=subprocess.PIPE, text=True)
    CHILDREN.append(roid)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    for t in (b"status", b"scan_here", b"map", b"series"):
        sub.setsockopt(zmq.SUBSCRIBE, t)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(pub)
    t0 = time.time()
    while time.time() - t0 < 20:  # the subscription is in place once status arrives
        if sub.poll(200) and sub.recv_multipart()[0] == b"status":
            break

    # 1. the coarse raster, paced so that the feedback is updated while it runs
    truth_path = os.path.join(tmp, "truth.json")
    scan = f"{NY}x{NX},snake,origin={ORIGIN[0]}:{ORIGIN[1]},step={STEP[0]}:{STEP[1]},units={UNITS}"
    common = [SIM, "--endpoint", det, "--shape", f"{N}x{N}", "--dtype", "uint32", "--scan", scan, "--quiet"]
    sim = subprocess.Popen([*common, "--source", f"phantom:{PHANTOM},truth={truth_path}", "--series-id", "1",
                            "--rate", "1500"])
    CHILDREN.append(sim)
    coarse = collect(sub, 1, 40)
    check(sim.wait(30) == 0, "roid-sim streamed the coarse raster")
    with open(truth_path) as f:
        t = json.load(f)
    touch = touch_map(t)
    rows, cols = np.mgrid[0:NY, 0:NX]
    check(np.array_equal(truth_at(touch, t, cols, rows), np.array(t["object_mask"], bool)),
          "the truth computed here at the coarse points equals the truth file's object_mask")
    truths = (fine_truth(t, touch), fine_truth(t, touch_map(dict(t, probe_radius_px=0))),
              fine_truth(t, touch_map(dict(t, particles=[]))))
    fins = [m for m in coarse["scan_here"] if m["final"]]
    check(len(fins) == 1, f"one final scan_here for the coarse series ({len(coarse['scan_here'])} in all)")
    if not fins:
        return
    rs, R, f_origin, f_step = check_coarse(fins[-1], coarse, t, truths, border, lim)

    # 2. the fine scan of exactly the rescan positions, announced as the fine lattice
    pos_path = os.path.join(tmp, "rescan.json")
    with open(pos_path, "w") as f:
        json.dump(rs.tolist(), f)
    announce = {"scan": {"shape": list(R.shape), "origin": f_origin, "step": f_step, "units": UNITS}}
    sim = subprocess.Popen([*common, "--source", f"phantom:{PHANTOM}", "--series-id", "2", "--positions", pos_path,
                            "--image-user-data", '{"position":[0,0]}', "--user-data", json.dumps(announce)])
    CHILDREN.append(sim)
    fine = collect(sub, 2, 40)
    check(sim.wait(30) == 0, f"roid-sim streamed {len(rs)} images at the rescan positions")
    rc, log = finish(roid, 30)
    check(rc == 0, f"roid exited 0 after the two series ({rc})")
    ends = [m for m in fine["series"] if m["event"] == "end"]
    if not any(m["final"] for m in fine["map"]) or not ends:
        check(False, "final map and end of the fine series")
        print(log[-3000:], file=sys.stderr)
        return
    check_fine(fine, ends[-1], R, truths, f_origin, f_step, lim)
    sub.close(0)
    ctx.term()
    if not failures:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    t0 = time.time()
    # cover, bg_left, bg_in: how far the rescan may fall short of the ideal one (check_coarse)
    # the daemon's default border: tight around the object
    loop(0, {"cover": 0.05, "bg_left": 0.15, "bg_in": 0.2, "fine_bg": 0.05})
    # a margin of one step: every point touching the object, at the cost of more background
    loop(1, {"cover": 0.05, "bg_left": 0.15, "bg_in": 0.2, "fine_bg": 0.35})
    print(f"# {time.time() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    run(main)
