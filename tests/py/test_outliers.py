"""Detector glitches end to end: a 4D-STEM-like scan of an absorbing disc,
replayed from an HDF5 file with `roid replay --output-dir`, against the same
scan without them.  Four frames near full scale are left out on arrival
(/entry/scan/left_out = 2, their points unmeasured); three frames of a hot
module (200 times the counts, below a quarter of full scale) make their
points the results file's outliers, and the only ones; the frames of both
are left out of image_ids; the filtered T map is the 3 x 3 mean without the
outliers; the RoI is the clean scan's; and roid says so.  Before, the T map's
cut was {glitches and their neighbours} against the rest, and the RoI every
point.  Two hot-module frames early in the scan (visits 5 and 150), judged
outliers after the first refits had put a centre at them, left the online
mask empty for the rest of the scan (found by review): it ends as the clean
scan's."""
import os
import subprocess
import tempfile
import unittest

import h5py
import numpy as np

ROID = os.environ["ROID"]
NY = NX = 40
R = C = 32
FULL = [(5, 7), (20, 20), (33, 30), (38, 2)]  # frames near full scale
HOT = [(21, 13), (12, 36), (30, 9)]  # hot-module frames: point outliers (0.19 % of the points)
EARLY = [(0, 5), (3, 30)]  # hot-module frames at visits 5 and 150


