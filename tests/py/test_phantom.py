"""roid-sim --source phantom: the simulated ptychography scan obeys the physics
the RoI features rely on, and its ground-truth file agrees with the frames.

Frames are received over ZeroMQ (Stream V2, uncompressed) and measured here
with numpy: T (total counts) and the centre of mass (CoM).  Expectations come
from the physics, not from the simulator: an empty beam carries the requested
photon count with Poisson noise and its CoM sits at the beam centre; absorption
lowers T; a pure phase object leaves T alone and shifts the CoM by
N/(2 pi) * <grad phi> weighted by the probe intensity (the DPC theorem).
"""
import json
import os
import socket
import subprocess
import tempfile
import unittest

import cbor2
import numpy as np
import zmq

SIM = os.environ["ROID_SIM"]
N = 64
NY, NX = 24, 24
PHOTONS = 1e6
SEED = 3


def tag_value(x):
    return x.value if isinstance(x, cbor2.CBORTag) else x


def decode_image(data):
    """tag 40 [[rows, cols], tag 69 (uint16 LE) bytes] -> 2-D array."""
    (rows, cols), payload = tag_value(data)
    return np.frombuffer(tag_value(payload), dtype="<u2").reshape(rows, cols).astype(np.float64)


def run_sim(tmp, scan, arg, shape=f"{N}x{N}"):
    """Streams one series; returns ({image_id: ([x, y], frame)}, truth, stderr)."""
    truth = os.path.join(tmp, "truth.json")
    with socket.socket() as s:  # a free port for the simulator to bind
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, 60000)
    cmd = [SIM, "--source", f"phantom:{arg},truth={truth}", "--shape", shape, "--scan", scan,
           "--compression", "none", "--endpoint", f"tcp://127.0.0.1:{port}",
           "--image-user-data", '{"position":[0,0]}']
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    pull.connect(f"tcp://127.0.0.1:{port}")
    frames = {}
    try:
        while True:
            m = cbor2.loads(pull.recv())
            if m["type"] == "image":
                frames[m["image_id"]] = (m["user_data"]["position"], decode_image(m["data"]["threshold_1"]))
            elif m["type"] == "end":
                break
    finally:
        _, err = p.communicate(timeout=60)
        pull.close(0)
        ctx.term()
    if p.returncode != 0:
        raise AssertionError(f"roid-sim exited {p.returncode}: {err}")
    with open(truth) as f:
        return frames, json.load(f), err


def maps(frames, ny, nx):
    """T, CoM x and CoM y as ny x nx maps, placed by the stream's [x, y] positions."""
    T = np.full((ny, nx), np.nan)
    cx = np.full((ny, nx), np.nan)
    cy = np.full((ny, nx), np.nan)
    for (x, y), f in frames.values():
        idx = np.arange(f.shape[0], dtype=np.float64)
        t = f.sum()
        T[y, x] = t
        cx[y, x] = (f.sum(axis=0) * idx).sum() / t
        cy[y, x] = (f.sum(axis=1) * idx).sum() / t
    return T, cx, cy


def dilate(mask, k):
    """Scan points within Chebyshev distance k of the mask."""
    out = mask.copy()
    ny, nx = mask.shape
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            sh = np.zeros_like(mask)
            sh[max(dy, 0):ny + min(dy, 0), max(dx, 0):nx + min(dx, 0)] = \
                mask[max(-dy, 0):ny + min(-dy, 0), max(-dx, 0):nx + min(-dx, 0)]
            out |= sh
    return out


def components(mask):
    """4-connected components of a boolean map, as lists of (row, col)."""
    seen = np.zeros_like(mask)
    comps = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, comp = [start], []
        seen[start] = True
        while stack:
            r, c = stack.pop()
            comp.append((r, c))
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        comps.append(comp)
    return comps


