"""Deployment: deploy/roid.service passes systemd's own security review with an
overall exposure <= 2.5 and has the directives roid relies on; its system-call
filter allows every call the daemon makes (when strace is available);
`meson install` (build directory in ROID_BUILD) puts the daemon, the unit, the
configuration and the manual page where the unit says they are."""
import glob
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest

from roidtest import free_port

SRC = os.environ.get("ROID_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
UNIT = os.path.join(SRC, "deploy", "roid.service")
MAX_EXPOSURE = 2.5


def note(msg):
    print(f"# {msg}", file=sys.stderr)


def parse_unit(path):
    """{section: [(key, value), ...]} in file order (systemd keys may repeat)."""
    out, sec = {}, None
    with open(path) as f:
        for line in f:
            s = line.strip()
            if not s or s[0] in "#;":
                continue
            if s.startswith("["):
                sec = s.strip("[]")
                out.setdefault(sec, [])
            else:
                k, _, v = s.partition("=")
                out[sec].append((k.strip(), v.strip()))
    return out


def values(unit, sec, key):
    return [v for k, v in unit.get(sec, []) if k == key]


def analyze():
    exe = shutil.which("systemd-analyze")
    if not exe:
        raise AssertionError("systemd-analyze is missing: run tools/setup (it installs Debian's systemd package)")
    return exe


def syscall_groups():
    """{"@group": [members]} from `systemd-analyze syscall-filter` (this host's systemd)."""
    out = subprocess.run([analyze(), "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         check=True).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if not line[0].isspace():
            cur = s
            groups[cur] = []
        elif cur:
            groups[cur].append(s)
    return groups


def expand(name, groups):
    if name.startswith("@"):
        if name not in groups:
            raise AssertionError(f"unknown system call group {name}")
        r = set()
        for m in groups[name]:
            r |= expand(m, groups)
        return r
    return {name}


def allowed_syscalls(unit):
    """The allow list that the unit's SystemCallFilter= lines build, applied in
    order as systemd does once the first line made it an allow list."""
    groups, allow = syscall_groups(), set()
    for v in values(unit, "Service", "SystemCallFilter"):
        deny = v.startswith("~")
        names = set()
        for n in v.lstrip("~").split():
            names |= expand(n.split(":")[0], groups)
        allow = allow - names if deny else allow | names
    return allow


def traced_child(tracer, exe, timeout=30):
    """The pid of the daemon strace started: the child of strace running
    `exe` (strace first forks, and the child only later becomes the daemon;
    a sanitizer build may start a helper process too)."""
    deadline = time.monotonic() + timeout
    want = os.path.realpath(exe)
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{tracer}/task/{tracer}/children") as f:
                kids = f.read().split()
        except OSError:
            return None
        for k in kids:
            try:
                if os.path.realpath(f"/proc/{k}/exe") == want:
                    return int(k)
            except OSError:
                pass
        time.sleep(0.01)
    return None


class Unit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.unit = parse_unit(UNIT)

    def test_security_exposure(self):
        p = subprocess.run([analyze(), "security", "--offline=true", "--no-pager", UNIT], capture_output=True,
                           env=dict(os.environ, SYSTEMD_COLORS="0", LC_ALL="C.UTF-8"))
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
        self.assertIsNotNone(m, f"no overall exposure in the output:\n{out}\n{err}")
        exposure = float(m.group(1))
        note(f"systemd-analyze security --offline=true: overall exposure {exposure}")
        self.assertLessEqual(exposure, MAX_EXPOSURE)
        # A misspelt key or value is ignored by systemd with only a warning: none allowed.
        bad = [line for line in err.splitlines() if "roid.service" in line]
        self.assertEqual(bad, [], "systemd warns about the unit")

    def test_directives(self):
        u = self.unit
        one = lambda k: values(u, "Service", k)[-1] if values(u, "Service", k) else None  # noqa: E731
        self.assertEqual(one("Type"), "notify")
        self.assertEqual(one("NotifyAccess"), "main")
        wd = one("WatchdogSec")
        self.assertIsNotNone(wd)
        self.assertRegex(wd, r"^\d+s?$")
        self.assertGreater(int(wd.rstrip("s")), 0)
        self.assertTrue(one("DynamicUser") == "yes" or one("User") not in (None, "", "root", "0"))
        self.assertEqual(one("ProtectSystem"), "strict")
        self.assertEqual(one("StateDirectory"), "roid")
        self.assertEqual(one("NoNewPrivileges"), "yes")
        self.assertIn("@system-service", values(u, "Service", "SystemCallFilter")[0].split())
        self.assertRegex(one("MemoryMax") or "", r"^\d+[KMGT]?$")
        self.assertEqual(one("CapabilityBoundingSet"), "")
        self.assertIn("-HUP $MAINPID", one("ExecReload"))
        argv = one("ExecStart").split()
        self.assertEqual(argv[0], "/usr/sbin/roid")
        self.assertEqual(argv[argv.index("--config") + 1], "/etc/roid/roid.conf")

    def test_syscall_filter_allows_the_daemon(self):
        """Every system call the daemon makes during a series and a SIGTERM stop
        is on the unit's allow list (a denied call would fail with EPERM; ZeroMQ
        aborts on some, e.g. sched_setscheduler)."""
        strace, sim, roid = shutil.which("strace"), os.environ.get("ROID_SIM"), os.environ.get("ROID")
        if not (strace and sim and roid):
            note("strace, ROID or ROID_SIM missing: system-call filter not checked against the daemon")
            return
        allow = allowed_syscalls(self.unit)
        self.assertIn("epoll_wait", allow)
        with tempfile.TemporaryDirectory() as d:
            port, trace = free_port(), os.path.join(d, "trace")
            # LeakSanitizer cannot run under ptrace (a sanitizer build would fail at exit).
            env = dict(os.environ, ASAN_OPTIONS=":".join(filter(None, [os.environ.get("ASAN_OPTIONS"),
                                                                        "detect_leaks=0"])))
            out = os.path.join(d, "out")
            os.mkdir(out)
            tracer = subprocess.Popen([strace, "-f", "-qq", "-o", trace, roid, "--detector", f"tcp://127.0.0.1:{port}",
                                       "--output-dir", out], stderr=subprocess.PIPE, text=True, env=env)
            pid = traced_child(tracer.pid, roid)
            try:
                self.assertIsNotNone(pid, "strace started no daemon")
                subprocess.run([sim, "--endpoint", f"tcp://127.0.0.1:{port}", "--source", "phantom", "--shape", "64x64",
                                "--scan", "8x8", "--rate", "500", "--wait-connect", "60", "--quiet"], check=True,
                               timeout=120)
                deadline = time.monotonic() + 60
                while not glob.glob(os.path.join(out, "roid_*.h5")) and time.monotonic() < deadline:
                    time.sleep(0.1)
                os.kill(pid, signal.SIGTERM)  # the daemon, not strace (which would detach and leave it running)
                _, err = tracer.communicate(timeout=60)
            finally:
                if tracer.poll() is None:
                    for p in (pid, tracer.pid):
                        if p:
                            try:
                                os.kill(p, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                    tracer.communicate()
            self.assertEqual(tracer.returncode, 0, err)
            used = set()
            with open(trace) as f:
                for line in f:
                    m = re.match(r"\d+\s+([a-z0-9_]+)\(", line)
                    if m:
                        used.add(m.group(1))
        note(f"daemon used {len(used)} distinct system calls")
        self.assertGreater(len(used), 20)
        self.assertEqual(sorted(used - allow), [], "system calls the unit's SystemCallFilter= would deny")


class Install(unittest.TestCase):
    def test_meson_install(self):
        build = os.environ.get("ROID_BUILD")
        if not build:
            note("ROID_BUILD not set: meson install not checked")
            return
        opts = {o["name"]: o["value"] for o in json.loads(subprocess.run(
            ["meson", "introspect", "--buildoptions", build], capture_output=True, text=True, check=True).stdout)}
        prefix = opts["prefix"]
        at = lambda key, *rest: os.path.join(prefix, opts[key], *rest)  # noqa: E731 (absolute keys win)
        with tempfile.TemporaryDirectory() as dest:
            p = subprocess.run(["meson", "install", "-C", build, "--destdir", dest, "--no-rebuild", "--quiet"],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            inside = lambda path: os.path.join(dest, path.lstrip("/"))  # noqa: E731

            exe = inside(at("sbindir", "roid"))
            self.assertTrue(os.access(exe, os.X_OK), exe)
            self.assertEqual(subprocess.run([exe, "--version"], capture_output=True).returncode, 0)

            units = glob.glob(os.path.join(dest, "**", "roid.service"), recursive=True)
            self.assertEqual(len(units), 1, units)
            self.assertTrue(units[0].endswith("/lib/systemd/system/roid.service"), units[0])
            argv = values(parse_unit(units[0]), "Service", "ExecStart")[-1].split()
            self.assertEqual(argv[0], at("sbindir", "roid"), "the installed unit starts the installed daemon")
            conf = argv[argv.index("--config") + 1]
            self.assertEqual(conf, at("sysconfdir", "roid", "roid.conf"))

            src_conf = os.path.join(SRC, "config", "roid.conf")
            self.assertTrue(os.path.isfile(src_conf), "config/roid.conf is missing from the source tree")
            self.assertTrue(os.path.isfile(inside(conf)), "roid.conf not installed (meson setup --reconfigure?)")
            with open(src_conf, "rb") as a, open(inside(conf), "rb") as b:
                self.assertEqual(a.read(), b.read())
            # DynamicUser= runs roid as an unknown user: the file must be world-readable.
            self.assertTrue(os.stat(inside(conf)).st_mode & stat.S_IROTH)

            self.assertTrue(os.path.isfile(os.path.join(SRC, "deploy", "roid.8")), "deploy/roid.8 is missing")
            self.assertTrue(os.path.isfile(inside(at("mandir", "man8", "roid.8"))),
                            "roid.8 not installed (meson setup --reconfigure?)")


if __name__ == "__main__":
    unittest.main(verbosity=2)
