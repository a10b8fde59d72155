"""The RoI analysis end to end: the ptychography phantom of roid-sim, streamed
and recorded with `roid record`, replayed by `roid replay --output-dir`, against the phantom's ground truth, scikit-learn's
KMeans, and numpy recomputations of the features and the filtered maps."""
import glob
import json
import os
import subprocess
import sys
import tempfile
import unittest

import cbor2
import h5py
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, os.path.dirname(__file__))
import features_ref  # noqa: E402

from roidtest import free_port

ROID = os.environ["ROID"]
SIM = os.environ["ROID_SIM"]
NY = NX = 48


def filtered_maps(f, S):
    """Filtered log maps recomputed from the per-frame features: per point
    means, CoM standardised over all frames (eq. 2, population std), 3x3 mean
    over the points seen, log."""
    idx = f["/entry/scan/index"][()]
    chans = [(f["/entry/features/sum"][()], f["/entry/features/com"][()])]
    if S > 1:
        ss, sc = f["/entry/features/segment_sum"][()], f["/entry/features/segment_com"][()]
        chans += [(ss[:, s], sc[:, s, :]) for s in range(S)]
    cnt = np.zeros((NY, NX))
    np.add.at(cnt, (idx[:, 0], idx[:, 1]), 1)
    seen = cnt > 0
    out = []
    for t, c in chans:
        z = (c - c.mean(axis=0)) / c.std(axis=0)
        for k, v in enumerate((t, np.hypot(z[:, 0], z[:, 1]))):
            acc = np.zeros((NY, NX))
            np.add.at(acc, (idx[:, 0], idx[:, 1]), v)
            raw = np.where(seen, acc / np.maximum(cnt, 1), 0)
            pad, pc = np.pad(raw, 1), np.pad(seen.astype(float), 1)
            s9 = sum(pad[1 + dy:1 + dy + NY, 1 + dx:1 + dx + NX] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
            n9 = sum(pc[1 + dy:1 + dy + NY, 1 + dx:1 + dx + NX] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
            mean = s9 / np.maximum(n9, 1)
            # log(1 + T) for a total, log |CoM| (floor 1e-12) for a centre of mass
            out.append(np.where(seen, np.log1p(mean) if k == 0 else np.log(np.maximum(mean, 1e-12)), np.nan))
    return np.array(out), seen


def dilate(m, n):
    for _ in range(n):
        p = np.pad(m, 1)
        m = np.zeros_like(m)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                m = m | p[1 + dy:1 + dy + NY, 1 + dx:1 + dx + NX]
    return m


class RoiPhantom(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        cls.truth_path = os.path.join(d, "truth.json")
        cap = os.path.join(d, "cap.cbor")
        port = free_port()
        rec = subprocess.Popen([ROID, "record", f"tcp://127.0.0.1:{port}", cap, "--series", "1"],
                               stderr=subprocess.PIPE, text=True)
        subprocess.run([SIM, "--source", f"phantom:seed=3,truth={cls.truth_path}", "--shape", "128x128",
                        "--scan", f"{NY}x{NX},snake", "--dtype", "uint32", "--compression", "none",
                        "--endpoint", f"tcp://127.0.0.1:{port}", "--wait-connect", "10", "--quiet"],
                       check=True, timeout=300)
        rec.communicate(timeout=60)
        cls.cap = cap
        with open(cls.truth_path) as fp:
            cls.truth = json.load(fp)
        cls.files = {}
        for name, args in {"s8": ["--cadence", "100"], "s1": ["--segments", "1"], "b2": ["--border", "2", "--fill-holes"]}.items():
            out = os.path.join(d, name)
            os.mkdir(out)
            subprocess.run([ROID, "replay", "--output-dir", out, *args, cap], check=True, timeout=300,
                           capture_output=True)
            cls.files[name] = h5py.File(glob.glob(os.path.join(out, "*.h5"))[0], "r")

    @classmethod
    def tearDownClass(cls):
        for f in cls.files.values():
            f.close()
        cls.tmp.cleanup()

    def test_iou_with_true_object(self):
        obj = np.array(self.truth["object_mask"], bool)
        for name in ("s8", "s1"):
            m = self.files[name]["/entry/roi/mask"][()].astype(bool)
            iou = (m & obj).sum() / (m | obj).sum()
            print(f"# {name}: RoI {m.sum()} points, object {obj.sum()}, IoU {iou:.3f}", file=sys.stderr)
            self.assertGreaterEqual(iou, 0.8, name)

    def test_labels_match_sklearn(self):
        for name in ("s8", "s1"):
            f = self.files[name]
            filt, lab = f["/entry/roi/filtered"][()], f["/entry/roi/labels"][()]
            worst = 1.0
            for m in range(filt.shape[0]):
                seen = ~np.isnan(filt[m])
                x = filt[m][seen].reshape(-1, 1)
                sk = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(x)
                worst = min(worst, adjusted_rand_score(sk, lab[m][seen]))
            print(f"# {name}: worst ARI vs sklearn over {filt.shape[0]} modalities {worst:.4f}", file=sys.stderr)
            self.assertGreaterEqual(worst, 0.95, name)

    def test_online_agrees_with_final(self):
        for name in ("s8", "s1"):
            f = self.files[name]
            onl, fin = f["/entry/roi/online_labels"][()], f["/entry/roi/labels"][()]
            agree = (onl == fin).mean(axis=(1, 2))
            um = (f["/entry/roi/online_mask"][()] == f["/entry/roi/raw_mask"][()]).mean()
            print(f"# {name}: online/final agreement per modality min {agree.min():.4f}, union {um:.4f}",
                  file=sys.stderr)
            self.assertGreaterEqual(agree.min(), 0.95, name)
            self.assertGreaterEqual(um, 0.95, name)

    def test_filtered_maps_recomputed(self):
        for name, S in (("s8", 8), ("s1", 1)):
            f = self.files[name]
            ref, seen = filtered_maps(f, S)
            got = f["/entry/roi/filtered"][()]
            self.assertEqual(got.shape, ref.shape)
            self.assertTrue(seen.all())
            np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)

    def test_features_against_numpy(self):
        f = self.files["s8"]
        ids = f["/entry/scan/image_id"][()]
        self.assertEqual(sorted(ids.tolist()), list(range(NY * NX)))
        row = {int(i): k for k, i in enumerate(ids)}
        cx, cy = f["/entry"].attrs["beam_center"]
        self.assertEqual((cx, cy), tuple(self.truth["beam_center"]))
        checked = 0
        with open(self.cap, "rb") as fp:
            dec = cbor2.CBORDecoder(fp)
            while fp.peek(1):
                m = cbor2.loads(dec.decode()[0])
                if m.get("type") != "image" or m["image_id"] % 23:
                    continue
                arr = m["data"]["threshold_1"].value
                frame = np.frombuffer(arr[1].value, "<u4").reshape(arr[0])
                ref = features_ref.features(frame, None, cx, cy, 8, 0, 0, 0)
                k = row[m["image_id"]]
                got_seg = f["/entry/features/segment_sum"][k]
                for name, got in (("total", f["/entry/features/sum"][k]), ("com_x", f["/entry/features/com"][k, 0]),
                                  ("com_y", f["/entry/features/com"][k, 1])):
                    self.assertAlmostEqual(got / ref[name], 1, delta=1e-9, msg=name)
                for s in range(8):
                    self.assertAlmostEqual(got_seg[s], ref["seg%d_sum" % s], delta=1e-9 * abs(ref["seg%d_sum" % s]))
                    for a, key in enumerate(("com_x", "com_y")):
                        want = ref["seg%d_%s" % (s, key)]
                        self.assertAlmostEqual(f["/entry/features/segment_com"][k, s, a], want, delta=1e-9 * abs(want))
                checked += 1
        self.assertGreater(checked, 90)

    def test_scan_index_and_roi_ids(self):
        f = self.files["s8"]
        order = np.array(self.truth["frame_order"])
        ids, idx = f["/entry/scan/image_id"][()], f["/entry/scan/index"][()]
        np.testing.assert_array_equal(idx, order[ids])
        mask = f["/entry/roi/mask"][()]
        want = sorted(int(i) for i, (r, c) in zip(ids, idx) if mask[r, c])
        self.assertEqual(sorted(f["/entry/roi/image_ids"][()].tolist()), want)

    def test_border_and_holes(self):
        f = self.files["b2"]
        raw = f["/entry/roi/raw_mask"][()].astype(bool)
        grown = dilate(raw, 2)
        # holes: background not 4-connected to the edge, by flood fill here
        bg = ~grown
        reach = np.zeros_like(bg)
        stack = [(r, c) for r in range(NY) for c in range(NX) if (r in (0, NY - 1) or c in (0, NX - 1)) and bg[r, c]]
        for p in stack:
            reach[p] = True
        while stack:
            r, c = stack.pop()
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < NY and 0 <= cc < NX and bg[rr, cc] and not reach[rr, cc]:
                    reach[rr, cc] = True
                    stack.append((rr, cc))
        np.testing.assert_array_equal(f["/entry/roi/mask"][()].astype(bool), grown | (bg & ~reach))
        self.assertEqual(f["/entry"].attrs["border"], 2)

    def test_segments_vs_whole(self):
        """S = 8 against S = 1 on the small weak-phase particles (reported)."""
        small = np.array(self.truth["small_mask"], bool)
        cover = {n: int((self.files[n]["/entry/roi/mask"][()].astype(bool) & small).sum()) for n in ("s8", "s1")}
        print(f"# small-particle points {small.sum()}: covered S=8 {cover['s8']}, S=1 {cover['s1']}",
              file=sys.stderr)
        self.assertGreater(cover["s8"], 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
