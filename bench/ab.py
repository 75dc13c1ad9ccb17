"""A/B: what a code change does to the server, the old and the new code side by side in one run.

    .venv/bin/python bench/ab.py --base 46eb4a0                      # small CNN, binary, c=64, 3 x 4 s
    .venv/bin/python bench/ab.py --base HEAD~1 --body json --concurrency 1 --repeats 5
    .venv/bin/python bench/ab.py --base 46eb4a0 --model resnet18 --seconds 6 --repeats 2
    .venv/bin/python bench/ab.py --base 46eb4a0 --rss               # resident memory idle and under load

`--base` is checked out with `git worktree add` in a temporary folder (A); this tree is B. Both serve
`bench/.repo` (the models of `bench/nets.py`) at once, and `wrk` runs alternate between them (A B, then
B A, ...), so a shared machine's drift hits both alike. Reported per side: requests per second, p50 and
p99, and the server's CPU time per request (every process and thread of its session: ONNX Runtime,
workers and codec processes included), which moves much less with the machine's other load than speed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from run import (
    HERE,
    MODELS,
    ROOT,
    SESSIONS,
    Run,
    binary_body,
    deepserve,
    json_body,
    rss_mib,
    session_cpu,
    wrk,
)

PORTS = {"A": 58200, "B": 58210}


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="deepserve-ab-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev], check=True,
                   capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False,
                       capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the old code (A): a commit, branch or tag")
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--body", choices=["json", "binary"], default="binary")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss", action="store_true",
                        help="resident memory instead: idle, then after 20 s and 40 s of wrk, "
                             "one server at a time")
    args = parser.parse_args()

    from nets import build  # torch, only for building the bench models

    repo = HERE / ".repo"
    build(repo)
    model = MODELS[args.model]
    body = json_body(model) if args.body == "json" else binary_body(model)
    with worktree(args.base) as old, tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as stack:
        trees = {"A": old, "B": ROOT}
        if args.rss:
            for side, tree in trees.items():
                with deepserve(repo, Path(logs), PORTS[side], {}, tree=tree) as url:
                    pid = SESSIONS[url]
                    target = f"{url}/v2/models/{model.name}/infer"
                    marks = [rss_mib(pid)]
                    for _ in range(2):
                        wrk(target, body, concurrency=args.concurrency, seconds=20)
                        marks.append(rss_mib(pid))
                    print(f"{side}: RSS idle {marks[0]:.0f} MiB, after 20 s {marks[1]:.0f} MiB, "
                          f"after 40 s {marks[2]:.0f} MiB of wrk c={args.concurrency}", flush=True)
            return
        urls = {side: stack.enter_context(deepserve(repo, Path(logs), PORTS[side], {}, tree=tree))
                for side, tree in trees.items()}
        runs: dict[str, list[Run]] = {side: [] for side in urls}
        spent = dict.fromkeys(urls, 0.0)
        for url in urls.values():  # warm up
            wrk(f"{url}/v2/models/{model.name}/infer", body, concurrency=args.concurrency, seconds=1)
        for index in range(args.repeats):
            order = list(urls) if index % 2 == 0 else list(reversed(urls))
            for side in order:
                url = urls[side]
                before = session_cpu(url)
                runs[side].append(wrk(f"{url}/v2/models/{model.name}/infer", body,
                                      concurrency=args.concurrency, seconds=args.seconds))
                spent[side] += session_cpu(url) - before
        print(f"{model.name} {args.body} c={args.concurrency}, {args.repeats} x {args.seconds:g} s each, "
              f"A = {args.base}, B = this tree")
        for side, rs in runs.items():
            requests = sum(r.rps for r in rs) * round(args.seconds)
            rps, p50, p99 = (statistics.fmean(getattr(r, key) for r in rs)
                             for key in ("rps", "p50_ms", "p99_ms"))
            cpu_us = 1e6 * spent[side] / max(requests, 1)
            print(f"{side}: {rps:.0f} req/s, p50 {p50:.3f} ms, p99 {p99:.2f} ms, "
                  f"errors {sum(r.errors for r in rs)}, CPU {cpu_us:.0f} µs per request")


if __name__ == "__main__":
    main()
