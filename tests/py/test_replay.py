"""roid replay --jsonl and roid record, against the real detector data in
shared/testdata and its independently computed reference values."""
import json
import os
import socket
import subprocess
import tempfile
import unittest

import cbor2
import h5py
import zmq

ROID = os.environ["ROID"]
DATA = os.environ.get("ROID_TESTDATA", os.path.join(os.path.dirname(__file__), "../../../shared/testdata"))


def data(rel):
    return os.path.join(DATA, rel)


def read(rel):
    with open(data(rel), "rb") as f:
        return f.read()


def replay(*args, check=True):
    p = subprocess.run([ROID, "replay", "--jsonl", *args], capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"roid replay exited {p.returncode}: {p.stderr}")
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    return p, lines


def frames(lines):
    return [l for l in lines if "sum" in l]


class ReplayStream2(unittest.TestCase):
    """Stream V2 image messages (three channels, bslz4 uint16) and the end message."""

    # testdata/README.md: per image, (channel -> (valid sum, pixels at 65535))
    REF = {
        0: {"threshold_1": (909218, 0), "threshold_2": (908375, 0), "difference": (305475, 194490)},
        1: {"threshold_1": (909218, 0), "threshold_2": (908375, 0), "difference": (305467, 194494)},
        2: {"threshold_1": (909218, 0), "threshold_2": (908375, 0), "difference": (305512, 194543)},
    }

    def test_reference_values(self):
        files = [data(f"stream2/r500k_bslz4_16bit_00000{i}.cbor") for i in (1, 2, 3)]
        files.append(data("stream2/r500k_bslz4_16bit_000011.cbor"))
        p, lines = replay(*files)
        got = frames(lines)
        self.assertEqual(len(got), 9, p.stderr)
        for f in got:
            want_sum, want_masked = self.REF[f["image_id"]][f["channel"]]
            self.assertEqual((f["sum"], f["masked"]), (want_sum, want_masked), f)
            self.assertEqual((f["height"], f["width"]), (514, 1030))
            self.assertEqual(f["series_id"], 1)
            self.assertEqual(f["series_unique_id"], "01GRXWT80JSDY2FNW8SGCCDZD9")
        ends = [l for l in lines if l.get("event") == "end"]
        self.assertEqual(len(ends), 1)
        self.assertTrue(ends[0]["terminated"], "the end message closes the series")
        self.assertEqual(ends[0]["images"], 3)

    def test_analysis_channel_from_config(self):
        """replay --output-dir analyses the configuration's [detector] channel, as the daemon would."""
        files = [data(f"stream2/r500k_bslz4_16bit_00000{i}.cbor") for i in (1, 2, 3)]
        files.append(data("stream2/r500k_bslz4_16bit_000011.cbor"))
        with tempfile.TemporaryDirectory() as d:
            for chan, name in (("threshold_2", "threshold_2"), (None, "threshold_1")):  # None: the default
                conf, out = os.path.join(d, f"{name}.conf"), os.path.join(d, name)
                os.mkdir(out)
                with open(conf, "w") as f:
                    f.write((f"[detector]\nchannel = {chan}\n" if chan else "") + "[scan]\nshape = 1x3\n")
                p = subprocess.run([ROID, "replay", "--config", conf, "--output-dir", out, *files],
                                   capture_output=True, text=True, timeout=300)
                self.assertEqual(p.returncode, 0, p.stderr)
                (res,) = os.listdir(out)
                with h5py.File(os.path.join(out, res), "r") as h:
                    sums = sorted(int(v) for v in h["/entry/features/sum"][()])
                want = sorted(self.REF[i][name][0] for i in range(3))
                self.assertEqual(sums, want, f"channel '{chan}' analyses {name}")

    def test_source_is_absolute(self):
        """The results file names its input by absolute path, so that a reader elsewhere finds it
        (and the data files a master links), though replay was given a relative one."""
        rel = [f"stream2/r500k_bslz4_16bit_00000{i}.cbor" for i in (1, 2, 3)]
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "out")
            os.mkdir(out)
            p = subprocess.run([ROID, "replay", "--scan", "1x3", "--output-dir", out, *rel], cwd=DATA,
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(p.returncode, 0, p.stderr)
            (res,) = os.listdir(out)
            with h5py.File(os.path.join(out, res), "r") as h:
                self.assertEqual(h["/entry"].attrs["source"], os.path.realpath(data(rel[0])))

    def test_channel_selection(self):
        p, lines = replay("--channel", "difference", data("stream2/r500k_bslz4_16bit_000002.cbor"))
        got = frames(lines)
        self.assertEqual([(f["channel"], f["sum"], f["masked"]) for f in got], [("difference", 305467, 194494)])

    def test_strict_drops_images_without_start(self):
        p, lines = replay("--strict", data("stream2/r500k_bslz4_16bit_000001.cbor"))
        self.assertEqual(frames(lines), [])
        self.assertIn("images_before_start=1", p.stderr)


class ReplayHDF5(unittest.TestCase):
    """EIGER HDF5 data files, chunks decoded by roid's own codecs."""

    def check(self, name, masked, valid):
        p, lines = replay(data(f"eiger-h5/{name}"))
        got = frames(lines)
        self.assertEqual(len(got), 2, p.stderr)
        self.assertEqual([f["image_id"] for f in got], [0, 1])
        for f in got:
            self.assertEqual((f["sum"], f["masked"]), (valid, masked), f)

    def test_eiger1_bslz4(self):
        self.check("eiger1_testmode10_2datafiles_4images_bslz4_data_000001.h5", 38164, 10401533)

    def test_eiger1_lz4(self):
        self.check("eiger1_testmode10_2datafiles_4images_lz4_data_000001.h5", 38164, 10401533)

    def test_eiger2_bslz4(self):
        self.check("eiger2_simread7_2datafiles_4images_bslz4_data_000001.h5", 0, 3648540)

    def test_eiger2_lz4(self):
        self.check("eiger2_simread7_2datafiles_4images_lz4_data_000001.h5", 0, 3648540)


def v1_messages(blob, series=3, frames=(0,), encoding="bs16-lz4<", shape=(4148, 4362)):
    hdr = [json.dumps({"htype": "dheader-1.0", "series": series, "header_detail": "none"}).encode()]
    msgs = [hdr]
    for fr in frames:
        d = json.dumps({"htype": "dimage_d-1.0", "shape": list(shape), "type": "uint16",
                        "encoding": encoding, "size": len(blob)}).encode()
        msgs.append([
            json.dumps({"htype": "dimage-1.0", "series": series, "frame": fr, "hash": ""}).encode(),
            d, blob,
            json.dumps({"htype": "dconfig-1.0", "start_time": 0, "stop_time": 1000, "real_time": 1000}).encode(),
        ])
    msgs.append([json.dumps({"htype": "dseries_end-1.0", "series": series}).encode()])
    return msgs


class ReplayStream1(unittest.TestCase):
    """A Stream V1 series around the real EIGER2 16M data part, as a capture."""

    def test_capture_of_v1(self):
        blob = read("stream1/eiger2-16m-frame.bs16-lz4")
        with tempfile.TemporaryDirectory() as d:
            cap = os.path.join(d, "v1.cbors")
            with open(cap, "wb") as f:
                for m in v1_messages(blob, frames=(0, 1)):
                    f.write(cbor2.dumps(m))
            p, lines = replay(cap)
        got = frames(lines)
        self.assertEqual(len(got), 2, p.stderr)
        for f in got:
            self.assertEqual((f["height"], f["width"]), (4362, 4148), "V1 shape is [width, height]")
            self.assertEqual((f["sum"], f["masked"]), (9876, 1253074))
            self.assertEqual(f["series_id"], 3)

    def test_corrupt_frame_reported_and_next_processed(self):
        blob = read("stream1/eiger2-16m-frame.bs16-lz4")
        bad = bytearray(blob)
        bad[len(bad) // 2: len(bad) // 2 + 64] = b"\xff" * 64
        msgs = v1_messages(blob, frames=(0, 1))
        msgs[1][2] = bytes(bad)
        with tempfile.TemporaryDirectory() as d:
            cap = os.path.join(d, "v1.cbors")
            with open(cap, "wb") as f:
                for m in msgs:
                    f.write(cbor2.dumps(m))
            p, lines = replay(cap)
        errors = [l for l in lines if "error" in l]
        self.assertEqual(len(errors), 1, lines)
        self.assertEqual(errors[0]["image_id"], 0)
        self.assertIn("bslz4", errors[0]["error"])
        self.assertEqual([(f["image_id"], f["sum"]) for f in frames(lines)], [(1, 9876)])
        self.assertIn("frames_failed=1", p.stderr)


class Record(unittest.TestCase):
    """roid record saves a live stream as a capture that replays identically."""

    def test_record_then_replay(self):
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        port = push.bind_to_random_port("tcp://127.0.0.1")
        files = [f"stream2/r500k_bslz4_16bit_00000{i}.cbor" for i in (1, 2, 3)]
        files.append("stream2/r500k_bslz4_16bit_000011.cbor")
        msgs = [[read(f)] for f in files]
        blob = read("stream1/eiger2-16m-frame.bs16-lz4")
        msgs += v1_messages(blob, series=9, frames=(0,))
        with tempfile.TemporaryDirectory() as d:
            cap = os.path.join(d, "live.cbors")
            rec = subprocess.Popen([ROID, "record", f"tcp://127.0.0.1:{port}", cap, "--count", str(len(msgs))],
                                   stderr=subprocess.PIPE, text=True)
            for m in msgs:
                push.send_multipart(m)
            _, err = rec.communicate(timeout=60)
            self.assertEqual(rec.returncode, 0, err)
            # The capture is a CBOR sequence of arrays of byte strings, one per message.
            with open(cap, "rb") as f:
                dec = cbor2.CBORDecoder(f)
                got = []
                while f.tell() < os.path.getsize(cap):
                    got.append(dec.decode())
            self.assertEqual(got, msgs)
            p, lines = replay(cap)
        push.close(0)
        ctx.term()
        sums = sorted((f["series_id"], f["image_id"], f["channel"], f["sum"]) for f in frames(lines))
        self.assertEqual(len(sums), 10)
        self.assertIn((9, 0, "image", 9876), sums)
        self.assertIn((1, 1, "difference", 305467), sums)


class AnalysisBound(unittest.TestCase):
    """replay --output-dir keeps a record per announced image besides the RoI
    state: [limits] max_analysis_bytes bounds both, the frames of a refused
    series are counted in the log, and a larger bound analyses the same
    capture."""

    def test_records_count_against_the_bound(self):
        sim = os.environ["ROID_SIM"]
        with tempfile.TemporaryDirectory() as d:
            cap = os.path.join(d, "fly.cbors")
            with socket.socket() as so:  # a free port for the simulator to bind
                so.bind(("127.0.0.1", 0))
                port = so.getsockname()[1]
            n = 3000  # announced and sent: 3000 records of ~0.25 KB for a 4 x 4 grid of ~0.2 MB
            rec = subprocess.Popen([ROID, "record", f"tcp://127.0.0.1:{port}", cap, "--count", str(n + 2)],
                                   stderr=subprocess.PIPE, text=True)
            subprocess.run([sim, "--endpoint", f"tcp://127.0.0.1:{port}", "--shape", "16x16", "--frames", str(n),
                            "--quiet"], check=True, timeout=120)
            _, err = rec.communicate(timeout=60)
            self.assertEqual(rec.returncode, 0, err)
            runs = {}
            for bound in ("512K", "4M"):
                conf = os.path.join(d, f"{bound}.conf")
                with open(conf, "w") as f:
                    f.write(f"[scan]\nshape = 4x4\n[limits]\nmax_analysis_bytes = {bound}\n")
                out = os.path.join(d, bound)
                os.mkdir(out)
                p = subprocess.run([ROID, "replay", "--config", conf, "--output-dir", out, cap],
                                   capture_output=True, text=True, timeout=300)
                self.assertEqual(p.returncode, 0, p.stderr)
                runs[bound] = (p.stderr, sorted(os.listdir(out)))
        err, files = runs["512K"]
        self.assertIn(f"{n} frame records", err)
        self.assertIn("max_analysis_bytes", err)
        self.assertIn(f"{n} frames not analysed", err)
        self.assertEqual(files, [], "no results file for the refused series")
        err, files = runs["4M"]
        self.assertNotIn("not analysed", err)
        self.assertEqual(len(files), 1, f"one results file under the larger bound: {files} {err[-500:]}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
