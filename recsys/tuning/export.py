"""What a study leaves behind: the best config, a trials table, one offline HTML page of plots.

* ``best_config.yaml``: the exact config the best trial ran (its ``trial.yaml``), logging to
  ``runs/<study>_best``; ``recsys fit --config best_config.yaml`` reruns it.
* ``trials.csv``: one row per trial: number, state, value, epochs, duration, valid/test metrics,
  parameters, run directory, error (``retry_of`` marks a rerun of an interrupted trial).
* ``report.html``: optimization history, parameter importances, parallel coordinates and the
  per-epoch curves, as matplotlib PNGs embedded in the page (no network, no JavaScript).

Every file is written atomically.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import yaml

from recsys.tuning.space import SearchSpace, load_config
from recsys.tuning.study import counted_trials
from recsys.utils import atomic_path, atomic_write_text


def _best(study):
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return None
    return (max if study.direction.name == "MAXIMIZE" else min)(done, key=lambda t: t.value)


def state_counts(study) -> dict[str, int]:
    """Trials by state; a FAIL that was requeued after its worker died counts as ``interrupted``."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    counts = {s.name.lower(): 0 for s in TrialState}
    counts["interrupted"] = 0
    for t in trials:
        counts["interrupted" if t.number in retried else t.state.name.lower()] += 1
    return {k: v for k, v in counts.items() if v}


def export_best_config(study, space: SearchSpace, base_cfg: dict, path: Path, study_name: str) -> Path | None:
    """Write the best trial's config as a YAML that `recsys fit --config` reruns; None if no trial completed."""
    best = _best(study)
    if best is None:
        return None
    run_dir = Path(best.user_attrs.get("run_dir", ""))
    trial_yaml = run_dir / "trial.yaml"
    if trial_yaml.is_file():
        cfg = yaml.safe_load(trial_yaml.read_text())
    else:  # the run directory is on another host: rebuild from the recorded parameters
        from recsys.tuning.study import trial_config

        params = space.decode({k: v for k, v in best.params.items() if k != "features.top_n"})
        cfg = trial_config(base_cfg, space, params, run_dir, best.user_attrs.get("fields"))
    tr = cfg.setdefault("trainer", {})
    tr["default_root_dir"] = f"runs/{study_name}_best"
    tr["logger"] = {"class_path": "pytorch_lightning.loggers.CSVLogger",
                    "init_args": {"save_dir": "runs", "name": f"{study_name}_best"}}
    base_tr = base_cfg.get("trainer") or {}
    if "enable_progress_bar" in base_tr:
        tr["enable_progress_bar"] = base_tr["enable_progress_bar"]
    else:
        tr.pop("enable_progress_bar", None)
    test = best.user_attrs.get("test_auc")
    params = "\n".join(f"#   {k}: {json.dumps(v)}" for k, v in best.params.items())
    header = (f"# Best trial of study {study_name!r}: trial {best.number}, {space.metric} = {best.value:.6f}"
              + (f", test auc = {test:.6f}" if isinstance(test, float) else "") + "\n"
              f"# Sampled parameters:\n{params}\n"
              f"# Rerun:  recsys fit --config {path}\n")
    atomic_write_text(path, header + yaml.safe_dump(cfg, sort_keys=False))
    return path


def trial_rows(study) -> tuple[list[str], list[dict[str, Any]]]:
    trials = study.get_trials(deepcopy=False)
    pnames: list[str] = []
    for t in trials:
        for k in t.params:
            if k not in pnames:
                pnames.append(k)
    metric_keys = sorted({k for t in trials for k in t.user_attrs if k.startswith(("valid_", "test_"))})
    cols = (["number", "state", "value", "epochs", "duration_s"] + metric_keys + pnames
            + ["retry_of", "run_dir", "error"])
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "value": t.value,
                               "epochs": t.user_attrs.get("epochs"), "duration_s": t.user_attrs.get("duration_s")}
        for k in metric_keys:
            row[k] = t.user_attrs.get(k)
        for k in pnames:
            row[k] = t.params.get(k)
        row["retry_of"] = t.user_attrs.get("retry_of")
        row["run_dir"] = t.user_attrs.get("run_dir")
        row["error"] = t.user_attrs.get("error")
        rows.append(row)
    return cols, rows


