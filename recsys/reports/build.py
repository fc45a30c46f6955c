"""Build the offline report of one or more ranking checkpoints: score, measure, plot, write.

:func:`build_report` is the one entry point (``recsys report`` calls it)::

    from recsys.reports import build_report
    report = build_report(["runs/a/best.ckpt", "runs/b/best.ckpt"], data="test",
                          segments=["inf_5"], out_dir="runs/report")
    report["models"][0]["metrics"]["auc"]["value"]

Each checkpoint is loaded with :func:`recsys.tasks.load_checkpoint` and scores the rows of its own
data module (:func:`recsys.tasks.load_datamodule`, the checkpoint's encoders): the ``test`` split
(default), ``valid``, or an external file (``data=PATH``; it must carry the label column).
Checkpoints are named ``A``, ``B``, ... in the order given; comparisons are ``B - A`` etc.

Segments (AUC per bucket; the raw rows of the first checkpoint's data):

* ``history_length``: the length of the schema's first ``sequence`` field in the raw row (before
  the schema's ``max_len`` truncation). Without a sequence field: the user's number of prior
  rows = the user's rows in the train split + the user's rows in the evaluated data at strictly
  earlier times (time key; without one, the train rows only). Without a user key: skipped.
* ``item_popularity``: how often the row's item (item key) occurs in the train split, in decades
  (0 = unseen in train, 1-9, 10-99, ...).
* any raw column named with ``segments``: categorical values (the 19 most frequent, the rest
  pooled as ``(other)``, nulls as ``(null)``); a numeric column with more than 20 distinct values
  is cut into quintiles.

Attention maps: a model that defines ``attention_weights()`` (AutoInt) is asked for it after each
forward pass; it returns a tensor ``[..., F, F]`` (query field x key field; leading dims such as
batch, head or layer are averaged) or ``None``. The report shows the row-weighted mean over all
batches. Field labels come from the model's ``attention_fields`` attribute when it has one.

Other tasks: checkpoints whose task is not :class:`~recsys.tasks.RankingTask` are dispatched to
:data:`TASK_SECTIONS` (task class path -> builder). Retrieval (Recall@K, NDCG@K, diversity) will
register itself there; until then such checkpoints are refused with a clear error.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl
import torch

from recsys.data.preprocess import data_warnings
from recsys.data.sources import BUILTIN
from recsys.errors import RecsysError
from recsys import metrics as M
from recsys.reports.history import cap_sequences

RANKING_TASK = "recsys.tasks.ranking.RankingTask"
FORMAT = "recsys-report/1"

# task class path -> fn(checkpoint_path, data) -> {"title": str, "columns": [...], "rows": [[...]]}
# (a section rendered as one table). Retrieval registers here once two-tower checkpoints exist.
TASK_SECTIONS: dict[str, Callable[[str, str], dict]] = {}

HISTORY_EDGES = (0, 1, 3, 6, 11, 21, 51, 101)  # buckets [0], [1,2], [3,5], ..., [101, inf)
MAX_CATEGORIES = 20

CONVENTIONS = {
    "auc": "exact ROC AUC (Mann-Whitney; tied scores count 1/2)",
    "logloss": "mean binary cross-entropy, natural log, probabilities clipped to [1e-15, 1-1e-15]",
    "gauc": ("impression-weighted mean of per-user AUC (weight = the user's rows); users whose rows "
             "are all positive or all negative are skipped"),
    "ece": "expected calibration error over {bins} equal-width bins of the predicted probability on [0, 1]",
    "calibration_ratio": "mean predicted probability / observed positive rate (1 = calibrated)",
    "ci": ("95% percentile bootstrap, {n_boot} resamples (seed {seed}); rows resampled, except GAUC "
           "which resamples users"),
    "paired_test": ("DeLong et al. (1988) test of the AUC difference on the same rows (two-sided, normal); "
                    "plus a paired bootstrap 95% interval of the difference (same row resamples for both)"),
    "history_length": "",
    "item_popularity": "occurrences of the row's item in the train split, in decades (0 = unseen)",
    "history_cap": ("each row scored again with every sequence field cut to its last K behaviours (K = 0: no "
                    "history), simulating users with short histories on the same rows and labels"),
}


@dataclass
class Scored:
    """One checkpoint's scores on its evaluation rows."""

    name: str
    checkpoint: str
    class_path: str
    labels: np.ndarray
    probs: np.ndarray
    users: np.ndarray | None
    frame: pl.DataFrame
    train: Callable[[], pl.DataFrame]
    schema: Any
    attention: tuple[np.ndarray, list[str]] | None = None
    capped: dict[int, np.ndarray] | None = None  # history cap K -> probabilities of the same rows
    sequence_fields: tuple[str, ...] = ()
    missing_rate: dict[str, float] | None = None  # per field, of the scored rows (see EncodedSplit)
    oov_rate: dict[str, float] | None = None
    builtin_data: bool = False  # scored rows of a built-in data set (no warnings: nothing to fix)


