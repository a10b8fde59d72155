#!/usr/bin/python3
"""The numpy baseline of tools/bench: the per-frame features roid computes
(total T, centre of mass, S azimuthal segment sums and centres of mass,
bright-field and dark-field sums, pixel mask and saturated pixels excluded)
written the way a Python user would, vectorised over each frame, on the
frames roid-bench dumped (roid-bench --dump DIR).

Before timing, the features of the first frame are checked against roid's
(DIR/cases.jsonl); a mismatch is an error, so the two compute the same thing.

Usage: bench_numpy.py DIR [--seconds S] [--reps N]
Prints one JSON object a line: {"row": "numpy", "shape", "segments",
"frames_per_s", "gb_per_s", "stat", "checked"}.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

DT = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}


class Features:
    """What a user precomputes once per geometry, then applies per frame."""

    def __init__(self, rows, cols, dtype, mask, cx, cy, S, r_bf, r_in, r_out):
        y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
        dx, dy = x - cx, y - cy
        t = np.arctan2(dy, dx) / (2 * np.pi)
        t = np.where(t < 0, t + 1.0, t)
        self.S = S
        self.seg = np.minimum(np.floor(t * S).astype(np.intp), S - 1).ravel()
        d2 = dx * dx + dy * dy
        self.bf = (d2 < r_bf * r_bf).ravel()
        self.df = ((d2 >= r_in * r_in) & (d2 < r_out * r_out)).ravel()
        self.good = (mask == 0).ravel()
        self.x, self.y = x.ravel(), y.ravel()
        self.maxv = np.iinfo(dtype).max
        self.cx, self.cy = cx, cy

    def __call__(self, frame):
        f = frame.ravel()
        v = np.where(self.good & (f != self.maxv), f, 0).astype(np.float64)
        vx, vy = v * self.x, v * self.y
        T = v.sum()
        seg_sum = np.bincount(self.seg, weights=v, minlength=self.S)
        seg_x = np.bincount(self.seg, weights=vx, minlength=self.S)
        seg_y = np.bincount(self.seg, weights=vy, minlength=self.S)
        with np.errstate(invalid="ignore", divide="ignore"):
            seg_cx = np.where(seg_sum > 0, seg_x / seg_sum, self.cx)
            seg_cy = np.where(seg_sum > 0, seg_y / seg_sum, self.cy)
        return {
            "total": T,
            "com_x": vx.sum() / T if T else self.cx,
            "com_y": vy.sum() / T if T else self.cy,
            "bf": v[self.bf].sum(),
            "df": v[self.df].sum(),
            "seg_sum": seg_sum,
            "seg_com_x": seg_cx,
            "seg_com_y": seg_cy,
        }


def check(got, want, what):
    for k in ("total", "com_x", "com_y", "bf", "df", "seg_sum", "seg_com_x", "seg_com_y"):
        a = np.asarray(got[k], dtype=np.float64)
        b = np.asarray(want[k], dtype=np.float64)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-9, atol=0):
            raise SystemExit("bench_numpy: %s: %s differs from roid's: numpy %s, roid %s" % (what, k, a, b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement, all repetitions")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; the best counts")
    a = ap.parse_args()
    with open(os.path.join(a.dir, "cases.jsonl")) as fh:
        cases = [json.loads(line) for line in fh if line.strip()]
    for c in cases:
        dt = DT[c["dtype"]]
        rows, cols, n = c["rows"], c["cols"], c["frames"]
        frames = np.fromfile(os.path.join(a.dir, c["name"] + ".frames"), dtype=dt).reshape(n, rows, cols)
        mask = np.fromfile(os.path.join(a.dir, c["name"] + ".mask"), dtype=np.uint32).reshape(rows, cols)
        for S in (1, 8):
            feat = Features(rows, cols, dt, mask, c["center_x"], c["center_y"], S, c["r_bf"], c["r_df_in"],
                            c["r_df_out"])
            check(feat(frames[0]), c["features"][str(S)], "%s S=%d" % (c["name"], S))
            best = 0.0
            for _ in range(a.reps):
                i, t0 = 0, time.perf_counter()
                while True:
                    feat(frames[i % n])
                    i += 1
                    t = time.perf_counter() - t0
                    if t >= a.seconds / a.reps:
                        break
                best = max(best, i / t)
            print(json.dumps({"row": "numpy", "shape": c["name"], "dtype": c["dtype"], "segments": S,
                              "frames_per_s": round(best, 2), "gb_per_s": round(best * frames[0].nbytes / 1e9, 4),
                              "stat": "best of %d" % a.reps, "checked": True, "numpy": np.__version__}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
