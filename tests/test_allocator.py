"""recsys.utils.tune_allocator: freed memory stays in the heap, torch's 2 MB pages are switched on
before torch loads, the user's own settings and RECSYS_ALLOCATOR=default win; the recsys command
applies it. Each case runs in a fresh interpreter (the settings are process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")

# Allocate 96 MB with malloc, touch every page, free it: the resident size before and after the
# free, in MB. glibc's default serves a block this large with mmap and unmaps it on free.
PROBE = textwrap.dedent("""
    import ctypes, json, os, sys
    {setup}
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    page = os.sysconf("SC_PAGE_SIZE")
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * page / 2**20
    n = 96 << 20
    p = libc.malloc(ctypes.c_size_t(n))
    ctypes.memset(ctypes.c_void_p(p), 1, n)
    held = rss()
    libc.free(ctypes.c_void_p(p))
    print(json.dumps({{"applied": applied, "held": held, "after_free": rss(),
                      "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}}))
""")


def _probe(setup: str, **env) -> dict:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("RECSYS_ALLOCATOR", "THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES")
               and not k.startswith("MALLOC_")}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=textwrap.dedent(setup))], env=environ,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_stays_in_the_heap_and_torch_gets_huge_pages():
    r = _probe("from recsys.utils import tune_allocator; applied = tune_allocator()")
    assert r["applied"] == {"glibc": True, "torch_hugepages": True}
    assert r["thp"] == "1"
    assert r["after_free"] > r["held"] - 16  # the 96 MB are still resident, ready for the next step


def test_without_it_glibc_returns_the_block_to_the_os():
    """The control: the same probe untuned gives the memory back on free (so the test above could fail)."""
    r = _probe("applied = None")
    assert r["after_free"] < r["held"] - 64
    assert r["thp"] is None


def test_recsys_allocator_default_leaves_the_process_alone():
    r = _probe("from recsys.utils import tune_allocator; applied = tune_allocator()", RECSYS_ALLOCATOR="default")
    assert r["applied"] == {"glibc": False, "torch_hugepages": False}
    assert r["after_free"] < r["held"] - 64
    assert r["thp"] is None


def test_the_users_glibc_and_torch_settings_win():
    r = _probe("from recsys.utils import tune_allocator; applied = tune_allocator()",
               MALLOC_MMAP_THRESHOLD_="131072", THP_MEM_ALLOC_ENABLE="0")
    assert r["applied"] == {"glibc": False, "torch_hugepages": False}
    assert r["after_free"] < r["held"] - 64  # their 128 KB threshold: mmap, unmapped on free
    assert r["thp"] == "0"


def test_after_torch_is_loaded_the_hugepage_switch_is_reported_as_not_applied():
    r = _probe("import torch; torch.ones(1 << 20)\nfrom recsys.utils import tune_allocator; applied = tune_allocator()")
    assert r["applied"] == {"glibc": True, "torch_hugepages": False}
    assert r["thp"] is None


def test_the_recsys_command_tunes_before_torch_loads():
    """What `recsys ...` does first: torch is not loaded yet, so both settings apply (an unknown
    command still goes through the same start)."""
    r = _probe("""
        import io, contextlib
        import recsys.commands as commands
        with contextlib.redirect_stderr(io.StringIO()):
            code = commands.main(["no-such-command"])
        assert code == 2
        applied = commands.tune_allocator()
    """)
    assert r["applied"] == {"glibc": True, "torch_hugepages": True}
    assert r["thp"] == "1"
    assert r["after_free"] > r["held"] - 16
