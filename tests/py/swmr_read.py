#!/usr/bin/python3
"""Reads a roid results file the way a live client does (h5py, SWMR) and
prints what it finds, one "key value..." line each, for tests/c/test_writer.c.

  swmr_read.py summary PATH [--plain]   one look at the file (--plain: a normal,
                                         non-SWMR open, as after the writer closed)
  swmr_read.py follow PATH              opens once; for every line on stdin,
                                         refreshes and prints "rows N frames F final X"

Everything checked here is recomputed from the file's own per-frame data
(index, image_id) and maps with numpy, independently of the writer's code.
"""
import sys

import h5py
import numpy as np

UNSEEN = 255


def open_file(path, plain):
    if plain:
        return h5py.File(path, "r")
    return h5py.File(path, "r", libver="latest", swmr=True)


def summary(path, plain):
    try:
        f = open_file(path, plain)
    except OSError as e:
        print("open_error", str(e).replace("\n", " "))
        return
    print("open ok")
    e = f["/entry"]
    # text attributes are UTF-8 strings, which h5py returns as str (bytes would print as b'...')
    print("nx_class", *(f[g].attrs["NX_class"] for g in
                        ("/entry", "/entry/features", "/entry/scan", "/entry/roi", "/entry/clusters",
                         "/entry/counters")))
    s = e["features/sum"][()]
    print("rows", len(s))
    print("sum", *(float(v).hex() for v in s))
    ids = e["scan/image_id"][()]
    idx = e["scan/index"][()]
    print("scan_rows", len(ids), len(idx), len(e["scan/position"]), len(e["features/com"]),
          len(e["features/segment_sum"]), len(e["features/segment_com"]), len(e["features/bf"]),
          len(e["features/df"]))
    print("image_id_seq", int(np.array_equal(ids, np.arange(len(ids)))))
    print("final", int(e["roi/final"][()]))
    print("frames", int(e["roi/frames"][()]))
    mask = e["roi/mask"][()]
    ny, nx = mask.shape
    print("mask_sum", int(mask.astype(np.int64).sum()))
    # Frames whose grid point is in the mask, and per-frame cluster labels,
    # from the file's own index.
    placed = (idx[:, 0] < ny) & (idx[:, 1] < nx)
    r, c = np.where(placed, idx[:, 0], 0), np.where(placed, idx[:, 1], 0)
    # frames without counts measured nothing and are not listed
    lit = e["features/sum"][()] > 0
    want_ids = np.sort(ids[placed & (mask[r, c] != 0) & lit])
    got_ids = np.sort(e["roi/image_ids"][()])
    print("n_image_ids", len(got_ids))
    print("image_ids_ok", int(np.array_equal(want_ids, got_ids)))
    pl = e["clusters/point_labels"][()]
    want_lab = np.where(placed, pl[r, c], UNSEEN)
    lab = e["clusters/labels"][()]
    print("labels_ok", int(len(lab) == len(ids) and np.array_equal(lab, want_lab)))
    print("labels_rows", len(lab))
    cen = e["clusters/centroids"][()]
    print("centroids", *cen.shape, int(np.isfinite(cen).all()))
    print("complete", int(e["counters"].attrs["complete"]))
    for k, v in e["counters"].attrs.items():
        if k not in ("NX_class", "complete"):
            print("counter", k, int(v))
    cfg = e.attrs.get("configuration")
    print("config", "none" if cfg is None else cfg.replace("\n", "\\n"))
    f.close()


def follow(path):
    f = open_file(path, False)
    e = f["/entry"]
    sets = (e["features/sum"], e["scan/image_id"], e["roi/frames"], e["roi/final"])
    for _ in sys.stdin:
        for d in sets:
            d.refresh()
        print("rows", len(sets[0]), "frames", int(sets[2][()]), "final", int(sets[3][()]), flush=True)
    f.close()


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "summary":
        summary(sys.argv[2], "--plain" in sys.argv[3:])
    elif len(sys.argv) == 3 and sys.argv[1] == "follow":
        follow(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