def render(full=(), hot=()):
    """The scan's frames: a bright-field disc of radius 6 at (16, 16) and a
    halo, Poisson; over the object (a disc of a quarter of the scan) half
    the beam gets through.  The glitches replace their points' frames: near
    full scale, or 3000-3500 counts a pixel (a quarter of the 16-bit range
    is 16383)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:R, 0:C]
    d = np.hypot(yy - 16, xx - 16)
    beam = 120 / (1 + np.exp((d - 6) / 0.7)) + 0.3 + 300 / (1 + d * d)
    row, col = np.divmod(np.arange(NY * NX), NX)
    inside = np.hypot((row - NY / 2) / NY, (col - NX / 2) / NX) < 0.25
    lam = np.where(inside, 0.5, 1.0)[:, None, None] * beam[None]
    frames = rng.poisson(lam).astype(np.uint16)
    wild = rng.integers(60000, 65535, (len(full), R, C), dtype=np.uint16)
    hotv = rng.integers(3000, 3500, (len(hot), R, C), dtype=np.uint16)
    for k, (y, x) in enumerate(full):
        frames[y * NX + x] = wild[k]
    for k, (y, x) in enumerate(hot):
        frames[y * NX + x] = hotv[k]
    return frames, inside.reshape(NY, NX)


class Glitches(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.res, cls.log, cls.names = {}, {}, {}
        for name, full, hot in (("clean", (), ()), ("glitches", FULL, HOT), ("early", (), EARLY)):
            frames, cls.truth = render(full, hot)
            src = os.path.join(cls.tmp.name, name + ".h5")
            with h5py.File(src, "w") as f:
                f.create_dataset("/entry/data/data", data=frames)
            out = os.path.join(cls.tmp.name, name)
            os.mkdir(out)
            p = subprocess.run([ROID, "replay", "--output-dir", out, "--scan", f"{NY}x{NX}", "--center", "16,16",
                                "--bf", "6", "--df", "8,15", src], capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                raise AssertionError(f"roid replay exited {p.returncode}: {p.stderr}")
            (res,) = os.listdir(out)
            cls.names[name] = res
            cls.res[name], cls.log[name] = h5py.File(os.path.join(out, res), "r"), p.stderr

    @classmethod
    def tearDownClass(cls):
        for f in cls.res.values():
            f.close()
        cls.tmp.cleanup()

    def test_full_scale_frames_left_out(self):
        f = self.res["glitches"]
        idx, left = f["/entry/scan/index"][()], f["/entry/scan/left_out"][()]
        full = {y * NX + x for y, x in FULL}
        at = idx[:, 0] * NX + idx[:, 1]
        self.assertEqual({int(p) for p in at[left == 2]}, full)
        self.assertEqual(int((left == 1).sum()), 0)
        cnt = f["/entry/roi/counts"][()]
        for y, x in FULL:
            self.assertEqual(cnt[y, x], 0, "a point whose only frame was left out is unmeasured")
        np.testing.assert_array_equal(self.res["clean"]["/entry/scan/left_out"][()], 0)

    def test_outliers_are_the_hot_frames(self):
        want = np.zeros((NY, NX), np.uint8)
        for y, x in HOT:
            want[y, x] = 1
        g, c = self.res["glitches"]["/entry/roi"], self.res["clean"]["/entry/roi"]
        np.testing.assert_array_equal(g["outliers"][()], want)
        np.testing.assert_array_equal(c["outliers"][()], 0)
        t = g["raw"][0]
        fence = g["outlier_fence"][()]
        seen = ~np.isnan(t)
        self.assertTrue(t[seen & (want == 0)].max() < fence < t[want == 1].min(), (t[want == 0].max(), fence))
        self.assertEqual(self.res["glitches"]["/entry"].attrs["results_version"], 5)

    def test_early_outliers_leave_the_online_mask_alone(self):
        c, e = self.res["clean"]["/entry/roi/online_mask"][()], self.res["early"]["/entry/roi/online_mask"][()]
        self.assertEqual(int(self.res["early"]["/entry/roi/outliers"][()].sum()), len(EARLY))
        self.assertGreater(int(c.sum()), 300)
        self.assertLessEqual(int((c != e).sum()), 3, f"online mask {int(e.sum())} points, clean {int(c.sum())}")

    def test_roi_is_the_clean_scans(self):
        g, c = self.res["glitches"]["/entry/roi/mask"][()], self.res["clean"]["/entry/roi/mask"][()]
        iou = (g & self.truth).sum() / (g | self.truth).sum()
        self.assertGreater(iou, 0.9)
        self.assertLessEqual(int((g != c).sum()), 2, f"{int((g != c).sum())} points differ; IoU {iou:.3f}")

    def test_filtered_total_leaves_them_out(self):
        roi = self.res["glitches"]["/entry/roi"]
        t, out, cnt = roi["raw"][0], roi["outliers"][()].astype(bool), roi["counts"][()]
        use = (cnt > 0) & ~out
        seen = cnt > 0
        pad, pu = np.pad(np.where(use, t, 0), 1), np.pad(use.astype(float), 1)
        s9 = sum(pad[1 + dy:1 + dy + NY, 1 + dx:1 + dx + NX] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        n9 = sum(pu[1 + dy:1 + dy + NY, 1 + dx:1 + dx + NX] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        with np.errstate(invalid="ignore"):
            want = np.where(seen, np.log1p(s9 / n9), np.nan)
        np.testing.assert_allclose(roi["filtered"][0], want, rtol=0, atol=1e-9)

    def test_image_ids_leave_their_frames_out(self):
        for name in ("clean", "glitches"):
            f = self.res[name]
            roi = f["/entry/roi"]
            idx, ids = f["/entry/scan/index"][()], f["/entry/scan/image_id"][()]
            mask, out, left = roi["mask"][()], roi["outliers"][()], f["/entry/scan/left_out"][()]
            keep = (mask[idx[:, 0], idx[:, 1]] == 1) & (out[idx[:, 0], idx[:, 1]] == 0) & (left == 0)
            want = sorted(ids[keep])
            self.assertEqual(sorted(roi["image_ids"][()]), want, name)
            self.assertEqual(len(want), int(roi["counts"][()][(mask == 1) & (out == 0)].sum()))
        inside = [y * NX + x for y, x in HOT if self.res["glitches"]["/entry/roi/mask"][y, x]]
        self.assertTrue(inside, "a glitch inside the RoI")
        self.assertFalse(set(inside) & set(self.res["glitches"]["/entry/roi/image_ids"][()]))

    def test_file_named_after_the_replayed_file(self):
        # replay names the series after its file; the results file drops the .h5 (not roid_clean.h5.h5)
        self.assertEqual(self.names, {n: f"roid_{n}.h5" for n in ("clean", "glitches", "early")})
        self.assertEqual(self.res["clean"]["/entry"].attrs["series_unique_id"], "clean.h5")

    def test_roid_says_so(self):
        self.assertIn(f"{len(HOT)} points with a mean total above", self.log["glitches"])
        self.assertIn(f"{len(FULL)} frames whose pixels average more than a quarter of full scale",
                      self.log["glitches"])
        self.assertIn("/entry/roi/outliers", self.log["glitches"])
        self.assertNotIn("mean total above", self.log["clean"])
        self.assertNotIn("full scale", self.log["clean"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
