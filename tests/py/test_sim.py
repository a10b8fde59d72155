"""roid-sim, the detector simulator: wire format of Stream V2 and V1 as
shared/reference/eiger-stream.md describes it, pixels against numpy sums of
the received bytes, compressed payloads against a reference decoder written
here in Python (LZ4 block format + bitshuffle transpose, cross-checked with
the HDF5 LZ4 plugin when libhdf5 has it), and the EIGER HDF5 test files
against the reference sums of shared/testdata/README.md."""
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import cbor2
import numpy as np
import zmq

SIM = os.environ["ROID_SIM"]
DATA = os.environ.get("ROID_TESTDATA", os.path.join(os.path.dirname(__file__), "../../../shared/testdata"))
NP = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}
TA_TAG = {"uint8": 64, "uint16": 69, "uint32": 70}

V2_START_KEYS = {
    "type", "arm_date", "beam_center_x", "beam_center_y", "channels", "count_time",
    "countrate_correction_enabled", "detector_description", "detector_serial_number",
    "detector_translation", "flatfield_enabled", "frame_time", "goniometer", "image_dtype",
    "image_size_x", "image_size_y", "incident_energy", "incident_wavelength", "number_of_images",
    "pixel_mask_enabled", "pixel_size_x", "pixel_size_y", "saturation_value", "sensor_material",
    "sensor_thickness", "series_id", "series_unique_id", "threshold_energy",
    "virtual_pixel_interpolation_enabled",
}


# --------------------------------------------------------------- reference decoders

def lz4_block(src, out_size):
    """LZ4 block format (lz4 doc/lz4_Block_format.md)."""
    dst = bytearray()
    i, n = 0, len(src)
    while True:
        tok = src[i]
        i += 1
        lit = tok >> 4
        if lit == 15:
            while True:
                b = src[i]
                i += 1
                lit += b
                if b != 255:
                    break
        dst += src[i:i + lit]
        i += lit
        if i >= n:
            break
        off = src[i] | src[i + 1] << 8
        i += 2
        if off == 0 or off > len(dst):
            raise ValueError("bad LZ4 offset")
        ml = tok & 15
        if ml == 15:
            while True:
                b = src[i]
                i += 1
                ml += b
                if b != 255:
                    break
        ml += 4
        start = len(dst) - off
        while ml > 0:  # overlapping copies repeat the last `off` bytes
            chunk = dst[start:start + min(ml, off)]
            dst += chunk
            start += len(chunk)
            ml -= len(chunk)
    if len(dst) != out_size:
        raise ValueError(f"LZ4 block decoded to {len(dst)} bytes, expected {out_size}")
    return bytes(dst)


