#!/usr/bin/python3
"""Independent numpy reference for roid's per-frame features (test_features.c).

Usage: features_ref.py DIR
DIR/manifest.txt has one case a line:
    name dtype rows cols center_x center_y n_segments r_bf r_df_in r_df_out has_mask
with DIR/name.frame (raw native-endian pixels, row-major) and, if has_mask,
DIR/name.mask (uint32).  Writes DIR/name.ref: one "key value" a line.

The features follow the convention documented in daemon/features/features.h,
computed here from scratch with numpy (np.arctan2 for the azimuth).
"""
import sys
import os
import numpy as np

DT = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}


def segments(dx, dy, S):
    if S == 1:
        return np.zeros(dx.shape, dtype=np.int64)
    phi = np.arctan2(dy, dx)
    t = phi / (2 * np.pi)
    t = np.where(t < 0, t + 1.0, t)
    s = np.floor(t * S)
    s = np.where(s >= S, S - 1, s).astype(np.int64)
    # Pixels on the axes and diagonals sit at exact multiples of pi/4: give
    # them the exact segment instead of whatever rounding atan2 did.
    eighth = np.full(dx.shape, -1, dtype=np.int64)
    diag = dx == dy
    anti = dx == -dy
    eighth[anti & (dy < 0)] = 7
    eighth[anti & (dy > 0)] = 3
    eighth[diag & (dx < 0)] = 5
    eighth[diag & (dx > 0)] = 1
    eighth[(dx == 0) & (dy < 0)] = 6
    eighth[(dx == 0) & (dy > 0)] = 2
    eighth[(dy == 0) & (dx < 0)] = 4
    eighth[(dy == 0) & (dx >= 0)] = 0
    exact = eighth >= 0
    s[exact] = (eighth[exact] * S) // 8
    return s


def exact_sum(a):
    """Exact integer sum of a uint64 array as a Python int (row sums cannot
    overflow for the test frames; the total is taken in Python ints)."""
    a = np.atleast_2d(a)
    return sum(int(v) for v in a.sum(axis=1, dtype=np.uint64))


def features(frame, mask, cx, cy, S, rbf, rin, rout):
    rows, cols = frame.shape
    maxv = np.iinfo(frame.dtype).max
    excl = frame == maxv
    n_static = 0
    if mask is not None:
        excl = excl | (mask != 0)
        n_static = int((mask != 0).sum())
    saturated = int(((frame == maxv) & ~(mask != 0 if mask is not None else False)).sum())
    yy, xx = np.mgrid[0:rows, 0:cols]
    dx = xx.astype(np.float64) - cx
    dy = yy.astype(np.float64) - cy
    seg = segments(dx, dy, S)
    d2 = dx * dx + dy * dy
    bf = d2 < rbf * rbf
    df = (d2 >= rin * rin) & (d2 < rout * rout)
    val = np.where(excl, 0, frame).astype(np.uint64)
    X = xx.astype(np.uint64)
    Y = yy.astype(np.uint64)
    out = {}
    T = exact_sum(val)
    SX = exact_sum(val * X)
    SY = exact_sum(val * Y)
    out["total"] = T
    out["com_x"] = SX / T if T else cx
    out["com_y"] = SY / T if T else cy
    out["bf"] = exact_sum(np.where(bf, val, 0))
    out["df"] = exact_sum(np.where(df, val, 0))
    out["masked"] = int(excl.sum())
    out["saturated"] = saturated
    out["n_pixels"] = rows * cols - int(excl.sum())
    out["static_masked"] = n_static
    for s in range(S):
        sel = seg == s
        v = np.where(sel, val, 0)
        t = exact_sum(v)
        sx = exact_sum(v * X)
        sy = exact_sum(v * Y)
        out["seg%d_sum" % s] = t
        out["seg%d_com_x" % s] = sx / t if t else cx
        out["seg%d_com_y" % s] = sy / t if t else cy
        out["seg%d_pixels" % s] = int((sel & ~(mask != 0 if mask is not None else np.zeros_like(sel))).sum())
    return out


def main():
    d = sys.argv[1]
    with open(os.path.join(d, "manifest.txt")) as f:
        for line in f:
            w = line.split()
            if not w:
                continue
            name, dtype = w[0], DT[w[1]]
            rows, cols = int(w[2]), int(w[3])
            cx, cy = float(w[4]), float(w[5])
            S = int(w[6])
            rbf, rin, rout = float(w[7]), float(w[8]), float(w[9])
            has_mask = w[10] == "1"
            frame = np.fromfile(os.path.join(d, name + ".frame"), dtype=dtype).reshape(rows, cols)
            mask = None
            if has_mask:
                mask = np.fromfile(os.path.join(d, name + ".mask"), dtype=np.uint32).reshape(rows, cols)
            out = features(frame, mask, cx, cy, S, rbf, rin, rout)
            with open(os.path.join(d, name + ".ref"), "w") as o:
                for k, v in out.items():
                    o.write("%s %s\n" % (k, repr(v) if isinstance(v, float) else str(v)))


if __name__ == "__main__":
    main()