class Phantom(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with tempfile.TemporaryDirectory() as d:
            cls.frames, cls.truth, cls.stderr = run_sim(d, f"{NY}x{NX}", f"seed={SEED},photons={PHOTONS:g},particles=5")
        cls.T, cls.cx, cls.cy = maps(cls.frames, NY, NX)
        t = cls.truth
        cls.obj = np.array(t["object_mask"], dtype=bool)
        cls.main = np.array(t["main_mask"], dtype=bool)
        cls.small = np.array(t["small_mask"], dtype=bool)
        cls.bx, cls.by = t["beam_center"]
        cls.shift = np.hypot(cls.cx - cls.bx, cls.cy - cls.by)
        # Clean background: probe centre more than two scan steps beyond the masks,
        # so the Airy tails hardly reach the object.
        cls.bg = ~dilate(cls.obj, 2)

    def test_stream_and_truth_layout(self):
        t = self.truth
        self.assertEqual(len(self.frames), NY * NX, self.stderr)
        self.assertEqual((t["ny"], t["nx"], t["snake"], t["rows"], t["cols"]), (NY, NX, False, N, N))
        self.assertEqual(t["beam_center"], [N / 2, N / 2])
        for m in (self.obj, self.main, self.small):
            self.assertEqual(m.shape, (NY, NX))
        np.testing.assert_array_equal(self.obj, self.main | self.small)
        # Acquisition order: row-major, x fast; the stream's positions and the truth agree.
        for k, ((x, y), _) in self.frames.items():
            self.assertEqual(t["frame_order"][k], [k // NX, k % NX])
            self.assertEqual([y, x], t["frame_order"][k])
        self.assertFalse(np.isnan(self.T).any())
        self.assertGreaterEqual(len(t["particles"]), 3, "small particles were placed")
        self.assertGreater(self.main.sum(), 20)
        self.assertGreater(self.bg.sum(), 100, "enough clean background")

    def test_empty_beam(self):
        T, n = self.T[self.bg], self.bg.sum()
        # Mean within 0.3 % of the requested photons; spread close to Poisson's sqrt(T).
        self.assertLess(abs(T.mean() / PHOTONS - 1), 3e-3, T.mean())
        self.assertLess(T.std(), 1.5 * np.sqrt(PHOTONS), T.std())
        self.assertGreater(T.std(), 0.5 * np.sqrt(PHOTONS), "Poisson noise is present")
        # CoM noise expected from photon statistics: sqrt(var of the beam profile / T).
        mean_pattern = np.mean([f for (x, y), f in self.frames.values() if self.bg[y, x]], axis=0)
        idx = np.arange(N)
        px = mean_pattern.sum(axis=0) / mean_pattern.sum()
        sigma = np.sqrt((px * (idx - (px * idx).sum()) ** 2).sum() / PHOTONS)
        for c, centre in ((self.cx[self.bg], self.bx), (self.cy[self.bg], self.by)):
            self.assertLess(abs(c.mean() - centre), 5 * sigma / np.sqrt(n) + 1e-3, (c.mean(), centre, sigma))
            self.assertLess(c.std(), 2.0 * sigma, (c.std(), sigma))
            self.assertGreater(c.std(), 0.5 * sigma, (c.std(), sigma))

    def test_absorption_on_main_particle(self):
        outside = self.T[~self.obj].mean()
        self.assertLess(self.T[self.main].mean(), 0.9 * outside)
        # Deep inside (probe 90 % radius inside the particle) T/T0 ~ exp(-2 mu), mu = mu0 +- 35 %.
        core = self.main & ~dilate(~self.main, 3)
        self.assertGreater(core.sum(), 0)
        ratio = np.median(self.T[core]) / outside
        mu0 = self.truth["main"]["mu0"]
        self.assertGreater(ratio, np.exp(-2 * mu0 * 1.35), (ratio, mu0))
        self.assertLess(ratio, np.exp(-2 * mu0 * 0.65), (ratio, mu0))
        # The transmission map is darker on the particle than anywhere on clean background.
        self.assertLess(self.T[core].max(), self.T[self.bg].min())

    def test_phase_particles_shift_com_not_T(self):
        bg_mean, bg_std = self.shift[self.bg].mean(), self.shift[self.bg].std()
        self.assertGreater(self.shift[self.small].mean(), bg_mean + 3 * bg_std,
                           (self.shift[self.small].mean(), bg_mean, bg_std))
        # Pure phase: T stays at the empty-beam value (within 0.5 %).
        self.assertLess(abs(self.T[self.small].mean() / self.T[self.bg].mean() - 1), 5e-3)
        # Every particle is seen: each component of small_mask holds a clear CoM shift.
        comps = components(self.small)
        self.assertEqual(len(comps), len(self.truth["particles"]))
        for comp in comps:
            best = max(self.shift[p] for p in comp)
            self.assertGreater(best, bg_mean + 10 * bg_std, (comp, best, bg_mean, bg_std))
        # And off the masks (clean background) nothing is: the masks are where the signal is.
        self.assertLess(self.shift[self.bg].max(), bg_mean + 6 * bg_std)

    def test_dpc_theorem(self):
        """Near each small particle the measured CoM shift equals N/(2 pi) <grad phi>_|P|^2,
        with the probe and the particle built here from the truth's geometry."""
        t = self.truth
        a, defocus, step = t["pupil_radius_px"], t["defocus_rad"], t["step_px"]
        k = np.fft.fftfreq(N) * N
        k2 = k[None, :] ** 2 + k[:, None] ** 2
        pupil = np.where(k2 <= a * a, np.exp(1j * defocus * k2 / (a * a)), 0)
        prob = np.abs(np.fft.fftshift(np.fft.ifft2(pupil))) ** 2
        prob /= prob.sum()
        yy, xx = np.mgrid[0:N, 0:N].astype(np.float64)
        num = den = 0.0
        for part in t["particles"]:
            for row in range(NY):
                for col in range(NX):
                    x0, y0 = col * step, row * step  # window origin in object pixels
                    d = np.hypot(xx + x0 - part["x"], yy + y0 - part["y"])
                    if d[N // 2, N // 2] > part["radius"] + t["probe_radius_px"]:
                        continue
                    phi = part["phi"] * np.clip(0.5 - (d - part["radius"]) / 2, 0, 1)
                    gy, gx = np.gradient(phi)
                    pred = N / (2 * np.pi) * np.array([(prob * gx).sum(), (prob * gy).sum()])
                    meas = np.array([self.cx[row, col] - self.bx, self.cy[row, col] - self.by])
                    num += np.hypot(*(meas - pred))
                    den += np.hypot(*pred)
        self.assertGreater(den, 0)
        self.assertLess(num / den, 0.25, (num, den))


class Ordering(unittest.TestCase):
    def test_snake_maps_like_raster(self):
        with tempfile.TemporaryDirectory() as d:
            fr_r, tr_r, _ = run_sim(d, "12x10", "seed=5,particles=2")
            fr_s, tr_s, _ = run_sim(d, "12x10,snake", "seed=5,particles=2")
        self.assertTrue(tr_s["snake"])
        for k, ((x, y), _) in fr_s.items():
            row, col = k // 10, k % 10
            self.assertEqual([y, x], [row, 9 - col if row % 2 else col])
            self.assertEqual(tr_s["frame_order"][k], [y, x])
        np.testing.assert_array_equal(tr_s["object_mask"], tr_r["object_mask"])
        T_r, _, _ = maps(fr_r, 12, 10)
        T_s, _, _ = maps(fr_s, 12, 10)
        # Same object, same places: the maps agree within photon noise, and are not flat.
        self.assertLess(np.max(np.abs(T_r - T_s) / np.sqrt(2 * T_r)), 5)
        self.assertLess(T_r.min(), 0.9 * T_r.max())


class Rejects(unittest.TestCase):
    def check(self, args, *words):
        p = subprocess.run([SIM, "--endpoint", "tcp://127.0.0.1:1", "--wait-connect", "0", *args],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(p.returncode, 0)
        for w in words:
            self.assertIn(w, p.stderr)

    def test_non_square(self):
        self.check(["--source", "phantom", "--shape", "64x128", "--scan", "8x8"], "64x128", "square")

    def test_not_power_of_two(self):
        self.check(["--source", "phantom", "--shape", "96x96", "--scan", "8x8"], "96x96")

    def test_unknown_key(self):
        self.check(["--source", "phantom:seed=1,colour=red", "--shape", "64x64", "--scan", "8x8"], "colour")

    def test_bad_value(self):
        self.check(["--source", "phantom:photons=-5", "--shape", "64x64", "--scan", "8x8"], "photons", "-5")


if __name__ == "__main__":
    unittest.main(verbosity=2)
