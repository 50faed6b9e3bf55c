#!/usr/bin/env python3
"""bench/s3_scopes.py: S3 (scale-up latency) with every slot a systemd scope.

The host has no systemd as PID 1, so this boots one in a box
(tests/harness/sdbox: PID, mount and cgroup namespaces; the network is
shared, so the box reaches the host's gearmand on 127.0.0.1) and runs
`slotman run --placement systemd` inside it. As bench/run's S3: a pool at
min = 1 gets a burst of `max` 30-s jobs; measured from the burst landing to
every slot registered with gearmand, and to all `max` jobs running. Each
new slot is a StartTransientUnit over D-Bus (a scope in the service's
slice), where S3 in bench/run starts plain child processes.

    bench/s3_scopes.py [--sizes 4,16,64] [--slotman PATH]

Needs root, systemd and dbus installed (Debian: apt-get install systemd
dbus). Prints a JSON object {max: {...}}; bench/run calls `measure()`.
"""
import argparse
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
SDBOX = os.path.join(ROOT, "tests", "harness", "sdbox")


def load_bench_run():
    loader = importlib.machinery.SourceFileLoader("benchrun", os.path.join(BENCH, "run"))
    spec = importlib.util.spec_from_loader("benchrun", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def unavailable():
    """Why scopes cannot be measured here, or None."""
    if os.geteuid() != 0:
        return "needs root (the box is a PID, mount and cgroup namespace)"
    for tool in ("unshare", "nsenter"):
        if not shutil.which(tool):
            return "%s is not installed" % tool
    if not os.path.exists("/lib/systemd/systemd") or not shutil.which("dbus-daemon"):
        return "systemd or dbus is not installed"
    return None


def measure(B, ctx, sizes):
    """{str(max): result} for each pool size, or {"error": why}."""
    why = unavailable()
    if why:
        return {"error": why}
    # The box sees the host's / through an overlay; bind what it must write
    # to (configs, the manager's runtime dir) and the binaries under test.
    box = tempfile.mkdtemp(prefix="slotman-sdbox-bench-", dir="/var/tmp")
    work = os.path.join(ctx.out, "scopes")
    os.makedirs(work, exist_ok=True)
    bindir = os.path.dirname(os.path.abspath(ctx.slotman))
    r = subprocess.run([SDBOX, "start", box, work, bindir], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return {"error": "the box did not boot: %s" % (r.stderr.strip()[-300:] or r.stdout.strip()[-300:])}
    res = {}
    try:
        for k in sizes:
            res[str(k)] = one(B, ctx, box, work, k)
            B.log("  scopes %d: %s" % (k, res[str(k)]))
    finally:
        subprocess.run([SDBOX, "stop", box], capture_output=True, timeout=120)
        shutil.rmtree(box, ignore_errors=True)
    return res


def one(B, ctx, box, work, k):
    g = B.Gearmand(ctx.out)
    service = "scopes%d" % k
    config = os.path.join(work, service + ".toml")
    with open(config, "w") as f:
        f.write('stop_timeout = "1s"\n\n[workers.w]\nkind = "stdio"\ncommand = ["%s", "%s"]\n'
                'functions = ["echo", "sleep"]\njob_servers = ["127.0.0.1:%d"]\nmin = 1\nmax = %d\n'
                'idle_timeout = "600s"\n' % (B.PY, B.H_PY, g.port, k))
    rt = os.path.join(work, "rt-%d" % k)
    os.makedirs(rt, exist_ok=True)
    log = open(os.path.join(work, service + ".log"), "w")
    # systemd-run: the manager as a unit of the box's systemd, as
    # `systemctl start slotman@SERVICE` would run it (KillMode, a cgroup of
    # its own); its slots are scopes in slotman-SERVICE.slice.
    unit = "bench-" + service
    mgr = subprocess.run(
        [SDBOX, "exec", box, "systemd-run", "--unit", unit, "--collect", "-p", "KillMode=mixed",
         os.path.abspath(ctx.slotman), "run", "--config", config, "--runtime-dir", rt,
         "--placement", "systemd"], stdout=log, stderr=log, timeout=60)
    prefix = "slotman:%s:w:" % service
    try:
        if mgr.returncode != 0 or g.wait_count(prefix, "w::sleep", 1, 30) is None:
            return {"error": "the pool did not start (see %s.log)" % service}
        r = B.burst_timing(ctx, g, prefix, k)
        scopes = subprocess.run(
            [SDBOX, "exec", box, "systemctl", "list-units", "--no-legend", "--plain",
             "slotman-%s-*.scope" % service], capture_output=True, text=True, timeout=30)
        n_scopes = sum(1 for line in scopes.stdout.splitlines() if ".scope" in line)
        r["scopes"] = n_scopes
        return r
    finally:
        subprocess.run([SDBOX, "exec", box, "systemctl", "stop", unit], capture_output=True, timeout=60)
        log.close()
        g.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4,16,64")
    ap.add_argument("--slotman", default=None, help="slotman binary (slotman-slot next to it)")
    a = ap.parse_args()
    B = load_bench_run()

    class Ctx:
        pass
    ctx = Ctx()
    ctx.out = os.path.join(BENCH, "out", "s3-scopes-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(ctx.out, exist_ok=True)
    ctx.quiet = B.Quiet(60)
    src = os.path.abspath(a.slotman or os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "dist", "slotman"))
    ctx.slotman, _ = B.copy_slotman(src, ctx.out)
    print(json.dumps(measure(B, ctx, [int(x) for x in a.sizes.split(",")]), indent=1))


if __name__ == "__main__":
    main()
