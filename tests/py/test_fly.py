"""Fly scans end to end: roid-sim streams the ptychography phantom as a fly
scan (--fly: two images per grid point, acquisition order shuffled, positions
jittered by up to 0.3 steps, a few positions off the grid) with per-image
user data {"position": [x, y]} (Stream V2 user_data; Stream V1 image appendix
JSON), `roid record` captures it, `roid replay --output-dir` analyses it.

Checked against what the test computes itself from the positions in the
capture: /entry/scan/index of every image is its position binned to the
nearest grid point (origin 0, step 1), and /entry/scan/position is the
position sent; images whose position is off the grid are counted and kept in
/entry/scan with index UINT32_MAX (as the daemon keeps them), out of the
maps; V1 and V2 give the same placement and RoI; the fly-scan RoI matches the
step-scan RoI of the same phantom."""
import datetime
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

import cbor2
import h5py
import numpy as np

from roidtest import free_port

ROID = os.environ["ROID"]
SIM = os.environ["ROID_SIM"]
NY = NX = 24
OFF = 2**32 - 1  # /entry/scan/index of a frame off the grid
OUTSIDE = 7
FLY = f"repeat=2,order=shuffle,jitter=0.3,outside={OUTSIDE},seed=5"
PHANTOM = "seed=3"


