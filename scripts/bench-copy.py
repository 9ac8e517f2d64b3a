#!/usr/bin/env python3
"""Benchmark `storageclass-migrate copy` against `cp -a` and `rsync -aHAXS`, side by side, on the
same two trees: large files (1 GiB by default) and many small files (100,000 of 1-16 KiB).

Each run copies each tree with each candidate, in an order rotated from run to run; the target is
removed and `sync` run before every copy (neither timed), so no copy pays for the previous one's
writeback. Measured per copy: wall time, and peak RSS from GNU time (`/usr/bin/time -f %M`).
storageclass-migrate runs twice: as it runs by default (copy, then verify every entry with a
content hash) and with `--verify=false` (the copy alone, what cp and rsync do).

    scripts/bench-copy.py [--runs 5] [--large-mib 1024] [--small-files 100000]
                          [--binary PATH] [--work DIR] [--markdown FILE]

Needs rsync (`apt-get install rsync`) and GNU time (`apt-get install time`). Builds the release
binary with cargo unless --binary is given. Not run in CI.
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = "storageclass-migrate copy"
OURS_NO_VERIFY = "storageclass-migrate copy --verify=false"


def make_large(path, mib, file_mib=128):
    path.mkdir(parents=True)
    left = mib
    i = 0
    while left > 0:
        size = min(file_mib, left)
        with open(path / f"large-{i:02}.bin", "wb") as f:
            for _ in range(size):
                f.write(os.urandom(1 << 20))
        left -= size
        i += 1


def make_small(path, count, per_dir=1000):
    rng = random.Random(9)
    block = os.urandom(16 << 10)
    for i in range(count):
        directory = path / f"d{i // per_dir:04}"
        if i % per_dir == 0:
            directory.mkdir(parents=True)
        size = rng.randint(1 << 10, 16 << 10)
        offset = rng.randint(0, (16 << 10) - size)
        with open(directory / f"f{i:06}", "wb") as f:
            f.write(block[offset:offset + size])


def candidates(binary):
    return {
        OURS: lambda src, dst: [binary, "copy", "--from", src, "--to", dst],
        OURS_NO_VERIFY: lambda src, dst: [binary, "copy", "--from", src, "--to", dst, "--verify=false"],
        "cp -a": lambda src, dst: ["cp", "-a", src, dst],
        "rsync -aHAXS": lambda src, dst: ["rsync", "-aHAXS", f"{src}/", f"{dst}/"],
    }


def measure(cmd, rss_file):
    start = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", rss_file, *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"bench-copy: {' '.join(map(str, cmd))} failed ({result.returncode}): {result.stderr[-2000:]}")
    rss_kib = int(Path(rss_file).read_text().strip().splitlines()[-1])
    return seconds, rss_kib


def remove(path):
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", path], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=100_000)
    parser.add_argument("--binary", help="storageclass-migrate binary [default: build the release one]")
    parser.add_argument("--work", help="directory for the trees [default: a new one under /var/tmp]")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()

    for tool in ("rsync", "cp"):
        if not shutil.which(tool):
            sys.exit(f"bench-copy: {tool} is not installed (apt-get install {tool})")
    if not Path("/usr/bin/time").exists():
        sys.exit("bench-copy: GNU time is not installed (apt-get install time)")
    if args.binary:
        binary = str(Path(args.binary).resolve())
    else:
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
        binary = str(ROOT / "target/release/storageclass-migrate")

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-copy-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    trees = {
        f"{args.large_mib} MiB of large files": work / "large",
        f"{args.small_files} files of 1-16 KiB": work / "small",
    }
    try:
        large, small = trees.values()
        print(f"bench-copy: making the trees in {work}", file=sys.stderr)
        if not large.exists():
            make_large(large, args.large_mib)
        if not small.exists():
            make_small(small, args.small_files)
        subprocess.run(["sync"], check=True)
        commands = candidates(binary)
        names = list(commands)
        results = {}
        rss_file = str(work / "rss")
        for i in range(args.runs):
            order = names[i % len(names):] + names[:i % len(names)]
            for tree, src in trees.items():
                for name in order:
                    dst = work / "target"
                    remove(dst)
                    subprocess.run(["sync"], check=True)
                    seconds, rss = measure(commands[name](str(src), str(dst)), rss_file)
                    results.setdefault((tree, name), []).append((seconds, rss))
                    print(f"bench-copy: run {i + 1} {tree}: {name}: {seconds:.2f}s, {rss / 1024:.1f} MiB",
                          file=sys.stderr)
            remove(work / "target")
        table = render(results, trees, names, args.runs)
        print(table)
        if args.markdown:
            Path(args.markdown).write_text(table + "\n")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def render(results, trees, names, runs):
    lines = [
        f"{runs} runs per cell, interleaved; wall time in seconds; peak RSS in MiB (GNU time).",
        "",
        "| tree | candidate | median s | min s | max s | peak RSS MiB | time / cp -a | time / rsync |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for tree in trees:
        median = {name: statistics.median(s for s, _ in results[(tree, name)]) for name in names}
        for name in names:
            rows = results[(tree, name)]
            times = [s for s, _ in rows]
            rss = max(r for _, r in rows) / 1024
            lines.append(
                f"| {tree} | {name} | {median[name]:.2f} | {min(times):.2f} | {max(times):.2f} | {rss:.1f} "
                f"| {median[name] / median['cp -a']:.2f}x | {median[name] / median['rsync -aHAXS']:.2f}x |"
            )
        for name in (OURS, OURS_NO_VERIFY):
            rss = max(r for _, r in results[(tree, name)]) / 1024
            cp = median[name] / median["cp -a"]
            rsync = median[name] / median["rsync -aHAXS"]
            verdicts.append(
                f"- {tree}, `{name}`: "
                f"{'as fast as or faster than' if rsync <= 1 else 'slower than'} rsync ({rsync:.2f}x); "
                f"{'within' if cp <= 1.25 else 'not within'} 1.25x of cp -a ({cp:.2f}x); "
                f"peak RSS {rss:.1f} MiB ({'under' if rss < 64 else 'over'} 64 MiB)."
            )
    return "\n".join(lines + ["", *verdicts])


if __name__ == "__main__":
    main()
