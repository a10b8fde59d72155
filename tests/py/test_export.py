"""`roid export`: the frames of the final RoI, decoded, in a file any HDF5
reader opens (Debian's h5py has no bitshuffle filter, so a reconstruction user
could not read EIGER bslz4 frames without roid).

roid-sim streams the ptychography phantom as a fly scan (two frames per
point, shuffled, positions jittered) with bslz4 frames, `roid record`
captures it, `roid replay --output-dir` writes the results file, and
`roid export --results` takes the RoI frames out of the capture.  Every frame
exported is compared with the test's own decoding of the captured message
(test_sim's pure-Python bitshuffle-LZ4), and its grid point and position
with the results file's /entry/scan row of that image.  On DECTRIS's data
files, `--ids` gives the frames whose reference values the testdata README
states.  With several series in the inputs the frames come from the
results file's (another capture, of other frames whose ids overlap the RoI,
precedes it).  Bad requests (an output that exists, ids missing from the input, a
results file without a final map, malformed ids) fail with a message naming
the problem."""
import glob
import os
import shutil
import subprocess
import tempfile
import unittest

import cbor2
import h5py
import numpy as np

from roidtest import free_port
from test_sim import bslz4_decode

ROID = os.environ["ROID"]
SIM = os.environ["ROID_SIM"]
TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "testdata")
EIGER1 = "eiger-h5/eiger1_testmode10_2datafiles_4images_bslz4_data_000001.h5"
NY = NX = 16


def data(rel):
    return os.path.join(os.environ.get("ROID_TESTDATA", TESTDATA), rel)


def export(*args):
    return subprocess.run([ROID, "export", *args], capture_output=True, text=True, timeout=300)


def captured_frames(cap):
    """image_id -> decoded frame (rows, cols) uint16 from a Stream V2 capture."""
    out = {}
    with open(cap, "rb") as fp:
        dec = cbor2.CBORDecoder(fp)
        while fp.peek(1):
            m = cbor2.loads(dec.decode()[0])
            if isinstance(m, dict) and m.get("type") == "image":
                (rows, cols), ta = next(iter(m["data"].values())).value
                name, elem, payload = ta.value.value
                assert name == "bslz4" and elem == 2, (name, elem)
                out[m["image_id"]] = np.frombuffer(bslz4_decode(payload, 2), "<u2").reshape(rows, cols)
    return out


