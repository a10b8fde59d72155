"""The scan grid from the configuration (issue 3): a series whose start
message carries no scan description is placed on the grid of [scan] shape /
--scan, with snake and fast axis honoured; a series that does carry one keeps
its own (the series knows best what was scanned)."""
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np

from roidtest import check, failures, free_port

ROID = os.environ["ROID"]
SIM = os.environ["ROID_SIM"]


def record(tmp, name, extra):
    port = free_port()
    cap = os.path.join(tmp, name + ".cap")
    rec = subprocess.Popen([ROID, "record", f"tcp://127.0.0.1:{port}", cap, "--series", "1", "--idle-timeout", "60"])
    subprocess.run([SIM, "--endpoint", f"tcp://127.0.0.1:{port}", "--shape", "32x32", "--quiet"] + extra,
                   check=True, timeout=120)
    assert rec.wait(timeout=120) == 0
    return cap


def replay(tmp, cap, name, opts):
    out = os.path.join(tmp, name)
    os.mkdir(out)
    subprocess.run([ROID, "replay", "--output-dir", out, "--segments", "1"] + opts + [cap], check=True,
                   timeout=120, capture_output=True)
    (path,) = [os.path.join(out, p) for p in os.listdir(out) if p.endswith(".h5")]
    f = h5py.File(path, "r")
    return f


def raster(ny, nx, snake, fast_y):
    """Expected (row, col) of image k, written independently of roid."""
    out = []
    for k in range(ny * nx):
        if fast_y:
            line, pos = divmod(k, ny)
            if snake and line % 2:
                pos = ny - 1 - pos
            out.append((pos, line))
        else:
            line, pos = divmod(k, nx)
            if snake and line % 2:
                pos = nx - 1 - pos
            out.append((line, pos))
    return np.array(out)


def main():
    tmp = tempfile.mkdtemp(prefix="roid-scancfg-")
    plain = record(tmp, "plain", ["--frames", "60"])
    conf = os.path.join(tmp, "scan.conf")
    with open(conf, "w") as f:
        f.write("[scan]\nshape = 6x10\nsnake = true\nfast_axis = y\n")
    with replay(tmp, plain, "a", ["--config", conf]) as f:
        idx = f["/entry/scan/index"][()]
        ids = f["/entry/scan/image_id"][()]
        want = raster(6, 10, True, True)[ids]
        check(np.array_equal(idx, want), "config grid 6x10, snake, fast axis y: every image at its raster point")
        check(f["/entry"].attrs["scan_source"] in (b"config", "config"), "scan_source attribute says config")
        check(f["/entry/roi/mask"].shape == (6, 10), "maps have the configured shape")
    with replay(tmp, plain, "b", ["--scan", "5x12"]) as f:
        idx = f["/entry/scan/index"][()]
        check(np.array_equal(idx, raster(5, 12, False, False)[f["/entry/scan/image_id"][()]]),
              "--scan 5x12 on the command line: plain raster")
    with replay(tmp, plain, "c", []) as f:
        check(f["/entry/roi/mask"].shape == (1, 60), "no grid anywhere: a 1 x N line")
    own = record(tmp, "own", ["--scan", "4x8"])
    with replay(tmp, own, "d", ["--scan", "6x10"]) as f:
        check(f["/entry/roi/mask"].shape == (4, 8) and f["/entry"].attrs["scan_source"] in (b"series", "series"),
              "a series with its own scan description keeps it over the configuration")
    bad = subprocess.run([ROID, "replay", "--scan", "0x5", plain], capture_output=True, text=True)
    check(bad.returncode == 2 and "[scan] shape" in bad.stderr, "a bad --scan is refused naming [scan] shape: " +
          bad.stderr.strip().splitlines()[-1])
    if failures:
        print(f"{len(failures)} failures")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
