"""Detector glitches end to end: frames near full scale at six points of a
4D-STEM-like scan of an absorbing disc, replayed from an HDF5 file with
`roid replay --output-dir`, against the same scan without them.  The six
points are the results file's outliers and the only ones; their frames are
left out of image_ids; the filtered T map is the 3 x 3 mean without them;
the RoI is the clean scan's; and roid says so.  Before, the T map's cut was
{glitches and their neighbours} against the rest, and the RoI every point."""
import os
import subprocess
import tempfile
import unittest

import h5py
import numpy as np

ROID = os.environ["ROID"]
NY = NX = 40
R = C = 32
GLITCH = [(5, 7), (20, 20), (21, 13), (33, 30), (12, 36), (38, 2)]  # 0.4 % of the points


def render(glitches):
    """The scan's frames: a bright-field disc of radius 6 at (16, 16) and a
    halo, Poisson; over the object (a disc of a quarter of the scan) half
    the beam gets through.  The glitches replace their points' frames."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:R, 0:C]
    d = np.hypot(yy - 16, xx - 16)
    beam = 120 / (1 + np.exp((d - 6) / 0.7)) + 0.3 + 300 / (1 + d * d)
    row, col = np.divmod(np.arange(NY * NX), NX)
    inside = np.hypot((row - NY / 2) / NY, (col - NX / 2) / NX) < 0.25
    lam = np.where(inside, 0.5, 1.0)[:, None, None] * beam[None]
    frames = rng.poisson(lam).astype(np.uint16)
    wild = rng.integers(60000, 65535, (len(GLITCH), R, C), dtype=np.uint16)
    if glitches:
        for k, (y, x) in enumerate(GLITCH):
            frames[y * NX + x] = wild[k]
    return frames, inside.reshape(NY, NX)


class Glitches(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.res, cls.log, cls.names = {}, {}, {}
        for name in ("clean", "glitches"):
            frames, cls.truth = render(name == "glitches")
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

    def test_outliers_are_the_glitches(self):
        want = np.zeros((NY, NX), np.uint8)
        for y, x in GLITCH:
            want[y, x] = 1
        g, c = self.res["glitches"]["/entry/roi"], self.res["clean"]["/entry/roi"]
        np.testing.assert_array_equal(g["outliers"][()], want)
        np.testing.assert_array_equal(c["outliers"][()], 0)
        t = g["raw"][0]
        fence = g["outlier_fence"][()]
        self.assertTrue(t[want == 0].max() < fence < t[want == 1].min(), (t[want == 0].max(), fence))
        self.assertEqual(self.res["glitches"]["/entry"].attrs["results_version"], 4)

    def test_roi_is_the_clean_scans(self):
        g, c = self.res["glitches"]["/entry/roi/mask"][()], self.res["clean"]["/entry/roi/mask"][()]
        iou = (g & self.truth).sum() / (g | self.truth).sum()
        self.assertGreater(iou, 0.9)
        self.assertLessEqual(int((g != c).sum()), 2, f"{int((g != c).sum())} points differ; IoU {iou:.3f}")

    def test_filtered_total_leaves_them_out(self):
        roi = self.res["glitches"]["/entry/roi"]
        t, out, cnt = roi["raw"][0], roi["outliers"][()].astype(bool), roi["counts"][()]
        use = (cnt > 0) & ~out
        pad, pu = np.pad(np.where(use, t, 0), 1), np.pad(use.astype(float), 1)
        s9 = sum(pad[1 + dy:1 + dy + NY, 1 + dx:1 + dx + NX] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        n9 = sum(pu[1 + dy:1 + dy + NY, 1 + dx:1 + dx + NX] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        np.testing.assert_allclose(roi["filtered"][0], np.log1p(s9 / n9), rtol=0, atol=1e-9)

    def test_image_ids_leave_their_frames_out(self):
        for name in ("clean", "glitches"):
            f = self.res[name]
            roi = f["/entry/roi"]
            idx, ids = f["/entry/scan/index"][()], f["/entry/scan/image_id"][()]
            mask, out = roi["mask"][()], roi["outliers"][()]
            want = sorted(ids[(mask[idx[:, 0], idx[:, 1]] == 1) & (out[idx[:, 0], idx[:, 1]] == 0)])
            self.assertEqual(sorted(roi["image_ids"][()]), want, name)
            self.assertEqual(len(want), int(roi["counts"][()][(mask == 1) & (out == 0)].sum()))
        inside = [y * NX + x for y, x in GLITCH if self.res["glitches"]["/entry/roi/mask"][y, x]]
        self.assertTrue(inside, "a glitch inside the RoI")
        self.assertFalse(set(inside) & set(self.res["glitches"]["/entry/roi/image_ids"][()]))

    def test_file_named_after_the_replayed_file(self):
        # replay names the series after its file; the results file drops the .h5 (not roid_clean.h5.h5)
        self.assertEqual(self.names, {"clean": "roid_clean.h5", "glitches": "roid_glitches.h5"})
        self.assertEqual(self.res["clean"]["/entry"].attrs["series_unique_id"], "clean.h5")

    def test_roid_says_so(self):
        self.assertIn(f"{len(GLITCH)} points with a mean total above", self.log["glitches"])
        self.assertIn("/entry/roi/outliers", self.log["glitches"])
        self.assertNotIn("mean total above", self.log["clean"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
