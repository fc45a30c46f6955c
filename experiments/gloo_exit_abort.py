"""Reproduce the gloo exit abort that ``recsys.tasks.distributed.end_distributed_process`` avoids.

Two gloo ranks on localhost call ``broadcast_object_list`` (as Lightning's ``Trainer.log_dir``
does at the end of a run) and exit at once. gloo's worker thread frees the broadcast's tensors
and asks for the GIL; if that happens as the interpreter starts finalizing, CPython ends the
thread through a ``noexcept`` C++ frame and the process aborts ("terminate called without an
active exception", exit 134 / -6). It is a race. 2026-12-07, 2 cores: at load ~20, plain exits
aborted in 2 of 15 runs and ``end_distributed_process`` in 0 of 15; quiet (load ~1), 3 aborted ranks
in 15 runs against 0 in 15.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/gloo_exit_abort.py --runs 15 [--fixed]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys


class _Slow:
    def __del__(self):  # Python code in the teardown: the GIL changes hands there
        sum(i for i in range(200))


def rank_main(rank: int, port: int, fixed: bool) -> None:
    import torch.distributed as dist

    global _GARBAGE
    _GARBAGE = [_Slow() for _ in range(20_000)]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    for _ in range(3):
        box = ["run folder"] if rank == 0 else [None]
        dist.broadcast_object_list(box, src=0)
    if fixed:
        from recsys.tasks.distributed import end_distributed_process

        end_distributed_process(0)
    sys.exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--fixed", action="store_true", help="end each rank with end_distributed_process")
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank is not None:
        rank_main(args.rank, args.port, args.fixed)
        return
    aborted = 0
    for i in range(args.runs):
        port = _free_port()
        cmd = [sys.executable, __file__, "--port", str(port)] + (["--fixed"] if args.fixed else [])
        procs = [subprocess.Popen(cmd + ["--rank", str(r)], stderr=subprocess.DEVNULL) for r in (0, 1)]
        codes = [p.wait() for p in procs]
        aborted += sum(c in (-6, 134) for c in codes)
        print(f"run {i}: exit codes {codes}", flush=True)
    print(f"{'end_distributed_process' if args.fixed else 'plain exit'}: {aborted} aborted ranks in {args.runs} runs")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
