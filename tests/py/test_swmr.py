"""A live reader of the results file (proto/results-file.md, "Reading it live")
polls roi/final while the daemon writes a series, and the moment it reads 1
refreshes and reads the final map and roi/image_ids.  What it finds then must
be complete: every row, and as many RoI image ids as the final map's counts at
its RoI points.  The value of final used to reach the file before the flush
that wrote the extents of the datasets just grown, and a reader that started a
reconstruction on final = 1 read an empty image_ids (8 of 8 runs, found by
review).  Three series, each polled from its first moment to final = 1."""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import h5py

from roidtest import CHILDREN, check, failures, finish, free_port, run

ROID = os.environ["ROID"]
SIM = os.environ["ROID_SIM"]
NY = NX = 80


def poll_to_final(d, timeout):
    """Opens the series' file as soon as it exists and polls roi/final; on 1,
    refreshes and returns (rows, image ids, counts at RoI points, mask sum)."""
    t0 = time.time()
    path = None
    while time.time() - t0 < timeout and not path:
        found = glob.glob(os.path.join(d, "*.h5"))
        path = found[0] if found else None
        time.sleep(0.005)
    f = None
    while path and time.time() - t0 < timeout and f is None:
        try:
            f = h5py.File(path, "r", libver="latest", swmr=True)
        except OSError:
            time.sleep(0.005)
    if f is None:
        return None
    with f:
        final = f["/entry/roi/final"]
        s, ids, mask, counts = (f[k] for k in ("/entry/features/sum", "/entry/roi/image_ids", "/entry/roi/mask",
                                               "/entry/roi/counts"))
        seen = False
        while not seen and time.time() - t0 < timeout:
            for _ in range(200):  # tight: the window between the two writes was about a millisecond
                final.refresh()
                if final[()]:
                    seen = True
                    break
        if not seen:
            return None
        ids.refresh()
        s.refresh()
        n_ids, rows = ids.shape[0], s.shape[0]
        mask.refresh()
        counts.refresh()
        m = mask[()] == 1
        return rows, n_ids, int(counts[()][m].sum()), int(m.sum())


def main():
    tmp = tempfile.mkdtemp(prefix="roid-swmr-")
    for k in range(3):
        d = os.path.join(tmp, str(k))
        os.mkdir(d)
        port = free_port()
        roid = subprocess.Popen([ROID, "--detector", f"tcp://127.0.0.1:{port}", "--output-dir", d, "--series", "1",
                                 "--idle-timeout", "5", "-q"], stderr=subprocess.PIPE, text=True)
        CHILDREN.append(roid)
        sim = subprocess.Popen([SIM, "--endpoint", f"tcp://127.0.0.1:{port}", "--source", "phantom", "--shape",
                                "64x64", "--scan", f"{NY}x{NX}", "--rate", "6000", "--quiet"])
        CHILDREN.append(sim)
        got = poll_to_final(d, 60)
        sim.wait(30)
        rc, log = finish(roid, 30)
        check(rc == 0, f"series {k}: roid exited 0 ({rc})")
        if got is None:
            check(False, f"series {k}: a reader saw roi/final = 1")
            print(log[-2000:], file=sys.stderr)
            continue
        rows, ids, want, in_roi = got
        check(in_roi > 0, f"series {k}: the final mask has {in_roi} RoI points")
        check(rows == NY * NX and ids == want,
              f"series {k}: on final = 1 the reader finds all {rows} of {NY * NX} rows and {ids} RoI image ids "
              f"(the counts at the RoI points: {want})")
        # Rows a failed flush recorded without their data read as the fill values: no frame,
        # off the grid, not image 0 at grid point (0, 0).
        with h5py.File(glob.glob(os.path.join(d, "*.h5"))[0], "r") as f:
            fills = (int(f["/entry/scan/image_id"].fillvalue), int(f["/entry/scan/index"].fillvalue))
            a = f["/entry"].attrs
            link = (a["source"], a["stream_format"], int(a["number_of_images"]),
                    f["/entry/instrument/detector/detector_number"].asstr()[()])
        check(link == (f"tcp://127.0.0.1:{port}", "stream V2", NY * NX, "E-00-0000-SIM"),
              f"series {k}: the file names its source, format, images and detector {link}")
        check(fills == (2**64 - 1, 2**32 - 1), f"series {k}: image_id and index fill values {fills}: unwritten rows "
              "read as no frame, off the grid")
    if not failures:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    run(main)
