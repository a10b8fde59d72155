"""tools/bench --smoke: the benchmark runs from its one command and produces
every row of its tables (kernel, numpy baseline, decoding, end to end) with a
positive figure in each measured cell.  It checks the rows, never the speed.
The numpy baseline itself checks its features against roid's before timing,
so a kernel that computes something else fails here too."""
import json
import os
import re
import subprocess
import sys
import tempfile

ROID = os.environ["ROID"]
SRC = os.environ.get("ROID_SRC", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD = os.path.dirname(os.path.dirname(ROID))  # <build>/daemon/roid

SHAPES = {"1028x512": "uint16", "1030x514": "uint32", "192x192": "uint16", "96x96": "uint16"}
E2E_SHAPES = ("1028x512", "96x96")


def positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 and x == x and x != float("inf")


def main():
    checked = []
    with tempfile.TemporaryDirectory() as tmp:
        out_json = os.path.join(tmp, "rows.json")
        cmd = [os.path.join(SRC, "tools", "bench"), "--smoke", "--build-dir", BUILD, "--json", out_json]
        if os.access(os.path.join(BUILD, "tools", "roid-bench"), os.X_OK):
            cmd.append("--no-build")  # meson built it; no nested ninja in a build dir under test
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=500)
        assert p.returncode == 0, "tools/bench --smoke failed (%d):\n%s" % (p.returncode, p.stderr[-3000:])
        with open(out_json) as fh:
            rows = json.load(fh)
    table = p.stdout
    sys.stdout.write(table)

    machine = [r for r in rows if r["row"] == "machine"]
    assert len(machine) == 1 and machine[0]["cpu"] and positive(machine[0]["cores"]), machine
    assert "%d cores" % machine[0]["cores"] in table.splitlines()[0], table.splitlines()[0]
    assert machine[0]["bit_unshuffle"] in ("swar", "sse2", "avx2", "gfni"), machine
    assert "bit unshuffle %s" % machine[0]["bit_unshuffle"] in table, "the table names the bit unshuffle in use"
    checked.append("machine row: cpu and core count, in the table's title; the bit unshuffle in use, in its text")

    for shape, dtype in SHAPES.items():
        for S in (1, 8):
            k = [r for r in rows if r["row"] == "kernel" and r["shape"] == shape and r["segments"] == S]
            assert len(k) == 1, (shape, S, k)
            k = k[0]
            assert k["dtype"] == dtype and k["mask"] and k["bf_df"], k
            for f in ("frames_per_s", "gb_per_s", "read_gb_per_s", "ratio_to_read", "runs", "masked_pixels",
                      "single_frames_per_s", "frames_per_call"):
                assert positive(k[f]), (shape, S, f, k[f])
            assert abs(k["ratio_to_read"] - k["gb_per_s"] / k["read_gb_per_s"]) < 1e-3, k
            n = [r for r in rows if r["row"] == "numpy" and r["shape"] == shape and r["segments"] == S]
            assert len(n) == 1 and n[0]["checked"] is True and positive(n[0]["frames_per_s"]), (shape, S, n)
            line = "| %s | %s | %d |" % (shape, dtype, S)
            assert sum(line in ln for ln in table.splitlines()) == 1, line
            cells = [c.strip() for c in next(ln for ln in table.splitlines() if line in ln).split("|")[1:-1]]
            assert len(cells) == 10, cells
            for c in cells[3:]:
                assert positive(float(c.replace(",", "").rstrip("x"))), (line, c)
        for codec in ("bslz4", "lz4"):
            d = [r for r in rows if r["row"] == "decode" and r["shape"] == shape and r["codec"] == codec]
            assert len(d) == 1, (shape, codec, d)
            for f in ("frames_per_s", "gb_per_s", "compression"):
                assert positive(d[0][f]), (shape, codec, f, d[0])
        # realistic frames: Poisson counts compress, but not to nothing
        assert 1.2 < [r for r in rows if r["row"] == "decode" and r["shape"] == shape][0]["compression"] < 50
        dl = [ln for ln in table.splitlines() if ln.startswith("| %s | %s | " % (shape, dtype)) and ln.count("|") == 9]
        assert len(dl) == 1, (shape, dl)
    checked.append("kernel rows: 4 shapes x S=1,8, frames/s, GB/s, read GB/s, ratio, numpy and roid/numpy > 0")
    checked.append("decode rows: bslz4 and liblz4 for the 4 shapes, frames/s, GB/s, compression > 0")

    setup = [r for r in rows if r["row"] == "e2e_setup"]
    assert len(setup) == 1, setup
    want = setup[0]["daemon_nice"]
    with open(os.path.join(SRC, "deploy", "roid.service")) as fh:
        unit_nice = re.search(r"^Nice=(-?\d+)", fh.read(), re.M)
    if os.geteuid() == 0 and unit_nice:
        assert want == int(unit_nice.group(1)), (setup, unit_nice.group(0))
    assert ("the daemon at nice %d as deploy/roid.service runs it" % want if want else
            "the daemon and the simulator at the same priority") in table, "the table says at what priority"
    checked.append("the daemon's priority: the unit's Nice= (%d) when allowed, and the table says so" % want)

    for shape in E2E_SHAPES:
        e = [r for r in rows if r["row"] == "e2e" and r["shape"] == shape]
        assert [r["daemon"] for r in e] == ["roid --workers 1", "roid --workers 2"], e
        for r in e:
            # Speed is not the smoke test's business: a rung the loaded machine
            # could not sustain still has to report what it measured.
            if "max_rate" not in r:
                ff = r.get("first_failed", {})
                assert r.get("not_measured") and positive(ff.get("frames")) and "counters" in ff, r
                # ... and the daemon's series line was understood (a change of
                # its text once made every rung "not sustained")
                assert positive(ff.get("daemon_fps")) and "decoded" in ff, ff
                continue
            assert r["decoded"] == r["frames"] and positive(r["frames"]), r
            # over the whole series, from its end message: p50 <= p99 <= max
            assert positive(r.get("p50_ms")) and r["p50_ms"] <= r.get("p99_ms") <= r.get("max_ms"), r
            label = "| %s | %s |" % (shape, r["daemon"])
            # one row in the rate table, one in the latency-by-rate table
            assert sum(label in ln for ln in table.splitlines()) == 2, label
            lat = [ln for ln in table.splitlines() if label in ln][1]
            assert len(r["ladder"]) >= 1 and all(t["rate"] > 0 for t in r["ladder"]), r
            assert lat.count("|") == 3 + len(r["ladder"]), (lat, r["ladder"])
            late = [ln for ln in table.splitlines() if "| %s | sender behind, ms (%s) |" % (shape, r["daemon"]) in ln]
            assert len(late) == 1 and late[0].count("|") == 3 + len(r["ladder"]), (late, r["ladder"])
            assert all(t["sender_late_ms"] >= 0 for t in r["ladder"]), r["ladder"]
            assert all(t["nice"] == want for t in r["ladder"]), (want, r["ladder"])  # the daemon really ran so
    checked.append("end-to-end rows: 2 shapes x 1 and 2 workers, every frame decoded at a positive rate, "
                   "latency p50 <= p99 <= max from the series end message, latency and the sender's lag at every rate of the ladder")
    for c in checked:
        print("ok: " + c)


if __name__ == "__main__":
    main()