# ------------------------------------------------------------------------------------ loading
def _task_class(path: Path) -> str:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - load_checkpoint gives the detailed error below
        return RANKING_TASK
    return str(((ckpt.get("recsys") or {}).get("task") or {}).get("class_path", RANKING_TASK))


def _split_and_overrides(data: str) -> tuple[str, dict]:
    if data in ("test", "valid"):
        return data, {}
    p = Path(data)
    if not p.exists():
        raise RecsysError("data file not found", where=f"--data {data}",
                          fix="pass 'test', 'valid' or the path of a parquet/CSV file with the label column")
    return "predict", {"predict_path": str(p)}


def _bar(items, desc: str, unit: str, enabled: bool):
    """``items`` wrapped in a tqdm bar on stderr when ``enabled`` (else unchanged)."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, leave=False)


def _score(name: str, ckpt: Path, data: str, batch_size: int | None, history_caps: Sequence[int] = (),
           progress: bool = False) -> Scored:
    from recsys.tasks.ranking import load_checkpoint, load_datamodule

    task = load_checkpoint(ckpt)
    split, overrides = _split_and_overrides(data)
    if batch_size:
        overrides["eval_batch_size"] = batch_size
    dm = load_datamodule(ckpt, **overrides)
    enc = dm.encoded(split)
    if not enc.has_labels:
        raise RecsysError(f"the data has no label column {dm.features.schema.label!r}", where=data,
                          fix="a report needs labelled rows: add the label column or use --data test")
    loader = {"test": dm.test_dataloader, "valid": dm.val_dataloader, "predict": dm.predict_dataloader}[split]()
    attn_fn = getattr(task.model, "attention_weights", None)
    attn_sum, attn_rows = None, 0
    probs = []
    seq_fields = tuple(f.name for f in dm.features.schema.fields if f.kind == "sequence")
    capped: dict[int, list[torch.Tensor]] = {k: [] for k in history_caps}
    with torch.no_grad():
        for batch in _bar(loader, f"scoring {name}", "batch", progress):
            for k in history_caps:
                capped[k].append(torch.sigmoid(task(cap_sequences(batch, seq_fields, k)).logits.float()).cpu())
            probs.append(torch.sigmoid(task(batch).logits.float()).cpu())
            if callable(attn_fn):
                w = attn_fn()
                if w is not None:
                    w = torch.as_tensor(w).detach().float().cpu()
                    w = w.reshape(-1, *w.shape[-2:]).mean(0) * len(batch)
                    attn_sum = w if attn_sum is None else attn_sum + w
                    attn_rows += len(batch)
    p = torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros(0)
    attention = None
    if attn_sum is not None and attn_rows:
        weights = (attn_sum / attn_rows).numpy()
        fields = list(getattr(task.model, "attention_fields", None) or [])
        if len(fields) != weights.shape[-1]:
            fields = [f"f{i}" for i in range(weights.shape[-1])]
        attention = (weights, fields)
    class_path = task.model.config["class_path"]
    cache: dict[str, pl.DataFrame] = {}

    def train() -> pl.DataFrame:
        # a separate data module: CTRDataModule._load skips loading once the predict file is read
        if "train" not in cache:
            cache["train"] = (dm if split != "predict" else load_datamodule(ckpt)).frame("train")
        return cache["train"]

    return Scored(name=name, checkpoint=str(ckpt), class_path=class_path, labels=enc.labels.astype(np.float64),
                  probs=p, users=None if enc.users is None else np.asarray(enc.users), frame=dm.frame(split),
                  train=train, schema=dm.features.schema, attention=attention,
                  capped={k: (torch.cat(v).numpy().astype(np.float64) if v else np.zeros(0)) for k, v in capped.items()},
                  sequence_fields=seq_fields, missing_rate=dict(enc.missing_rate), oov_rate=dict(enc.oov_rate),
                  builtin_data=split != "predict" and getattr(dm, "dataset", None) in BUILTIN)


# ----------------------------------------------------------------------------------- segments
def _bucket_labels(values: np.ndarray, edges: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    names = []
    for lo, hi in zip(edges, list(edges[1:]) + [None]):
        if hi is None:
            names.append(f"{lo}+")
        elif hi - lo == 1:
            names.append(str(lo))
        else:
            names.append(f"{lo}-{hi - 1}")
    idx = np.searchsorted(np.asarray(edges), values, side="right") - 1
    return np.asarray(names, dtype=object)[np.clip(idx, 0, len(names) - 1)], names


def _history_lengths(s: Scored) -> tuple[np.ndarray, str] | None:
    schema, frame = s.schema, s.frame
    seq = [f for f in schema.fields if f.kind == "sequence" and f.source in frame.columns]
    if seq:
        f = seq[0]
        col = frame[f.source]
        if col.dtype == pl.String:
            sep = f.separator or ","
            lens = pl.select(pl.when(col.str.len_chars() > 0).then(col.str.split(sep).list.len()).otherwise(0)).to_series()
        else:
            lens = col.list.len()
        return (lens.fill_null(0).to_numpy().astype(np.int64),
                f"length of the sequence field {f.name!r} in the raw row (before max_len truncation)")
    user = schema.keys.get("user")
    if not user or user not in frame.columns:
        return None
    train = s.train()
    counts = train.group_by(user).len(name="_n") if user in train.columns else None
    ev = frame.select(pl.col(user))
    time = schema.keys.get("time")
    if time and time in frame.columns:
        prior = frame.select((pl.col(time).rank("min").over(user).cast(pl.Int64) - 1).alias("_prior"))["_prior"]
        how = "the user's rows in the train split + the user's earlier rows (time key) in the evaluated data"
    else:
        prior = pl.Series("_prior", np.zeros(len(frame), dtype=np.int64))
        how = "the user's rows in the train split"
    ev = ev.with_columns(prior)
    if counts is not None:
        ev = ev.join(counts, on=user, how="left", maintain_order="left")
    else:
        ev = ev.with_columns(pl.lit(0).alias("_n"))
    n = (ev["_n"].fill_null(0) + ev["_prior"].cast(pl.Int64)).to_numpy()
    return n.astype(np.int64), how


def _item_popularity(s: Scored) -> np.ndarray | None:
    item = s.schema.keys.get("item")
    if not item or item not in s.frame.columns:
        return None
    train = s.train()
    if item not in train.columns:
        return None
    counts = train.group_by(item).len(name="_n")
    joined = s.frame.select(pl.col(item)).join(counts, on=item, how="left", maintain_order="left")
    return joined["_n"].fill_null(0).to_numpy().astype(np.int64)


def _popularity_buckets(counts: np.ndarray) -> tuple[np.ndarray, list[str]]:
    top = int(counts.max()) if counts.size else 0
    edges = [0, 1]
    while edges[-1] * 10 <= top:
        edges.append(edges[-1] * 10)
    labels, names = _bucket_labels(counts, edges)
    names = [f"{n} (unseen)" if n == "0" else n for n in names]
    labels = np.where(labels == "0", "0 (unseen)", labels)
    return labels, names


def _column_segments(frame: pl.DataFrame, column: str) -> tuple[np.ndarray, list[str], str]:
    col = frame[column]
    if isinstance(col.dtype, (pl.List, pl.Array)):
        raise RecsysError(f"column {column!r} holds lists; a segment needs one value per row", where=f"--segment {column}",
                          fix="segment by a categorical or numeric column")
    if col.dtype.is_numeric() and col.n_unique() > MAX_CATEGORIES:
        x = col.cast(pl.Float64).fill_nan(None).to_numpy()
        ok = np.isfinite(x)
        edges = np.unique(np.quantile(x[ok], [0.2, 0.4, 0.6, 0.8])) if ok.any() else np.zeros(0)
        idx = np.searchsorted(edges, x, side="left")  # bucket k = (edges[k-1], edges[k]]
        bounds = ["-inf"] + [f"{e:.4g}" for e in edges] + ["inf"]
        names = [f"({bounds[k]}, {bounds[k + 1]}]" for k in range(len(edges) + 1)]
        values = np.where(ok, np.asarray(names, dtype=object)[np.clip(idx, 0, len(names) - 1)], "(null)")
        order = names + (["(null)"] if (~ok).any() else [])
        return values.astype(object), order, f"quintiles of the numeric column {column!r}"
    s = col.cast(pl.String).fill_null("(null)")
    vc = s.value_counts(sort=True)
    top = vc[s.name].to_list()[: MAX_CATEGORIES - 1] if len(vc) > MAX_CATEGORIES else vc[s.name].to_list()
    keep = set(top)
    values = np.asarray([v if v in keep else "(other)" for v in s.to_list()], dtype=object)
    order = sorted(top, key=lambda v: (v == "(null)", v)) + (["(other)"] if len(vc) > MAX_CATEGORIES else [])
    how = f"values of the column {column!r}" + (f" (the {MAX_CATEGORIES - 1} most frequent; the rest pooled)"
                                                 if len(vc) > MAX_CATEGORIES else "")
    return values, order, how


def _segment_block(key: str, title: str, how: str, values: np.ndarray, order: list[str],
                   models: list[Scored]) -> dict:
    per_model = {m.name: {r["segment"]: r for r in M.segment_metrics(m.labels, m.probs, values, order)} for m in models}
    first = per_model[models[0].name]
    buckets = []
    for seg in order:
        if seg not in first:
            continue
        r = first[seg]
        buckets.append({"segment": seg, "rows": r["rows"], "positives": r["positives"],
                        "positive_rate": r["positive_rate"],
                        "metrics": [{"model": m.name, "auc": per_model[m.name][seg]["auc"],
                                     "logloss": per_model[m.name][seg]["logloss"],
                                     "calibration_ratio": per_model[m.name][seg]["calibration_ratio"]}
                                    for m in models]})
    return {"key": key, "title": title, "method": how, "buckets": buckets}


# ------------------------------------------------------------------------------------ report
def _same_rows(a: Scored, b: Scored) -> bool:
    if a.labels.shape != b.labels.shape or not np.array_equal(a.labels, b.labels):
        return False
    keys = [c for c in a.schema.keys.values() if c in a.frame.columns and c in b.frame.columns]
    return all(a.frame[c].equals(b.frame[c]) for c in keys)


def _num(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _model_entry(s: Scored, n_boot: int, seed: int, bins: int, paired: bool, notes: list[str]) -> dict:
    y, p = s.labels, s.probs
    boot = M.bootstrap_metrics(y, p, n_boot=n_boot, seed=seed, n_bins=bins)
    metrics = {k: boot[k].as_dict() for k in ("auc", "logloss", "ece", "calibration_ratio")}
    gauc_detail = None
    if s.users is not None:
        g = M.gauc(y, p, s.users)
        metrics["gauc"] = M.bootstrap_gauc(g, n_boot=n_boot, seed=seed).as_dict()
        gauc_detail = {"users_used": g.groups_used, "users_skipped": g.groups_skipped,
                       "rows_used": g.rows_used, "rows_skipped": g.rows_skipped}
    else:
        metrics["gauc"] = {"value": None, "ci95": None}
        notes.append(f"{s.name}: the schema has no user key, so GAUC is not computed")
    metrics["average_precision"] = {"value": _num(M.average_precision(y, p)), "ci95": None}
    metrics["mean_prediction"] = {"value": _num(p.mean()) if p.size else None, "ci95": None}
    metrics["positive_rate"] = {"value": _num(y.mean()) if y.size else None, "ci95": None}
    cb = M.calibration_bins(y, p, bins)
    for line in ([] if s.builtin_data else data_warnings(s, "the scored rows")):
        notes.append(f"{s.name}: {line.split('warning: ', 1)[1]}")
    return {
        "name": s.name,
        "model_class": s.class_path.rsplit(".", 1)[-1],
        "class_path": s.class_path,
        "checkpoint": s.checkpoint,
        "rows": int(y.size),
        "positives": int(y.sum()),
        "same_rows_as_first": paired,
        "data": {"missing_rate": s.missing_rate, "oov_rate": s.oov_rate, "builtin_data": s.builtin_data},
        "metrics": {k: metrics[k] for k in ("auc", "gauc", "logloss", "ece", "calibration_ratio",
                                            "average_precision", "mean_prediction", "positive_rate")},
        "gauc_detail": gauc_detail,
        "calibration_bins": [{"low": float(cb.edges[i]), "high": float(cb.edges[i + 1]), "rows": int(cb.count[i]),
                              "mean_prediction": _num(cb.mean_pred[i]), "positive_rate": _num(cb.frac_pos[i])}
                             for i in range(bins)],
        "attention": None if s.attention is None else {"fields": s.attention[1],
                                                       "weights": np.round(np.asarray(s.attention[0], dtype=np.float64), 6).tolist()},
    }


def _compare(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> dict:
    d = M.delong_test(y, a, b)
    pb = M.paired_bootstrap_auc_diff(y, a, b, n_boot=n_boot, seed=seed)
    return {"auc_a": _num(d.auc_a), "auc_b": _num(d.auc_b), "delta": _num(d.delta),
            "delong": {"se": _num(d.se), "z": _num(d.z), "p_value": _num(d.p_value),
                       "ci95": [_num(d.ci95[0]), _num(d.ci95[1])]},
            "paired_bootstrap": {"ci95": [_num(pb.low), _num(pb.high)]}}


def _history_cap_section(caps: Sequence[int], scored: list[Scored], on_rows: list[Scored], n_boot: int,
                         seed: int, bins: int, notes: list[str]) -> dict:
    """AUC / logloss (bootstrap 95% intervals) of every model at each history cap, and DeLong paired
    tests between the models scored on the same rows, cap by cap."""
    fields = sorted({f for s in scored for f in s.sequence_fields})
    if not fields:
        notes.append("--history-cap: the schema has no sequence field, so every cap scores the full rows")
    models = []
    for s in scored:
        by_cap = []
        for k in caps:
            p = s.capped[k]
            boot = M.bootstrap_metrics(s.labels, p, n_boot=n_boot, seed=seed, n_bins=bins)
            by_cap.append({"cap": int(k), "auc": boot["auc"].as_dict(), "logloss": boot["logloss"].as_dict(),
                           "mean_prediction": _num(p.mean()) if p.size else None})
        models.append({"name": s.name, "model_class": s.class_path.rsplit(".", 1)[-1],
                       "sequence_fields": list(s.sequence_fields), "by_cap": by_cap})
    comparisons = []
    y = on_rows[0].labels
    if y.size and 0 < y.sum() < y.size:
        for k in caps:
            for i in range(len(on_rows)):
                for j in range(i + 1, len(on_rows)):
                    a, b = on_rows[i], on_rows[j]
                    comparisons.append({"cap": int(k), "a": a.name, "b": b.name,
                                        **_compare(y, a.capped[k], b.capped[k], n_boot, seed)})
    return {"caps": [int(k) for k in caps], "fields": fields, "method": CONVENTIONS["history_cap"],
            "models": models, "comparisons": comparisons}


def compute_report(checkpoints: Sequence[str | Path], data: str = "test", segments: Sequence[str] = (),
                   n_boot: int = 200, seed: int = 0, bins: int = 10,
                   batch_size: int | None = None,
                   history_caps: Sequence[int] = (),
                   progress: bool = False) -> tuple[dict, dict[str, tuple[str, bytes]]]:
    """Score and measure; returns (the metrics.json dict, figures ``key -> (caption, png)``);
    ``progress``: tqdm bars on stderr over the scoring batches and the bootstrap."""
    from recsys.reports import plots

    ckpts = [Path(c) for c in checkpoints]
    if not ckpts:
        raise RecsysError("no checkpoint given", where="recsys report", fix="pass --ckpt FILE (repeatable)")
    if len(ckpts) > 26:
        raise RecsysError(f"{len(ckpts)} checkpoints; a report compares at most 26", where="--ckpt")
    if n_boot < 1 or bins < 1:
        raise RecsysError("bootstrap resamples and ECE bins must be >= 1", where="recsys report")
    history_caps = sorted({int(k) for k in history_caps})
    if any(k < 0 for k in history_caps):
        raise RecsysError(f"history caps must be >= 0, got {history_caps}", where="--history-cap",
                          fix="pass whole numbers >= 0, e.g. --history-cap 0,1,3,5,10")
    notes: list[str] = []
    sections: list[dict] = []
    scored: list[Scored] = []
    for i, c in enumerate(ckpts):
        name = chr(ord("A") + i)
        kind = _task_class(c) if c.is_file() else RANKING_TASK
        if kind != RANKING_TASK:
            builder = TASK_SECTIONS.get(kind)
            if builder is None:
                raise RecsysError(f"the report supports ranking checkpoints; this one is a {kind.rsplit('.', 1)[-1]}",
                                  where=str(c), fix="retrieval metrics (Recall@K, NDCG@K, diversity) are not "
                                  "implemented yet; report ranking checkpoints only")
            sections.append({"model": name, "checkpoint": str(c), **builder(str(c), data)})
            continue
        scored.append(_score(name, c, data, batch_size, history_caps, progress))
    if not scored:
        raise RecsysError("no ranking checkpoint to report", where="--ckpt")
    base = scored[0]
    paired = [s for s in scored[1:] if _same_rows(base, s)]
    for s in scored[1:]:
        if s not in paired:
            notes.append(f"{s.name} was scored on different rows than {base.name} (its data module differs): "
                         "it is left out of the segments and the comparisons")
    on_rows = [base] + paired
    models = [_model_entry(s, n_boot, seed, bins, s is base or s in paired, notes)
              for s in _bar(scored, f"bootstrap ({n_boot} resamples)", "model", progress)]

    figures: dict[str, tuple[str, bytes]] = {}
    label = {s.name: f"{s.name} {s.class_path.rsplit('.', 1)[-1]}" for s in scored}
    y = base.labels
    by_name = {label[s.name]: s.probs for s in on_rows}
    if y.size and 0 < y.sum() < y.size:
        figures["roc"] = ("ROC curves", plots.roc_plot(y, by_name))
        figures["pr"] = ("Precision-recall curves", plots.pr_plot(y, by_name))
    figures["reliability"] = (f"Reliability diagram ({bins} equal-width bins; marker area ~ rows)",
                              plots.reliability_plot({label[s.name]: M.calibration_bins(s.labels, s.probs, bins)
                                                      for s in on_rows}))
    figures["histograms"] = ("Score histograms by label", plots.score_histograms(y, by_name))

    seg_blocks = []
    conv = dict(CONVENTIONS)
    try:
        hist = _history_lengths(base)
    except RecsysError as e:
        hist = None
        notes.append(f"history-length segment skipped: the train split could not be read ({e})")
    if hist is not None:
        vals, names = _bucket_labels(hist[0], HISTORY_EDGES)
        seg_blocks.append(_segment_block("history_length", "User history length", hist[1], vals, names, on_rows))
        conv["history_length"] = hist[1]
    else:
        if not any("history-length" in n for n in notes):
            notes.append("no sequence field and no user key: the history-length segment is skipped")
        conv["history_length"] = "skipped"
    try:
        pop = _item_popularity(base)
    except RecsysError as e:
        pop = None
        notes.append(f"item popularity segment skipped: the train split could not be read ({e})")
    if pop is not None:
        vals, names = _popularity_buckets(pop)
        seg_blocks.append(_segment_block("item_popularity", "Item popularity (train occurrences)",
                                         CONVENTIONS["item_popularity"], vals, names, on_rows))
    elif not any("item popularity" in n for n in notes):
        notes.append("no item key: the item-popularity segment is skipped")
    for col in segments:
        name = col
        if col not in base.frame.columns:
            try:
                name = base.schema.field(col).source
            except RecsysError:
                name = None
            if name is None or name not in base.frame.columns:
                raise RecsysError(f"no column {col!r} in the evaluated data", where=f"--segment {col}",
                                  fix=f"use one of {base.frame.columns}")
        vals, order, how = _column_segments(base.frame, name)
        seg_blocks.append(_segment_block(f"field:{col}", f"Field {col}", how, vals, order, on_rows))
    for b in seg_blocks:
        names = [bk["segment"] for bk in b["buckets"]]
        aucs = {label[m.name]: [next(x["auc"] for x in bk["metrics"] if x["model"] == m.name) for bk in b["buckets"]]
                for m in on_rows}
        overall = {label[m.name]: M.roc_auc(m.labels, m.probs) for m in on_rows}
        figures[f"segment_{b['key'].replace(':', '_')}"] = (
            f"AUC by {b['title'].lower()} (dotted: overall AUC)",
            plots.segment_bars(b["title"], names, aucs, [bk["rows"] for bk in b["buckets"]], overall))

    comparisons = []
    if y.size and 0 < y.sum() < y.size:
        for i in range(len(on_rows)):
            for j in range(i + 1, len(on_rows)):
                a, b = on_rows[i], on_rows[j]
                comparisons.append({"a": a.name, "b": b.name, **_compare(y, a.probs, b.probs, n_boot, seed)})
    history_cap = (_history_cap_section(history_caps, scored, on_rows, n_boot, seed, bins, notes)
                   if history_caps else None)
    if history_cap is not None:
        figures["history_cap"] = (
            "AUC by history cap (each row's sequence cut to its last K behaviours; dotted: full history)",
            plots.history_cap_lines(history_caps, {label[m["name"]]: [c["auc"]["value"] for c in m["by_cap"]]
                                                   for m in history_cap["models"]},
                                    {label[s.name]: M.roc_auc(s.labels, s.probs) for s in scored}))
    for s in scored:
        if s.attention is not None:
            figures[f"attention_{s.name}"] = (f"{label[s.name]}: mean attention over fields",
                                              plots.attention_heatmap(s.attention[0], s.attention[1], label[s.name]))

    conv["ece"] = conv["ece"].format(bins=bins)
    conv["ci"] = conv["ci"].format(n_boot=n_boot, seed=seed)
    report = {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "data": {"source": str(data), "rows": int(y.size), "positives": int(y.sum()),
                 "positive_rate": _num(y.mean()) if y.size else None},
        "settings": {"bootstrap_resamples": n_boot, "seed": seed, "ece_bins": bins, "confidence": 0.95},
        "conventions": conv,
        "models": models,
        "segments": seg_blocks,
        "comparisons": comparisons,
        "history_cap": history_cap,
        "other_sections": sections,
        "figures": {k: v[0] for k, v in figures.items()},
        "notes": notes,
    }
    return report, figures


def build_report(checkpoints: Sequence[str | Path], data: str = "test", segments: Sequence[str] = (),
                 out_dir: str | Path = "report", n_boot: int = 200, seed: int = 0, bins: int = 10,
                 batch_size: int | None = None, history_caps: Sequence[int] = (), progress: bool = False) -> dict:
    """Score ``checkpoints`` on ``data``, write ``report.html``, ``report.md``, ``metrics.json``
    and ``plots/*.png`` into ``out_dir`` (atomically), and return the metrics.json dict.

    Args:
        checkpoints: ranking checkpoint files (named A, B, ... in this order).
        data: ``test`` (default), ``valid``, or a parquet/CSV file with the label column.
        segments: raw columns to segment AUC by, besides history length and item popularity.
        out_dir: output directory (created; existing report files in it are replaced).
        n_boot: bootstrap resamples for the 95% intervals.
        seed: seed of the bootstrap resamples.
        bins: equal-width probability bins of the ECE and the reliability diagram.
        batch_size: scoring batch size (default: the checkpoint's eval batch size).
        history_caps: also score every row with its sequence fields cut to the last ``K``
            behaviours, for each ``K`` here (``report["history_cap"]``; ``None`` when empty).
        progress: progress bars on stderr (scoring batches, bootstrap).
    """
    from recsys.reports.render import write_report

    report, figures = compute_report(checkpoints, data=data, segments=segments, n_boot=n_boot, seed=seed,
                                     bins=bins, batch_size=batch_size, history_caps=history_caps,
                                     progress=progress)
    write_report(out_dir, report, figures)
    return report