def bitunshuffle(raw, m, s):
    """Inverse bitshuffle of one block of m elements of s bytes: row 8*j+k of m/8
    bytes holds bit k of byte j of every element, element 8*b+q in bit q of byte b."""
    rows = np.frombuffer(raw, np.uint8).reshape(8 * s, m // 8)
    bits = np.unpackbits(rows, axis=1, bitorder="little").reshape(s, 8, m)
    return np.packbits(bits.transpose(2, 0, 1), axis=2, bitorder="little").tobytes()


def bslz4_decode(p, elem):
    orig = int.from_bytes(p[0:8], "big")
    bs = int.from_bytes(p[8:12], "big")
    n, b = orig // elem, bs // elem
    sizes = [b] * (n // b)
    last = n % b - (n % b) % 8
    if last:
        sizes.append(last)
    out, pos = bytearray(), 12
    for m in sizes:
        csize = int.from_bytes(p[pos:pos + 4], "big")
        pos += 4
        out += bitunshuffle(lz4_block(p[pos:pos + csize], m * elem), m, elem)
        pos += csize
    left = (n % 8) * elem
    out += p[pos:pos + left]
    pos += left
    if pos != len(p) or len(out) != orig:
        raise ValueError("bslz4 payload length inconsistent")
    return bytes(out)


def lz4h5_decode(p):
    orig = int.from_bytes(p[0:8], "big")
    bs = int.from_bytes(p[8:12], "big")
    out, pos = bytearray(), 12
    while len(out) < orig:
        want = min(bs, orig - len(out))
        csize = int.from_bytes(p[pos:pos + 4], "big")
        pos += 4
        blk = p[pos:pos + csize]
        out += blk if csize == want else lz4_block(blk, want)
        pos += csize
    if pos != len(p):
        raise ValueError("trailing bytes after the last LZ4 block")
    return bytes(out)


def lz4h5_via_hdf5(p, rows, cols, dtype):
    """Decodes with libhdf5's LZ4 filter plugin (32004), or returns None without it."""
    try:
        import h5py
        from h5py import h5z
        if not h5z.filter_avail(32004):
            return None
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as d:
        with h5py.File(os.path.join(d, "c.h5"), "w") as f:
            ds = f.create_dataset("d", shape=(1, rows, cols), dtype=dtype, chunks=(1, rows, cols), compression=32004)
            ds.id.write_direct_chunk((0, 0, 0), p)
            return ds[0].tobytes()


def valid_stats(px, dtype, mask=None):
    """(sum of pixels neither masked nor at the type maximum, count of the others)."""
    bad = px == np.iinfo(dtype).max
    if mask is not None:
        bad |= mask.reshape(px.shape) != 0
    return int(px[~bad].astype(np.uint64).sum()), int(bad.sum())


# --------------------------------------------------------------- running the simulator

class Run:
    def __init__(self, msgs, manifest, stderr, times, code):
        self.msgs, self.manifest, self.stderr, self.times, self.code = msgs, manifest, stderr, times, code


def is_end(parts, v1):
    if v1:
        return len(parts) == 1 and json.loads(parts[0])["htype"].startswith("dseries_end")
    return cbor2.loads(parts[0])["type"] == "end"


def stream(*args, v1=False, series=1, timeout=60):
    d = tempfile.mkdtemp(prefix="roidsim")
    try:
        ep = f"ipc://{d}/s"
        man = os.path.join(d, "manifest.jsonl")
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVTIMEO, timeout * 1000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ep)
        p = subprocess.Popen([SIM, "--endpoint", ep, "--manifest", man, *args], stderr=subprocess.PIPE, text=True)
        msgs, times, ends = [], [], 0
        try:
            while ends < series:
                parts = sock.recv_multipart()
                times.append(time.monotonic())
                msgs.append(parts)
                ends += is_end(parts, v1)
            _, err = p.communicate(timeout=timeout)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            sock.close()
        with open(man) as f:
            manifest = [json.loads(l) for l in f]
        return Run(msgs, manifest, err, times, p.returncode)
    finally:
        shutil.rmtree(d)


def v2(run):
    return [cbor2.loads(m[0]) for m in run.msgs]


def md_array(item, dtype):
    """tag 40 [[rows, cols], tagT(bytes | tag56500 [...])] -> (rows, cols, payload item)."""
    assert isinstance(item, cbor2.CBORTag) and item.tag == 40, item
    (rows, cols), ta = item.value
    assert isinstance(ta, cbor2.CBORTag) and ta.tag == TA_TAG[dtype], ta
    return rows, cols, ta.value


class StreamV2(unittest.TestCase):
    ROWS, COLS = 48, 64

    def test_fields_and_pixels(self):
        r = stream("--frames", "5", "--shape", f"{self.ROWS}x{self.COLS}", "--channels", "3", "--compression", "none",
                   "--mask", "--series-id", "3")
        self.assertEqual(r.code, 0, r.stderr)
        self.assertTrue(all(m[0][:3] == b"\xd9\xd9\xf7" for m in r.msgs), "tag 55799 first")
        self.assertTrue(all(len(m) == 1 for m in r.msgs), "V2 messages are single-part")
        msgs = v2(r)
        self.assertEqual([m["type"] for m in msgs], ["start"] + ["image"] * 5 + ["end"])
        start, images, end = msgs[0], msgs[1:-1], msgs[-1]

        self.assertTrue(V2_START_KEYS <= set(start), V2_START_KEYS - set(start))
        self.assertEqual(start["channels"], ["threshold_1", "threshold_2", "difference"])
        self.assertEqual((start["image_size_y"], start["image_size_x"]), (self.ROWS, self.COLS))
        self.assertEqual(start["image_dtype"], "uint16")
        self.assertEqual(start["number_of_images"], 5)
        self.assertEqual(start["saturation_value"], 65534)
        self.assertEqual(start["series_id"], 3)
        self.assertEqual(len(start["series_unique_id"]), 26)
        self.assertEqual(set(start["threshold_energy"]), {"threshold_1", "threshold_2"})
        self.assertTrue(start["pixel_mask_enabled"])
        self.assertNotIn("flatfield", start)  # only with header_detail all
        self.assertNotIn("user_data", start)
        masks = {}
        for ch in start["channels"]:
            item = start["pixel_mask"][ch]
            rows, cols, raw = md_array(item, "uint32")
            self.assertEqual((rows, cols), (self.ROWS, self.COLS))
            masks[ch] = np.frombuffer(raw, "<u4").reshape(rows, cols)
        mask = masks["threshold_1"]
        self.assertGreater(int((mask & 1).sum()), 0, "a gap")
        self.assertGreaterEqual(int((mask & 2).sum()), 1, "dead pixels")

        self.assertEqual(end, {"type": "end", "series_id": 3, "series_unique_id": start["series_unique_id"]})
        man = {(l["image_id"], l["channel"]): l for l in r.manifest}
        self.assertEqual(len(man), 15)
        sums = set()
        for i, im in enumerate(images):
            self.assertEqual(im["image_id"], i)
            self.assertEqual(im["series_id"], 3)
            self.assertEqual(im["series_unique_id"], start["series_unique_id"])
            self.assertEqual(im["series_date"], start["arm_date"])
            den = im["real_time"][1]
            self.assertEqual(im["start_time"], [i * round(start["frame_time"] * den), den])
            self.assertEqual(im["stop_time"][0] - im["start_time"][0], im["real_time"][0])
            self.assertEqual(list(im["data"]), start["channels"], "channel order as announced")
            frames = {}
            for ch, item in im["data"].items():
                rows, cols, raw = md_array(item, "uint16")
                self.assertEqual((rows, cols), (self.ROWS, self.COLS))
                self.assertIsInstance(raw, bytes)
                px = np.frombuffer(raw, "<u2").reshape(rows, cols)
                frames[ch] = px
                self.assertTrue((px[(mask & 1) != 0] == 65535).all(), "gap pixels read the maximum")
                s, n = valid_stats(px, np.uint16, mask)
                self.assertEqual((s, n), (man[(i, ch)]["sum"], man[(i, ch)]["masked"]))
                self.assertEqual(man[(i, ch)]["series_id"], 3)
                sums.add(s)
            ok = mask == 0
            t1, t2 = frames["threshold_1"].astype(int), frames["threshold_2"].astype(int)
            diff = np.clip(t1 - t2, 0, None)
            self.assertTrue((frames["difference"][ok] == diff[ok]).all(), "difference = t1 - t2, clipped")
            self.assertGreater(t1[ok].sum(), t2[ok].sum(), "higher threshold, fewer counts")
        self.assertGreater(len(sums), 5, "frames differ")

    def payloads(self, comp, dtype, shape):
        r = stream("--frames", "3", "--shape", shape, "--dtype", dtype, "--compression", comp, "--channels", "2")
        self.assertEqual(r.code, 0, r.stderr)
        out = []
        for im in v2(r)[1:-1]:
            out.append({ch: md_array(item, dtype) for ch, item in im["data"].items()})
        return r, out

    def test_compression(self):
        for dtype, shape in (("uint16", "96x96"), ("uint16", "37x53"), ("uint8", "40x70"), ("uint32", "33x48")):
            elem = np.dtype(NP[dtype]).itemsize
            rows, cols = map(int, shape.split("x"))
            nbytes = rows * cols * elem
            ref_run, ref = self.payloads("none", dtype, shape)
            for comp in ("bslz4", "lz4"):
                with self.subTest(dtype=dtype, shape=shape, comp=comp):
                    run, got = self.payloads(comp, dtype, shape)
                    self.assertEqual(run.manifest, ref_run.manifest, "same frames whatever the compression")
                    for im_ref, im in zip(ref, got):
                        for ch, (r_, c_, item) in im.items():
                            self.assertEqual((r_, c_), (rows, cols))
                            self.assertIsInstance(item, cbor2.CBORTag)
                            self.assertEqual(item.tag, 56500)
                            name, modifier, p = item.value
                            self.assertEqual(name, comp)
                            self.assertEqual(modifier, elem if comp == "bslz4" else 0)
                            self.assertEqual(int.from_bytes(p[0:8], "big"), nbytes)
                            self.assertEqual(int.from_bytes(p[8:12], "big"), 8192)
                            raw = bslz4_decode(p, elem) if comp == "bslz4" else lz4h5_decode(p)
                            self.assertEqual(raw, im_ref[ch][2])
                            if comp == "lz4":
                                h5 = lz4h5_via_hdf5(p, rows, cols, NP[dtype])
                                if h5 is not None:
                                    self.assertEqual(h5, raw, "HDF5 LZ4 plugin agrees")
                    if dtype == "uint16" and shape == "96x96" and comp == "bslz4":
                        size = len(got[0]["threshold_1"][2].value[2])
                        self.assertLess(size, nbytes // 2, "bslz4 compresses the pattern")

    def test_header_detail_all(self):
        r = stream("--frames", "1", "--shape", "16x24", "--channels", "2", "--header-detail", "all",
                   "--compression", "none")
        self.assertEqual(r.code, 0, r.stderr)
        start = v2(r)[0]
        for ch in ("threshold_1", "threshold_2"):
            item = start["flatfield"][ch]
            self.assertEqual(item.tag, 40)
            (rows, cols), ta = item.value
            self.assertEqual((rows, cols, ta.tag, len(ta.value)), (16, 24, 85, 16 * 24 * 4))
            ff = np.frombuffer(ta.value, "<f4")
            self.assertTrue(((ff > 0.9) & (ff < 1.1)).all())
            rows, cols, raw = md_array(start["pixel_mask"][ch], "uint32")
            self.assertEqual(len(raw), 16 * 24 * 4)
            self.assertFalse(np.frombuffer(raw, "<u4").any(), "no --mask: nothing masked")
        lut = start["countrate_correction_lookup_table"]
        self.assertEqual(lut.tag, 70)
        self.assertGreater(len(lut.value), 0)
        self.assertEqual(len(lut.value) % 4, 0)

    def test_user_data_and_scan(self):
        ud = {"proposal": "mx1234", "values": [1, 2.5, True, None, "x"], "nested": {"a": -3}}
        r = stream("--shape", "8x8", "--user-data", json.dumps(ud), "--scan", "3x4,snake", "--image-user-data",
                   '{"position": [0, 0], "tag": "p"}')
        self.assertEqual(r.code, 0, r.stderr)
        msgs = v2(r)
        start, images = msgs[0], msgs[1:-1]
        want = dict(ud, scan={"shape": [3, 4], "snake": True, "fast_axis": "x"})
        self.assertEqual(start["user_data"], want)
        self.assertEqual(start["number_of_images"], 12, "--frames defaults to the scan points")
        self.assertEqual(len(images), 12)
        for im in images:
            i = im["image_id"]
            y, x = divmod(i, 4)
            if y % 2:
                x = 3 - x
            self.assertEqual(im["user_data"], {"position": [x, y], "tag": "p"})

    def test_multiple_series(self):
        r = stream("--series", "3", "--series-id", "7", "--frames", "4", "--shape", "8x16", series=3)
        self.assertEqual(r.code, 0, r.stderr)
        msgs = v2(r)
        self.assertEqual([m["type"] for m in msgs], (["start"] + ["image"] * 4 + ["end"]) * 3)
        uids = set()
        for k in range(3):
            block = msgs[6 * k:6 * k + 6]
            self.assertTrue(all(m["series_id"] == 7 + k for m in block))
            self.assertEqual(len({m["series_unique_id"] for m in block}), 1)
            uids.add(block[0]["series_unique_id"])
            self.assertEqual([m["image_id"] for m in block[1:-1]], [0, 1, 2, 3])
        self.assertEqual(len(uids), 3, "a unique id per series")
        self.assertEqual([l["series_id"] for l in r.manifest], [7] * 4 + [8] * 4 + [9] * 4)

    def test_rate(self):
        r = stream("--frames", "200", "--rate", "1000", "--shape", "16x16")
        self.assertEqual(r.code, 0, r.stderr)
        self.assertEqual(len(r.msgs), 202)
        # image 0 to image 199: 199 periods of 1 ms; a lower bound only.
        self.assertGreaterEqual(r.times[-2] - r.times[1], 0.18)
        self.assertIn("200 images", r.stderr)


class StreamV1(unittest.TestCase):
    ROWS, COLS = 24, 40

    def run_v1(self, *args):
        r = stream("--format", "v1", "--shape", f"{self.ROWS}x{self.COLS}", *args, v1=True)
        self.assertEqual(r.code, 0, r.stderr)
        return r

    def test_header_detail(self):
        for detail, nparts in (("none", 1), ("basic", 2), ("all", 8)):
            for appendix in (False, True):
                with self.subTest(detail=detail, appendix=appendix):
                    extra = ["--user-data", '{"sample": "lysozyme"}'] if appendix else []
                    r = self.run_v1("--frames", "2", "--header-detail", detail, "--series-id", "5", *extra)
                    head = r.msgs[0]
                    self.assertEqual(len(head), nparts + appendix)
                    h1 = json.loads(head[0])
                    self.assertEqual(h1, {"htype": "dheader-1.0", "series": 5, "header_detail": detail})
                    if nparts >= 2:
                        cfg = json.loads(head[1])
                        self.assertEqual(list(cfg), sorted(cfg), "alphabetical keys, like the detector")
                        self.assertEqual((cfg["x_pixels_in_detector"], cfg["y_pixels_in_detector"]),
                                         (self.COLS, self.ROWS))
                        self.assertEqual((cfg["bit_depth_image"], cfg["nimages"], cfg["ntrigger"]), (16, 2, 1))
                        self.assertEqual(cfg["compression"], "bslz4")
                    if nparts == 8:
                        npx = self.ROWS * self.COLS
                        for k, htype, typ in ((2, "dflatfield-1.0", "float32"), (4, "dpixelmask-1.0", "uint32")):
                            j = json.loads(head[k])
                            self.assertEqual((j["htype"], j["shape"], j["type"]), (htype, [self.COLS, self.ROWS], typ))
                            self.assertEqual(len(head[k + 1]), npx * 4)
                        j = json.loads(head[6])
                        self.assertEqual(j["htype"], "dcountrate_table-1.0")
                        self.assertEqual(len(head[7]), j["shape"][0] * j["shape"][1] * 4)
                    if appendix:
                        self.assertEqual(json.loads(head[-1]), {"sample": "lysozyme"})
                    self.assertEqual(len(r.msgs), 4)
                    self.assertEqual(json.loads(r.msgs[-1][0]), {"htype": "dseries_end-1.0", "series": 5})

    def images(self, r):
        out = []
        for parts in r.msgs[1:-1]:
            self.assertIn(len(parts), (4, 5))
            p1, p2, p4 = json.loads(parts[0]), json.loads(parts[1]), json.loads(parts[3])
            self.assertEqual(p1["htype"], "dimage-1.0")
            self.assertEqual(p1["hash"], hashlib.md5(parts[1]).hexdigest(), "hash = MD5 of part 2")
            self.assertEqual(p2["htype"], "dimage_d-1.0")
            self.assertEqual(p2["shape"], [self.COLS, self.ROWS], "V1 shape is [width, height]")
            self.assertEqual(p2["size"], len(parts[2]))
            self.assertEqual(p4["htype"], "dconfig-1.0")
            self.assertEqual(p4["stop_time"] - p4["start_time"], p4["real_time"])
            out.append((p1, p2, parts[2], p4, parts[4] if len(parts) == 5 else None))
        return out

    def test_images_and_compression(self):
        ref = self.run_v1("--frames", "4", "--compression", "none")
        ims = self.images(ref)
        self.assertEqual([p1["frame"] for p1, *_ in ims], [0, 1, 2, 3])
        self.assertEqual([p4["start_time"] for *_, p4, _ in ims][:2], [0, 1000000], "1 ms nominal frames, ns")
        for (p1, p2, blob, _, _), man in zip(ims, ref.manifest):
            self.assertEqual((p2["encoding"], p2["type"]), ("<", "uint16"))
            px = np.frombuffer(blob, "<u2").reshape(self.ROWS, self.COLS)
            self.assertEqual(valid_stats(px, np.uint16), (man["sum"], man["masked"]))
        for comp, enc in (("lz4", "lz4<"), ("bslz4", "bs16-lz4<")):
            with self.subTest(comp=comp):
                r = self.run_v1("--frames", "4", "--compression", comp)
                self.assertEqual(r.manifest, ref.manifest)
                for (_, p2, blob, _, _), (_, _, raw, _, _) in zip(self.images(r), ims):
                    self.assertEqual(p2["encoding"], enc)
                    if comp == "lz4":
                        self.assertEqual(lz4_block(blob, len(raw)), raw, "one raw LZ4 block, no header")
                    else:
                        self.assertEqual(int.from_bytes(blob[0:8], "big"), len(raw))
                        self.assertEqual(int.from_bytes(blob[8:12], "big"), 8192)
                        self.assertEqual(bslz4_decode(blob, 2), raw)
        r = self.run_v1("--frames", "2", "--dtype", "uint32", "--compression", "bslz4")
        self.assertEqual(self.images(r)[0][1]["encoding"], "bs32-lz4<")

    def test_manifest_sum_with_mask(self):
        # V1 carries the mask only with header_detail all: use it to check the sums.
        r = self.run_v1("--frames", "3", "--compression", "none", "--mask", "--header-detail", "all")
        mask = np.frombuffer(r.msgs[0][5], "<u4")
        self.assertTrue((mask & 1).any() and (mask & 2).any(), "a gap and dead pixels")
        self.assertEqual(json.loads(r.msgs[0][1])["number_of_excluded_pixels"], int((mask != 0).sum()))
        for (_, _, blob, _, _), man in zip(self.images(r), r.manifest):
            px = np.frombuffer(blob, "<u2")
            self.assertTrue((px[(mask & 1) != 0] == 65535).all(), "gap pixels read the maximum")
            self.assertEqual(valid_stats(px, np.uint16, mask), (man["sum"], man["masked"]))

    def test_image_appendix(self):
        r = self.run_v1("--frames", "4", "--scan", "2x2", "--image-user-data", '{"position": [9, 9]}')
        self.assertEqual([json.loads(a) for *_, a in self.images(r)],
                         [{"position": p} for p in ([0, 0], [1, 0], [0, 1], [1, 1])])
        self.assertEqual(json.loads(r.msgs[0][-1])["scan"], {"shape": [2, 2], "snake": False, "fast_axis": "x"})


class FileSource(unittest.TestCase):
    # testdata/README.md: per frame (valid sum, pixels at 65535)
    FILES = {
        "eiger-h5/eiger2_simread7_2datafiles_4images_bslz4_data_000001.h5": ((512, 1028), 3648540, 0),
        "eiger-h5/eiger2_simread7_2datafiles_4images_lz4_data_000001.h5": ((512, 1028), 3648540, 0),
        "eiger-h5/eiger1_testmode10_2datafiles_4images_bslz4_data_000001.h5": ((1065, 1030), 10401533, 38164),
    }

    def test_reference_sums(self):
        for rel, (shape, ref_sum, ref_masked) in self.FILES.items():
            with self.subTest(file=rel):
                r = stream("--source", "file:" + os.path.join(DATA, rel), "--compression", "none", "--frames", "3")
                self.assertEqual(r.code, 0, r.stderr)
                msgs = v2(r)
                self.assertEqual((msgs[0]["image_size_y"], msgs[0]["image_size_x"]), shape)
                self.assertEqual(len(msgs), 5)
                for im, man in zip(msgs[1:-1], r.manifest):
                    rows, cols, raw = md_array(im["data"]["threshold_1"], "uint16")
                    px = np.frombuffer(raw, "<u2").reshape(rows, cols)
                    self.assertEqual(valid_stats(px, np.uint16), (ref_sum, ref_masked))
                    self.assertEqual((man["sum"], man["masked"]), (ref_sum, ref_masked))


    def test_reference_decoder_on_real_chunks(self):
        """The Python decoders above, on chunks the detector wrote (filters 32008, 32004)."""
        import h5py
        for rel in ("eiger-h5/eiger2_simread7_2datafiles_4images_bslz4_data_000001.h5",
                    "eiger-h5/eiger2_simread7_2datafiles_4images_lz4_data_000001.h5"):
            with self.subTest(file=rel), h5py.File(os.path.join(DATA, rel), "r") as f:
                ds = f["/entry/data/data"]
                for i in range(ds.shape[0]):
                    _, chunk = ds.id.read_direct_chunk((i, 0, 0))
                    raw = bslz4_decode(chunk, 2) if "bslz4" in rel else lz4h5_decode(chunk)
                    px = np.frombuffer(raw, "<u2")
                    self.assertEqual(valid_stats(px, np.uint16), (3648540, 0))


class Errors(unittest.TestCase):
    def sim(self, *args):
        return subprocess.run([SIM, *args], capture_output=True, text=True, timeout=30)

    def test_rejects(self):
        for args in (["--format", "v1", "--channels", "2"], ["--shape", "0x5"], ["--dtype", "int16"],
                     ["--source", "nosuch"], ["--source", "file:/nonexistent.h5"],
                     ["--user-data", "{not json"], ["--scan", "2x2", "--user-data", "[1]"], ["--frames", "-1"]):
            with self.subTest(args=args):
                p = self.sim("--endpoint", "ipc:///tmp/roidsim-unused", *args)
                self.assertNotEqual(p.returncode, 0)
                self.assertIn("roid-sim:", p.stderr)

    def test_rejects_positions_and_motor_grid(self):
        """--positions and --scan's motor keys: a clear error and a non-zero exit, never a hang."""
        d = tempfile.mkdtemp(prefix="roidsim")
        try:
            fifo = os.path.join(d, "fifo")
            os.mkfifo(fifo)
            big = os.path.join(d, "big.json")
            with open(big, "w") as f:  # over the file limit, though each element is fine
                f.write("[" + ",".join(["[0,0]"] * 1200000) + "]")
            flat = os.path.join(d, "flat.json")
            with open(flat, "w") as f:
                f.write("[0,0]")
            iud = ["--image-user-data", '{"position":[0,0]}']
            cases = ((["--scan", "4x4", *iud, "--positions", fifo], "not a regular file"),
                     (["--scan", "4x4", *iud, "--positions", big], "bytes, at most"),
                     (["--scan", "4x4", *iud, "--positions", flat], "element 0"),
                     (["--scan", "4x4,origin=1e308:1e308,step=1e308:1e308"], "out of range"),
                     (["--scan", "4x4,units=\udcff\udcfe"], "not UTF-8"))
            for args, why in cases:
                with self.subTest(args=args[:2]):
                    p = subprocess.run([SIM, "--endpoint", "ipc:///tmp/roidsim-unused", *args], capture_output=True,
                                       timeout=30, errors="surrogateescape", text=True)
                    self.assertNotEqual(p.returncode, 0)
                    self.assertIn(why, p.stderr)
        finally:
            shutil.rmtree(d)

    def test_wait_connect_times_out(self):
        d = tempfile.mkdtemp(prefix="roidsim")
        try:
            t = time.monotonic()
            p = self.sim("--endpoint", f"ipc://{d}/s", "--wait-connect", "0.3", "--frames", "1")
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("no receiver", p.stderr)
            self.assertGreaterEqual(time.monotonic() - t, 0.25)
        finally:
            shutil.rmtree(d)

    def test_help(self):
        p = self.sim("--help")
        self.assertEqual(p.returncode, 0)
        for opt in ("--format", "--shape", "--compression", "--manifest", "--source", "--scan", "--rate"):
            self.assertIn(opt, p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