def export_trials_csv(study, path: Path) -> Path:
    cols, rows = trial_rows(study)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return path


# ----------------------------------------------------------------------------- plots
def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(study, metric: str) -> str:
    from optuna.trial import TrialState

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    maximize = study.direction.name == "MAXIMIZE"
    comp = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.value is not None]
    if comp:
        ax.scatter([t.number for t in comp], [t.value for t in comp], color="tab:blue", label="complete", zorder=3)
        best, xs, ys = None, [], []
        for t in sorted(comp, key=lambda t: t.number):
            if best is None or (t.value > best if maximize else t.value < best):
                best = t.value
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    if pruned:
        ax.scatter([t.number for t in pruned], [t.value for t in pruned], color="tab:gray", marker="x",
                   label="pruned (last epoch reported)")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("optimization history")
    if comp or pruned:
        ax.legend(fontsize=8)
    return _png(fig)


def param_importances(study) -> dict[str, float]:
    """Optuna's PED-ANOVA importances (no scikit-learn needed); falls back to |Spearman rho|."""
    import warnings

    from optuna.trial import TrialState

    comp = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if len(comp) < 2:
        return {}
    try:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        if imp and all(math.isfinite(v) for v in imp.values()):
            return dict(imp)
    except Exception:  # noqa: BLE001 - too few trials, a constant parameter, ...
        pass
    return _spearman_importances(comp)


def _spearman_importances(trials) -> dict[str, float]:
    import numpy as np

    names = sorted({k for t in trials for k in t.params})
    vals = np.array([t.value for t in trials], dtype=float)
    out = {}
    for n in names:
        ts = [t for t in trials if n in t.params]
        if len(ts) < 2:
            continue
        xs = [t.params[n] for t in ts]
        codes = sorted(set(map(str, xs)))
        x = np.array([float(v) if isinstance(v, (int, float)) else codes.index(str(v)) for v in xs])
        y = np.array([t.value for t in ts], dtype=float)
        rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
        rho = np.corrcoef(rx, ry)[0, 1] if rx.std() > 0 and ry.std() > 0 else 0.0
        out[n] = abs(float(rho))
    total = sum(out.values()) or 1.0
    del vals
    return dict(sorted(((k, v / total) for k, v in out.items()), key=lambda kv: -kv[1]))


