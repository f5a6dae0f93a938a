#!/usr/bin/env python3
"""How the sparse solver's time grows with size: one full solve per size with the `solve` CLI, printed as a
markdown table.

    python3 benches/sparse_scaling.py                          # n = 1000, 2000, 3000, 6000, 10000
    python3 benches/sparse_scaling.py --sizes 1000 2000        # fewer sizes
    python3 benches/sparse_scaling.py --solve OLD --solve NEW  # two builds of the CLI, interleaved

Problems: n = m uniform points in [0,1]^2 (numpy default_rng(0), as benches/compare_pot.py), squared-Euclidean
cost scaled to max 1, uniform marginals. Solver: `--k 5 --gamma 0.1 --device cpu` with the CLI's defaults
(semi-dual, tol 1e-9, 1000 iterations). The time is the CLI's own `seconds` (the solve, file I/O excluded);
peak memory is the process's maximum resident set (it includes the loaded cost matrix, 8 n^2 bytes).
The n = 10000 problem needs about 2.4 GB of memory and 0.8 GB of temporary disk.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build_solve():
    subprocess.check_call(["cargo", "build", "--release", "--quiet", "--example", "solve"], cwd=ROOT)
    meta = json.loads(
        subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT)
    )
    return os.path.join(meta["target_directory"], "release", "examples", "solve")


def run(exe, problem, out):
    """One solve in a child process; returns its JSON line and its peak resident memory in MB."""
    cmd = [exe, "--input", problem, "--output", out, "--k", "5", "--gamma", "0.1", "--device", "cpu", "--quiet"]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{exe} failed on {problem}: {stderr.read().strip()}")
        return json.loads(stdout.read().strip().splitlines()[-1]), usage.ru_maxrss / 1024.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 3000, 6000, 10000])
    parser.add_argument("--solve", action="append", help="a solve binary (default: build this checkout's)")
    args = parser.parse_args()
    from compare_pot import make_problem

    exes = args.solve or [build_solve()]
    print(f"date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()}")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print("| n = m | build | seconds | iterations | status | value | marginal error rows | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            problem = os.path.join(tmp, f"u{n}.npz")
            make_problem(n, 0, problem)
            for i, exe in enumerate(exes):
                d, rss = run(exe, problem, os.path.join(tmp, "out.npz"))
                print(
                    f"| {n} | {i} | {d['seconds']:.2f} | {d['iterations']} | {d['termination']} | {d['value']:.12g} "
                    f"| {d['marginal_error_rows']:.2e} | {rss:.0f} |",
                    flush=True,
                )
            os.remove(problem)
    print()
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