class Export(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="roid-export-")
        cls.cap = cls.capture("scan.cbor", "64x64", "--fly", "repeat=2,order=shuffle,jitter=0.3,seed=5",
                              "--image-user-data", '{"position":[0,0]}')
        # another series (its own unique id) of other frames, whose image ids overlap the RoI's
        cls.other = cls.capture("other.cbor", "32x32")
        out = os.path.join(cls.tmp, "results")
        os.mkdir(out)
        p = subprocess.run([ROID, "replay", "--output-dir", out, cls.cap], capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr
        cls.results = glob.glob(os.path.join(out, "*.h5"))[0]

    @classmethod
    def capture(cls, name, shape, *sim_args):
        path, port = os.path.join(cls.tmp, name), free_port()
        rec = subprocess.Popen([ROID, "record", f"tcp://127.0.0.1:{port}", path, "--series", "1"],
                               stderr=subprocess.PIPE, text=True)
        subprocess.run([SIM, "--source", "phantom:seed=3", "--shape", shape, "--scan", f"{NY}x{NX}", "--dtype",
                        "uint16", "--compression", "bslz4", "--endpoint", f"tcp://127.0.0.1:{port}",
                        "--wait-connect", "10", "--quiet", *sim_args], check=True, timeout=300)
        rec.communicate(timeout=60)
        return path

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def test_roi_frames(self):
        out = self.path("roi.h5")
        p = export("--results", self.results, "--output", out, self.cap)
        self.assertEqual(p.returncode, 0, p.stderr)
        with h5py.File(self.results, "r") as r:
            want = r["/entry/roi/image_ids"][()]
            scan_ids = r["/entry/scan/image_id"][()]
            index, position = r["/entry/scan/index"][()], r["/entry/scan/position"][()]
        self.assertGreater(len(want), 0, "the phantom has a RoI")
        self.assertLess(len(want), NY * NX, "and background")
        row = {int(i): k for k, i in enumerate(scan_ids)}
        frames = captured_frames(self.cap)
        with h5py.File(out, "r") as f:
            g = f["/entry/data"]
            self.assertEqual(g.attrs["signal"], "data")
            self.assertEqual(f["/entry"].attrs["results_file"], self.results)
            ids = g["image_id"][()]
            self.assertEqual(sorted(ids.tolist()), sorted(want.tolist()), "exactly the RoI's frames")
            self.assertEqual(g["data"].shape, (len(want), 64, 64))
            self.assertEqual(g["data"].dtype, np.uint16)
            self.assertEqual(g["data"].compression, "gzip", "deflate 1 by default, which h5py reads natively")
            self.assertTrue(np.isfinite(g["position"][()]).all(), "a fly scan: every frame has its position")
            self.assertTrue((g["index"][()] < NY).all(), "and its grid point")
            wanted = set(want.tolist())
            self.assertEqual(ids.tolist(), [i for i in frames if i in wanted], "in the capture's order")
            for k, i in enumerate(ids):
                np.testing.assert_array_equal(g["data"][k], frames[int(i)], err_msg=f"image {i}")
                np.testing.assert_array_equal(g["index"][k], index[row[int(i)]])
                np.testing.assert_array_equal(g["position"][k], position[row[int(i)]])
        self.assertIn(f"{len(want)} frames written", p.stderr)

    def test_series_of_the_results_file(self):
        """With --results the frames come from the results file's series.  A
        series before it whose ids overlap the RoI is taken tentatively, then
        dropped; a single series of another id is taken, with a notice; several
        series none of which is the results file's is an error, with no file
        left."""
        with h5py.File(self.results, "r") as r:
            uid = r["/entry"].attrs["series_unique_id"]
            want = sorted(r["/entry/roi/image_ids"][()].tolist())
        self.assertLess(want[0], NY * NX, "the other capture holds some RoI ids")

        out = self.path("after-other.h5")
        p = export("--results", self.results, "--output", out, self.other, self.cap)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(f"series '{uid}' is the results file's: the frames taken from", p.stderr)
        frames = captured_frames(self.cap)
        with h5py.File(out, "r") as f:
            self.assertEqual(f["/entry"].attrs["series_unique_id"], uid)
            self.assertEqual(sorted(f["/entry/data/image_id"][()].tolist()), want)
            d = f["/entry/data/data"]
            self.assertEqual(d.shape, (len(want), 64, 64), "the results file's frames, not the other series'")
            for k, i in enumerate(f["/entry/data/image_id"][()]):
                np.testing.assert_array_equal(d[k], frames[int(i)], err_msg=f"image {i}")

        out = self.path("other-alone.h5")
        p = export("--results", self.results, "--output", out, self.other)
        self.assertEqual(p.returncode, 1, "the other series has no frame for RoI ids past its last")
        self.assertIn(f"the results file's series is '{uid}', the input's", p.stderr)
        self.assertIn("taken as the same", p.stderr)
        with h5py.File(out, "r") as f:
            ids = f["/entry/data/image_id"][()].tolist()
            self.assertEqual(ids, [i for i in want if i < NY * NX])
            self.assertEqual(f["/entry/data/data"].shape[1:], (32, 32))

        out = self.path("none-of-it.h5")
        p = export("--results", self.results, "--output", out, self.other, data(EIGER1))
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"the results file is of series '{uid}'; the inputs hold 2 series, none of it", p.stderr)
        self.assertFalse(os.path.exists(out), "no file of another series' frames is left")

        out = self.path("ids-first.h5")
        p = export("--ids", "0-1", "--output", out, data(EIGER1), self.other)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("--ids picks from the first series", p.stderr)
        with h5py.File(out, "r") as f:
            self.assertEqual(f["/entry/data/data"].shape, (2, 1065, 1030))

    def test_real_eiger_file_by_ids(self):
        out = self.path("eiger1.h5")
        p = export("--ids", "0-1", "--deflate", "0", "--output", out, data(EIGER1))
        self.assertEqual(p.returncode, 0, p.stderr)
        with h5py.File(out, "r") as f:
            d = f["/entry/data/data"]
            self.assertIsNone(d.compression)
            self.assertEqual(d.shape, (2, 1065, 1030))
            self.assertEqual(f["/entry/data/image_id"][()].tolist(), [0, 1])
            self.assertTrue((f["/entry/data/index"][()] == 2**32 - 1).all(), "no results file: no grid point")
            for fr in d:  # testdata README: 38164 pixels at 65535, valid sum 10401533
                self.assertEqual(int((fr == 65535).sum()), 38164)
                self.assertEqual(int(fr[fr != 65535].astype(np.int64).sum()), 10401533)

    def test_config_results_directory_not_needed(self):
        """The daemon's configuration may name a results directory this user
        cannot write (/var/lib/roid under systemd): export writes none."""
        conf = self.path("roid.conf")
        with open(conf, "w") as fp:
            fp.write(f"[output]\ndirectory = {self.path('no-such-dir')}\n")
        out = self.path("with-config.h5")
        p = export("--config", conf, "--ids", "0", "--output", out, data(EIGER1))
        self.assertEqual(p.returncode, 0, p.stderr)
        with h5py.File(out, "r") as f:
            self.assertEqual(f["/entry/data/image_id"][()].tolist(), [0])

    def test_missing_frames_named(self):
        out = self.path("missing.h5")
        p = export("--ids", "1,3-5", "--output", out, data(EIGER1))
        self.assertEqual(p.returncode, 1)
        self.assertIn("3 of 4 selected frames are not in", p.stderr)
        self.assertIn("the first: image 3", p.stderr)
        with h5py.File(out, "r") as f:
            self.assertEqual(f["/entry/data/image_id"][()].tolist(), [1], "what was found is kept")

    def test_output_that_cannot_be_written(self):
        """A disk that fills mid-export (here the file-size limit, 1 MiB, on
        two frames of 2 MiB): exit status 1, HDF5's reason named, the partial
        file removed (it would pass for the frames asked for), no crash."""
        import resource
        out = self.path("full.h5")
        lim = 1 << 20

        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (lim, lim))
        p = subprocess.run([ROID, "export", "--ids", "0-1", "--deflate", "0", "--output", out, data(EIGER1)],
                           capture_output=True, text=True, timeout=300, preexec_fn=limit)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("cannot be written: file write failed: File too large", p.stderr)
        self.assertIn("the partial file is removed", p.stderr)
        self.assertIn("export: no file written", p.stderr)
        self.assertFalse(os.path.exists(out))

    def test_existing_output_never_replaced(self):
        out = self.path("exists.h5")
        with open(out, "wb") as fp:
            fp.write(b"keep me")
        p = export("--ids", "0", "--output", out, data(EIGER1))
        self.assertEqual(p.returncode, 1)
        self.assertIn("exists: roid export never replaces a file", p.stderr)
        with open(out, "rb") as fp:
            self.assertEqual(fp.read(), b"keep me")

    def test_results_without_final_map(self):
        res = self.path("running.h5")
        shutil.copy(self.results, res)
        with h5py.File(res, "r+") as f:
            f["/entry/roi/final"][()] = 0
        p = export("--results", res, "--output", self.path("none.h5"), self.cap)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no final map yet", p.stderr)
        self.assertFalse(os.path.exists(self.path("none.h5")))

    def test_bad_requests(self):
        for args, msg in ((["--ids", "5-2"], "goes down"), (["--ids", "1,x"], "is not an image id"),
                          (["--ids", "0-99999999999"], "more than"), (["--ids", "1", "--results", self.results],
                                                                       "either --results FILE or --ids LIST"),
                          (["--ids", "1", "--deflate", "12"], "--deflate")):
            with self.subTest(args=args):
                p = export(*args, "--output", self.path("bad.h5"), data(EIGER1))
                self.assertNotEqual(p.returncode, 0)
                self.assertIn(msg, p.stderr)
                self.assertFalse(os.path.exists(self.path("bad.h5")))


if __name__ == "__main__":
    unittest.main()