def plot_importances(imp: dict[str, float]) -> str | None:
    if not imp:
        return None
    plt = _plt()
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(names) + 1.2))
    ax.barh([n.replace("init_args.", "") for n in names], [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (share)")
    ax.set_title("parameter importances")
    ax.tick_params(axis="y", labelsize=8)
    return _png(fig)


def plot_parallel(study, metric: str) -> str | None:
    import numpy as np
    from optuna.trial import TrialState

    comp = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    names = sorted({k for t in comp for k in t.params})
    if not comp or not names:
        return None
    plt = _plt()
    axes_vals = []
    ticks = []
    for n in names:
        raw = [t.params.get(n) for t in comp]
        num = [v for v in raw if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(num) == len([v for v in raw if v is not None]) and num:
            log = min(num) > 0 and max(num) / min(num) > 50
            f = (lambda v: math.log10(v)) if log else float
            lo, hi = min(map(f, num)), max(map(f, num))
            axes_vals.append([None if v is None else (f(v) - lo) / ((hi - lo) or 1) for v in raw])
            ticks.append((f"{min(num):.3g}", f"{max(num):.3g}" + (" (log)" if log else "")))
        else:
            cats = sorted({str(v) for v in raw if v is not None})
            axes_vals.append([None if v is None else cats.index(str(v)) / ((len(cats) - 1) or 1) for v in raw])
            ticks.append((cats[0][:14], cats[-1][:14]))
    vals = np.array([t.value for t in comp])
    lo, hi = vals.min(), vals.max()
    axes_vals.append(list((vals - lo) / ((hi - lo) or 1)))
    ticks.append((f"{lo:.4f}", f"{hi:.4f}"))
    labels = [n.replace("init_args.", "").replace("model.model.", "model.") for n in names] + [metric]
    fig, ax = plt.subplots(figsize=(max(7.5, 1.6 * len(labels)), 4.2))
    cmap = plt.get_cmap("viridis")
    order = np.argsort(vals) if study.direction.name == "MAXIMIZE" else np.argsort(-vals)
    for i in order:
        pts = [(j, axes_vals[j][i]) for j in range(len(labels)) if axes_vals[j][i] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=cmap((vals[i] - lo) / ((hi - lo) or 1)), alpha=0.8)
    for j, (a, b) in enumerate(ticks):
        ax.axvline(j, color="black", lw=0.6)
        ax.text(j, -0.08, a, ha="center", va="top", fontsize=7)
        ax.text(j, 1.04, b, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.2, 1.15)
    ax.set_title(f"parallel coordinates (colour: {metric}, bright = high)", pad=18)
    return _png(fig)


def plot_curves(study, metric: str) -> str | None:
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for t in trials:
        steps = sorted(t.intermediate_values)
        pruned = t.state == TrialState.PRUNED
        ax.plot([s + 1 for s in steps], [t.intermediate_values[s] for s in steps],
                color="tab:gray" if pruned else "tab:blue", alpha=0.5 if pruned else 0.8,
                ls="--" if pruned else "-", marker="o", ms=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title("per-epoch validation metric (grey dashed: pruned)")
    return _png(fig)


def export_report(study, space: SearchSpace, path: Path, study_name: str) -> Path:
    trials = study.get_trials(deepcopy=False)
    counts = state_counts(study)
    best = _best(study)
    total_epochs = sum(int(t.user_attrs.get("epochs") or 0) for t in trials)
    imp = param_importances(study)
    figs = [("Optimization history", plot_history(study, space.metric)),
            ("Parameter importances", plot_importances(imp)),
            ("Parallel coordinates", plot_parallel(study, space.metric)),
            ("Learning curves", plot_curves(study, space.metric))]
    cols, rows = trial_rows(study)
    show = [c for c in cols if c not in ("run_dir",)]
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>recsys tune: {e(study_name)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
             "th{background:#f3f3f3}img{max-width:100%}.err{color:#a00;text-align:left}</style></head><body>",
             f"<h1>Study {e(study_name)}</h1>",
             f"<p>objective: {e(space.metric)} ({e(space.direction)}); trials: "
             + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f"; epochs run: {total_epochs}; "
             f"space: {e(str(space.path))}; counted towards the budget: {len(counted_trials(study))}</p>"]
    if best is not None:
        test = best.user_attrs.get("test_auc")
        parts.append(f"<p><b>best: trial {best.number}</b>, {e(space.metric)} = {best.value:.6f}"
                     + (f", test auc = {test:.6f}" if isinstance(test, float) else "") + "</p><ul>"
                     + "".join(f"<li>{e(k)} = {e(json.dumps(v))}</li>" for k, v in best.params.items()) + "</ul>")
    if imp:
        parts.append("<p>importances: " + ", ".join(f"{e(k)} {v:.2f}" for k, v in imp.items()) + "</p>")
    for title, png in figs:
        if png:
            parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Trials</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in show) + "</tr>")
    for r in rows:
        cells = []
        for c in show:
            v = r.get(c)
            txt = "" if v is None else (f"{v:.5g}" if isinstance(v, float) else str(v))
            cells.append(f"<td class='err'>{e(txt)}</td>" if c == "error" else f"<td>{e(txt)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path


def export_all(study, space: SearchSpace, config_path: str, study_dir: Path, study_name: str) -> dict[str, Path | None]:
    """Write best_config.yaml, trials.csv and report.html into ``study_dir``."""
    base_cfg = load_config(config_path)
    return {
        "best_config": export_best_config(study, space, base_cfg, study_dir / "best_config.yaml", study_name),
        "trials": export_trials_csv(study, study_dir / "trials.csv"),
        "report": export_report(study, space, study_dir / "report.html", study_name),
    }