def record_and_replay(d, name, sim_args):
    cap, out, port = os.path.join(d, name + ".cbor"), os.path.join(d, name), free_port()
    rec = subprocess.Popen([ROID, "record", f"tcp://127.0.0.1:{port}", cap, "--series", "1"], stderr=subprocess.PIPE,
                           text=True)
    subprocess.run([SIM, "--source", f"phantom:{PHANTOM}", "--shape", "64x64", "--scan", f"{NY}x{NX}", "--dtype",
                    "uint32", "--compression", "none", "--endpoint", f"tcp://127.0.0.1:{port}", "--wait-connect", "10",
                    "--quiet", *sim_args], check=True, timeout=300)
    rec.communicate(timeout=60)
    os.mkdir(out)
    p = subprocess.run([ROID, "replay", "--output-dir", out, cap], timeout=300, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return cap, h5py.File(glob.glob(os.path.join(out, "*.h5"))[0], "r"), p.stderr


def positions(cap):
    """image_id -> [x, y] from the captured messages: V2 user_data, V1 image appendix."""
    pos = {}
    with open(cap, "rb") as fp:
        dec = cbor2.CBORDecoder(fp)
        while fp.peek(1):
            parts = dec.decode()
            if not parts[0].startswith(b"{"):  # V2: one CBOR message; V1: JSON parts
                m = cbor2.loads(parts[0])
                if isinstance(m, dict) and m.get("type") == "image":
                    pos[m["image_id"]] = m["user_data"]["position"]
            else:
                head = json.loads(parts[0])
                if head.get("htype") == "dimage-1.0":
                    pos[head["frame"]] = json.loads(parts[-1])["position"]
    return pos


def start_of(cap):
    """The captured start message: V2 the CBOR map (text keys); V1 the detector configuration part."""
    with open(cap, "rb") as fp:
        dec = cbor2.CBORDecoder(fp)
        while fp.peek(1):
            parts = dec.decode()
            if not parts[0].startswith(b"{"):
                m = cbor2.loads(parts[0])
                m = m.value if isinstance(m, cbor2.CBORTag) else m
                if isinstance(m, dict) and m.get("type") == "start":
                    return m
            elif json.loads(parts[0]).get("htype", "").startswith("dheader"):
                return json.loads(parts[1])
    return None


def c_round(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def binned(pos):
    """image_id -> (row, col) for the positions on the grid; the ids off it."""
    on, off = {}, []
    for i, (x, y) in pos.items():
        r, c = c_round(y), c_round(x)
        if 0 <= r < NY and 0 <= c < NX:
            on[i] = (int(r), int(c))
        else:
            off.append(i)
    return on, off


class Fly(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        iud = ["--image-user-data", '{"position":[0,0],"note":"fly"}']
        _, cls.step, _ = record_and_replay(d, "step", [])
        cls.runs = {}
        for fmt in ("v2", "v1"):
            cap, f, log = record_and_replay(d, fmt, ["--format", fmt, "--fly", FLY, *iud])
            cls.runs[fmt] = (positions(cap), f, log)

    @classmethod
    def tearDownClass(cls):
        cls.step.close()
        for _, f, _ in cls.runs.values():
            f.close()
        cls.tmp.cleanup()

    def test_index_is_binned_position(self):
        for fmt, (pos, f, _) in self.runs.items():
            self.assertEqual(len(pos), 2 * NY * NX, fmt)
            on, off = binned(pos)
            ids, idx = f["/entry/scan/image_id"][()], f["/entry/scan/index"][()]
            self.assertEqual(sorted(ids.tolist()), sorted(pos), fmt)  # every image, on the grid or not
            want = np.array([on.get(int(i), (OFF, OFF)) for i in ids])
            np.testing.assert_array_equal(idx, want, fmt)
            # the position each image was sent with, in every row
            np.testing.assert_array_equal(f["/entry/scan/position"][()], np.array([pos[int(i)] for i in ids]), fmt)
            # the acquisition order is not the grid order, and every point got its two images
            order = [on[i] for i in sorted(on)]
            self.assertNotEqual(order, sorted(order), fmt)
            counts = f["/entry/roi/counts"][()]
            self.assertEqual(int(counts.sum()), len(on), fmt)
            self.assertGreaterEqual(int(counts.min()), 1, fmt)
            jit = max(max(abs(x - c_round(x)), abs(y - c_round(y))) for i, (x, y) in pos.items() if i in on)
            print(f"# {fmt}: {len(pos)} images, {len(on)} placed, {len(off)} off the grid, largest jitter "
                  f"{jit:.3f} steps, points with 1/2/3+ images {(counts == 1).sum()}/{(counts == 2).sum()}/"
                  f"{(counts >= 3).sum()}", file=sys.stderr)
            self.assertTrue(0.2 < jit <= 0.3, fmt)

    def test_off_grid_counted(self):
        for fmt, (pos, f, log) in self.runs.items():
            _, off = binned(pos)
            self.assertEqual(len(off), OUTSIDE, fmt)
            m = re.search(r"(\d+) frames, RoI \d+ of \d+ points, (\d+) frames dropped, (\d+) off the grid", log)
            self.assertIsNotNone(m, log)
            self.assertEqual(tuple(int(g) for g in m.groups()), (len(pos) - OUTSIDE, 0, OUTSIDE), fmt)
            self.assertIn("outside", log, fmt)
            # kept in the results, out of the maps and of the RoI's image ids
            ids, idx = f["/entry/scan/image_id"][()], f["/entry/scan/index"][()]
            self.assertEqual(sorted(ids[(idx == OFF).all(axis=1)].tolist()), sorted(off), fmt)
            self.assertFalse(set(off) & set(f["/entry/roi/image_ids"][()].tolist()), fmt)

    def test_detector_link(self):
        """/entry and /entry/instrument link the results file to the detector's own files: where
        the frames came from, the stream format, the analysed channel, the arm date, the number of
        images and the detector's description, as its start message said (read here from the
        capture)."""
        d = self.tmp.name
        # Stream V2 start keys and Stream V1 detector configuration keys, by results-file name
        det = {"description": ("detector_description", "description"),
               "detector_number": ("detector_serial_number", "detector_number"),
               "sensor_material": ("sensor_material", "sensor_material")}
        num = {"detector/count_time": ("count_time", "count_time"), "detector/frame_time": ("frame_time", "frame_time"),
               "detector/x_pixel_size": ("pixel_size_x", "x_pixel_size"),
               "detector/y_pixel_size": ("pixel_size_y", "y_pixel_size"),
               "detector/sensor_thickness": ("sensor_thickness", "sensor_thickness"),
               "beam/incident_wavelength": ("incident_wavelength", "wavelength"),
               "beam/incident_energy": ("incident_energy", "photon_energy")}
        for i, fmt in enumerate(("v2", "v1")):
            st = start_of(os.path.join(d, fmt + ".cbor"))
            self.assertIsNotNone(st, fmt)
            f = self.runs[fmt][1]
            a = f["/entry"].attrs
            text = {k: v for k, v in a.items() if k in ("source", "stream_format", "channel", "arm_date")}
            date = st["arm_date" if fmt == "v2" else "data_collection_date"]  # cbor2: tag 0 is a datetime
            date = date.isoformat(timespec="milliseconds") if isinstance(date, datetime.datetime) else date
            images = st["number_of_images"] if fmt == "v2" else st["nimages"] * st["ntrigger"]
            self.assertEqual(text, {"source": os.path.join(d, fmt + ".cbor"),
                                    "stream_format": "stream V2" if fmt == "v2" else "stream V1",
                                    "channel": st["channels"][0] if fmt == "v2" else "image",
                                    "arm_date": date}, fmt)
            self.assertEqual(int(a["number_of_images"]), images, fmt)
            self.assertEqual(images, 2 * NY * NX, fmt)
            ins = f["/entry/instrument"]
            # text is UTF-8 strings: str in h5py, not bytes
            self.assertEqual((ins.attrs["NX_class"], ins["detector"].attrs["NX_class"]), ("NXinstrument", "NXdetector"))
            for name, keys in det.items():
                self.assertEqual(ins["detector/" + name].asstr()[()], st[keys[i]], (fmt, name))
            for name, keys in num.items():
                self.assertAlmostEqual(float(ins[name][()]), float(st[keys[i]]), delta=1e-12, msg=(fmt, name))
            self.assertEqual(ins["detector/count_time"].attrs["units"], "s")
            thr = st["threshold_energy"][st["channels"][0]] if fmt == "v2" else st["threshold_energy"]
            self.assertAlmostEqual(float(ins["detector/threshold_energy"][()]), float(thr), delta=1e-9, msg=fmt)
            # image_id is the detector's image number, from 0 (the filewriter's image_nr - 1)
            self.assertEqual(int(f["/entry/scan/image_id"][()].min()), 0, fmt)

    def edited_replay(self, name, edit):
        """The V2 capture with edit(message) applied to each V2 message (a dict; edit returns False
        to leave the message out), replayed with --output-dir: (messages edited, the results file)."""
        d = self.tmp.name
        cap, out = os.path.join(d, name + ".cbor"), os.path.join(d, name)
        n = 0
        with open(os.path.join(d, "v2.cbor"), "rb") as fi, open(cap, "wb") as fo:
            dec = cbor2.CBORDecoder(fi)
            while fi.peek(1):
                parts = dec.decode()
                m = cbor2.loads(parts[0])
                v = m.value if isinstance(m, cbor2.CBORTag) else m
                keep = edit(v)
                if keep is None:
                    cbor2.dump(parts, fo)
                    continue
                n += 1
                if keep:
                    cbor2.dump([cbor2.dumps(m)] + parts[1:], fo)
        os.mkdir(out)
        p = subprocess.run([ROID, "replay", "--output-dir", out, cap], timeout=300, capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        return n, h5py.File(glob.glob(os.path.join(out, "*.h5"))[0], "r")

    def test_without_number_of_images(self):
        """The same capture with number_of_images taken out of its start message (as a V1 series
        with header_detail none, or an edited capture, has it): replay must keep every frame.  It
        kept one record a grid point, and the results file lost a quarter of the RoI image ids
        while it said final and complete."""
        def no_number(v):
            if isinstance(v, dict) and v.get("type") == "start":
                del v["number_of_images"]
                return True
            return None
        n, f = self.edited_replay("nonum", no_number)
        self.assertEqual(n, 1)
        with f:
            _, ref, _ = self.runs["v2"]
            self.assertEqual(f["/entry/scan/image_id"].shape, ref["/entry/scan/image_id"].shape)
            self.assertGreater(f["/entry/scan/image_id"].shape[0], NY * NX)  # two frames a point
            m = f["/entry/roi/mask"][()] == 1
            self.assertEqual(len(f["/entry/roi/image_ids"]), f["/entry/roi/counts"][()][m].sum())
            self.assertEqual(sorted(f["/entry/roi/image_ids"][()]), sorted(ref["/entry/roi/image_ids"][()]))

    def test_bad_position(self):
        """An image whose user data position is malformed is kept in /entry/scan with index
        UINT32_MAX and position NaN, out of the maps, and counted; it was dropped from the results
        file, where the daemon keeps it."""
        bad = 5

        def garble(v):
            if isinstance(v, dict) and v.get("type") == "image" and v.get("image_id") == bad:
                v["user_data"]["position"] = "here"
                return True
            return None
        n, f = self.edited_replay("badpos", garble)
        self.assertEqual(n, 1)
        with f:
            ids, idx = f["/entry/scan/image_id"][()].tolist(), f["/entry/scan/index"][()]
            _, ref, _ = self.runs["v2"]
            self.assertEqual(sorted(ids), sorted(ref["/entry/scan/image_id"][()].tolist()))
            i = ids.index(bad)
            self.assertEqual(idx[i].tolist(), [OFF, OFF])
            self.assertTrue(np.isnan(f["/entry/scan/position"][i]).all())
            self.assertNotIn(bad, f["/entry/roi/image_ids"][()].tolist())
            counts, rc = f["/entry/roi/counts"][()], ref["/entry/roi/counts"][()]
            self.assertEqual(int(counts.sum()), int(rc.sum()) - 1)

    def test_terminated(self):
        """counters/terminated: 1 for a series that ended with its end message, 0 for one closed
        without it (the same capture, its end message cut off), which may lack frames."""
        n, f = self.edited_replay("noend", lambda v: False if isinstance(v, dict) and v.get("type") == "end"
                                  else None)
        self.assertEqual(n, 1)
        with f:
            a = f["/entry/counters"].attrs
            self.assertEqual((int(a["terminated"]), int(a["complete"])), (0, 1))
        a = self.runs["v2"][1]["/entry/counters"].attrs
        self.assertEqual((int(a["terminated"]), int(a["complete"])), (1, 1))

    def test_v1_equals_v2(self):
        a, b = self.runs["v2"][1], self.runs["v1"][1]
        for k in ("/entry/scan/image_id", "/entry/scan/index", "/entry/roi/mask", "/entry/features/sum"):
            np.testing.assert_array_equal(a[k][()], b[k][()], k)

    def test_roi_matches_step_scan(self):
        step = self.step["/entry/roi/mask"][()].astype(bool)
        for fmt, (_, f, _) in self.runs.items():
            fly = f["/entry/roi/mask"][()].astype(bool)
            iou = (fly & step).sum() / (fly | step).sum()
            print(f"# {fmt}: fly RoI {fly.sum()} points, step RoI {step.sum()}, IoU {iou:.3f}", file=sys.stderr)
            self.assertGreaterEqual(iou, 0.9, fmt)


if __name__ == "__main__":
    unittest.main(verbosity=2)
