"""``recsys report``: the offline AUC report of one or more ranking checkpoints.

::

    recsys report --ckpt runs/a/best.ckpt [--ckpt runs/b/best.ckpt ...] [--data test|valid|PATH]
                  [--segment FIELD ...] [--history-cap 0,1,3,5,10] [--bootstrap 200] [--seed 0]
                  [--bins 10] --out DIR

writes ``DIR/report.html`` (self-contained), ``DIR/report.md``, ``DIR/metrics.json`` and
``DIR/plots/*.png``; see :func:`recsys.reports.build_report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsys.console import ArgumentParser, add_progress_flags, resolve_progress
from recsys.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="recsys report",
        description="Offline AUC report: AUC, GAUC, logloss, calibration, segments, 95% bootstrap intervals "
                    "and, for several checkpoints on the same rows, DeLong paired tests.")
    p.add_argument("--ckpt", action="append", required=True, metavar="FILE",
                   help="ranking checkpoint (repeat to compare; named A, B, ... in this order)")
    p.add_argument("--data", default="test", metavar="test|valid|PATH",
                   help="rows to score: the checkpoint's test (default) or valid split, or a parquet/CSV file "
                        "with the label column")
    p.add_argument("--segment", action="append", default=[], metavar="FIELD",
                   help="also report AUC by the values of this column (repeatable)")
    p.add_argument("--history-cap", default=None, metavar="K,K,...",
                   help="also score every row with its behaviour sequence cut to the last K behaviours, for each "
                        "K (e.g. 0,1,3,5,10; 0 = no history): AUC with 95%% intervals per cap and, for several "
                        "checkpoints, DeLong tests per cap")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap resamples (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--bins", type=int, default=10, help="equal-width bins of ECE / reliability (default 10)")
    p.add_argument("--batch-size", type=int, default=None, help="scoring batch size")
    add_progress_flags(p)
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.bootstrap < 1 or args.bins < 1:
        raise ConfigError("--bootstrap and --bins must be >= 1", where="recsys report")
    caps: list[int] = []
    if args.history_cap is not None:
        from recsys.reports.history import parse_caps
        try:
            caps = parse_caps(args.history_cap)
        except ValueError as e:
            raise ConfigError(str(e), where=f"--history-cap {args.history_cap}",
                              fix="pass whole numbers >= 0 separated by commas, e.g. --history-cap 0,1,3,5,10")
    from recsys.reports.build import build_report

    report = build_report(args.ckpt, data=args.data, segments=args.segment, out_dir=args.out,
                          n_boot=args.bootstrap, seed=args.seed, bins=args.bins, batch_size=args.batch_size,
                          history_caps=caps, progress=resolve_progress(args.progress))
    for m in report["models"]:
        met = m["metrics"]
        auc, gauc, ll = met["auc"], met["gauc"], met["logloss"]
        gs = "n/a" if gauc["value"] is None else f"{gauc['value']:.4f}"
        print(f"{m['name']} {m['model_class']}: auc {auc['value']:.4f} [{auc['ci95'][0]:.4f}, {auc['ci95'][1]:.4f}]"
              f"  gauc {gs}  logloss {ll['value']:.4f}  ece {met['ece']['value']:.4f}")
    from types import SimpleNamespace

    from recsys.data.preprocess import data_warnings

    for m in report["models"]:
        data = m.get("data") or {}
        if data.get("builtin_data"):
            continue
        rates = SimpleNamespace(missing_rate=data.get("missing_rate"), oov_rate=data.get("oov_rate"))
        for line in data_warnings(rates, f"the rows scored by {m['name']}"):
            print(line, file=sys.stderr)
    for c in report["comparisons"]:
        print(f"{c['b']} vs {c['a']}: delta auc {c['delta']:+.4f}, DeLong p {c['delong']['p_value']:.4g}")
    cap = report.get("history_cap")
    if cap:
        for m in cap["models"]:
            aucs = "  ".join(f"K={c['cap']}: {c['auc']['value']:.4f}" if c["auc"]["value"] is not None
                             else f"K={c['cap']}: n/a" for c in m["by_cap"])
            print(f"{m['name']} {m['model_class']} by history cap: {aucs}")
    out = Path(args.out)
    print(f"recsys: report written to {out / 'report.html'} (and report.md, metrics.json)")
    return 0
