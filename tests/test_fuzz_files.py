"""Fuzzing real files through the `recsys` command (issue 17): hypothesis writes parquet/CSV files
with odd dtypes (huge and unsigned ids, NaN/inf, unicode and empty strings, booleans, dates,
all-null columns, empty and null lists), a schema that may or may not fit them and labels that
may be wrong, then runs ``recsys fit``, ``recsys predict`` and ``recsys rank-features`` on them.

Every case ends in exit status 0 with a correct result (metrics in range, one score per input
row, a ranking of every feature) or exit status 2 with exactly one ``recsys: error:`` line and
nothing written; never an uncaught exception (a traceback) and never a partial output file.

The commands run in-process through :func:`recsys.cli.main`, the function the ``recsys`` console
script calls (one interpreter, so each example costs a tiny fit, not a torch import); a few
fixed cases also run as real subprocesses. Examples are seeded (``derandomize``) and few; raise
``FUZZ_EXAMPLES`` to search longer locally::

    FUZZ_EXAMPLES=300 pytest tests/test_fuzz_files.py
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path

import polars as pl
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

N = int(os.environ.get("FUZZ_EXAMPLES", "0"))
ROWS = 40  # rows per file: enough for three splits, small enough for a fit in about a second


def fuzz(n: int):
    # no shrinking: each example runs real commands, and the failing case is printed as drawn
    return settings(max_examples=N or n, deadline=None, derandomize=not N, database=None,
                    phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))


# ------------------------------------------------------------------------- values and columns
BIG = 2**63 - 1
odd_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6) | st.sampled_from(
    ["", " ", "é", "日本", "🙂", "a|b", "NA", "?", "null", "0", "1e3", "x" * 40])
COLUMN_KINDS = {
    "int": st.integers(-3, 5) | st.sampled_from([BIG, -BIG - 1, 0]),
    "uint64": st.integers(0, 5) | st.sampled_from([2**64 - 1, 2**63, BIG]),
    "float": st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e308, 1.5]),
    "str": odd_text,
    "bool": st.booleans(),
    "date": st.dates(),
    "list_int": st.lists(st.integers(-2, 5) | st.sampled_from([BIG]), max_size=3),
    "list_str": st.lists(odd_text, max_size=3),
}
DTYPES = {"int": pl.Int64, "uint64": pl.UInt64, "float": pl.Float64, "str": pl.String, "bool": pl.Boolean,
          "date": pl.Date, "list_int": pl.List(pl.Int64), "list_str": pl.List(pl.String)}
FIELD_KINDS = ["categorical", "numeric", "multi_hot"]


@st.composite
def column(draw, n: int):
    kind = draw(st.sampled_from(sorted(COLUMN_KINDS)) | st.just("all_null"))
    if kind == "all_null":
        return kind, pl.Series([None] * n, dtype=draw(st.sampled_from([pl.Int64, pl.String, pl.Null])))
    null_rate = draw(st.sampled_from([0.0, 0.0, 0.2, 1.0]))
    values = [None if draw(st.floats(0, 1)) < null_rate else draw(COLUMN_KINDS[kind]) for _ in range(n)]
    return kind, pl.Series(values, dtype=DTYPES[kind])


@st.composite
def label_column(draw, n: int):
    how = draw(st.sampled_from(["ints", "ints", "ints", "bools", "floats", "strings", "with_2", "with_null",
                                "one_class"]))
    ys = [draw(st.integers(0, 1)) for _ in range(n)]
    ys[0], ys[1] = 0, 1  # both classes somewhere unless the case says otherwise
    if how == "bools":
        return pl.Series([bool(y) for y in ys])
    if how == "floats":
        return pl.Series([float(y) for y in ys])
    if how == "strings":
        return pl.Series([str(y) for y in ys])
    if how == "with_2":
        ys[draw(st.integers(0, n - 1))] = 2
    if how == "with_null":
        return pl.Series([None if i == draw(st.integers(0, n - 1)) else y for i, y in enumerate(ys)], dtype=pl.Int64)
    if how == "one_class":
        ys = [0] * n
    return pl.Series(ys, dtype=pl.Int64)


@st.composite
def data_case(draw):
    """(frame with a split column, schema dict, file suffix)."""
    n = ROWS
    n_cols = draw(st.integers(1, 4))
    cols, kinds = {}, {}
    for i in range(n_cols):
        kind, series = draw(column(n))
        name = draw(st.sampled_from([f"c{i}", f"列{i}", f"c {i}", f"C{i}é"]))
        cols[name], kinds[name] = series, kind
    cols["label"] = draw(label_column(n))
    splits = ["train"] * 24 + ["valid"] * 8 + ["test"] * 8
    if draw(st.booleans()):
        splits = draw(st.permutations(splits))
    cols["split"] = pl.Series(splits)
    frame = pl.DataFrame(cols)
    suffix = draw(st.sampled_from([".parquet", ".csv"]))
    fields = []
    for name, kind in kinds.items():
        plausible = {"int": "categorical", "uint64": "categorical", "str": "categorical", "bool": "categorical",
                     "date": "categorical", "float": "numeric", "list_int": "multi_hot", "list_str": "multi_hot",
                     "all_null": "categorical"}[kind]
        fkind = draw(st.sampled_from([plausible, plausible, plausible] + FIELD_KINDS))
        field = {"name": name, "kind": fkind}
        if fkind == "multi_hot" and (suffix == ".csv" or kind not in ("list_int", "list_str")):
            field["separator"] = "|"
        if fkind == "categorical" and draw(st.booleans()):
            field["hash_buckets"] = draw(st.sampled_from([1, 7]))
        fields.append(field)
    if suffix == ".csv":  # CSV holds no lists: join them as the schema's separator expects
        frame = frame.with_columns([pl.col(c).cast(pl.List(pl.String)).list.join("|") for c, k in kinds.items()
                                    if k.startswith("list")])
    schema = {"label": "label", "fields": fields}
    if draw(st.booleans()) and kinds:
        first = next(iter(kinds))
        if kinds[first] in ("int", "uint64", "str"):
            schema["keys"] = {"user": first}
    return frame, schema, suffix


# ------------------------------------------------------------------------------- the commands
def run(argv: list[str]) -> tuple[int, str, str]:
    """``recsys ARGV`` in this process: (exit status, stdout, stderr). An exception other than the
    CLI's own handling propagates (it would be a traceback for the user) and fails the test."""
    from recsys.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def one_error_line(rc: int, err: str) -> str:
    assert rc == 2, (rc, err[-2000:])
    lines = [ln for ln in err.splitlines() if ln.startswith("recsys: error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def write_case(tmp: Path, frame: pl.DataFrame, schema: dict, suffix: str) -> tuple[Path, Path]:
    data = tmp / f"data{suffix}"
    if suffix == ".csv":
        frame.write_csv(data)
    else:
        frame.write_parquet(data)
    schema_path = tmp / "schema.yaml"
    schema_path.write_text(yaml.safe_dump(schema, allow_unicode=True))
    return data, schema_path


def fit_config(tmp: Path, data: Path, schema: Path) -> Path:
    cfg = {
        "data": {"class_path": "recsys.data.CTRDataModule",
                 "init_args": {"dataset": str(data), "schema": str(schema), "batch_size": 16}},
        "model": {"class_path": "recsys.tasks.RankingTask",
                  "init_args": {"lr": 0.01, "model": {"class_path": "recsys.models.DeepFM",
                                                      "init_args": {"embedding_dim": 2, "hidden_units": [4]}}}},
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp / "runs"),
                    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp / "runs"), "name": "fz"}},
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"filename": "best", "monitor": "val/auc", "mode": "max",
                                                 "save_top_k": 1}}]},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def check_fit(tmp: Path, frame: pl.DataFrame, schema: dict, suffix: str) -> Path | None:
    """``recsys fit`` on the case: exit 0 with a metrics.json in range, or one error line and no
    run folder. Returns the config on success."""
    data, schema_path = write_case(tmp, frame, schema, suffix)
    cfg = fit_config(tmp, data, schema_path)
    rc, out, err = run(["fit", "--config", str(cfg)])
    if rc != 0:
        one_error_line(rc, err)
        assert not (tmp / "runs").exists(), files_under(tmp / "runs")  # nothing written
        return None
    metrics = json.loads(next((tmp / "runs" / "fz").glob("version_*/metrics.json")).read_text())
    for split in ("valid", "test"):
        m = metrics.get(split) or {}
        if "auc" in m:
            assert 0.0 <= m["auc"] <= 1.0 or math.isnan(m["auc"]), metrics
            assert m["logloss"] >= 0 and math.isfinite(m["logloss"]), metrics
    assert metrics["valid"], metrics
    return cfg


@pytest.mark.slow
@fuzz(12)
@given(data_case())
def test_fit_on_fuzzed_files_exits_cleanly(case):
    frame, schema, suffix = case
    with tempfile.TemporaryDirectory() as d:
        check_fit(Path(d), frame, schema, suffix)


@pytest.mark.slow
@fuzz(30)
@given(data_case())
def test_rank_features_on_fuzzed_files_exits_cleanly(case):
    frame, schema, suffix = case
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data, schema_path = write_case(tmp, frame.drop("split"), schema, suffix)
        before = files_under(tmp)
        out = tmp / "rk"
        args = ["rank-features", "--data", str(data), "--out", str(out), "--no-progress", "--permutations", "2"]
        if len(schema["fields"]) and schema.get("fields")[0]["kind"] != "categorical":
            args += ["--schema", str(schema_path)]
        rc, _, err = run(args)
        if rc != 0:
            one_error_line(rc, err)
            assert files_under(tmp) == before  # no output folder, no temporary folder left
            return
        ranking = pl.read_csv(out / "ranking.csv")
        assert ranking.height >= 1 and ranking["feature"].n_unique() == ranking.height
        assert not [p for p in tmp.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A fit on a clean 300-row file: the checkpoint that fuzzed predict files are scored with."""
    tmp = tmp_path_factory.mktemp("fz")
    import random

    rng = random.Random(0)
    frame = pl.DataFrame({
        "user": [f"u{rng.randrange(9)}" for _ in range(300)],
        "item": [rng.randrange(20) for _ in range(300)],
        "price": [rng.random() for _ in range(300)],
        "tags": [[f"t{rng.randrange(4)}" for _ in range(rng.randrange(3))] for _ in range(300)],
        "label": [rng.randrange(2) for _ in range(300)],
        "split": [("train", "train", "train", "valid", "test")[i % 5] for i in range(300)],
    })
    schema = {"label": "label", "keys": {"user": "user", "item": "item"},
              "fields": [{"name": "user", "kind": "categorical"}, {"name": "item", "kind": "categorical"},
                         {"name": "price", "kind": "numeric"}, {"name": "tags", "kind": "multi_hot"}]}
    cfg = check_fit(tmp, frame, schema, ".parquet")
    ckpt = next((tmp / "runs" / "fz").glob("version_*/checkpoints/best*.ckpt"))
    return tmp, cfg, ckpt


@st.composite
def predict_case(draw):
    """A predict file for the trained schema with odd values, sometimes odd columns."""
    n = draw(st.integers(1, 12))
    cols = {}
    for name, good in (("user", st.text(max_size=3) | st.sampled_from(["u1", "🙂", ""])),
                       ("item", st.integers(-5, 30) | st.sampled_from([BIG, -BIG - 1])),
                       ("price", st.floats(allow_nan=False, allow_infinity=False, width=32)),
                       ("tags", st.lists(st.sampled_from(["t1", "t9", "", "日本"]), max_size=3))):
        how = draw(st.sampled_from(["good", "good", "good", "null", "missing", "other"]))
        if how == "missing":
            continue
        if how == "other":
            kind, series = draw(column(n))
            cols[name] = series
            continue
        cols[name] = pl.Series([None if how == "null" else draw(good) for _ in range(n)])
    if draw(st.booleans()):
        cols["label"] = draw(label_column(max(n, 2)))[:n]
    return pl.DataFrame(cols) if cols else pl.DataFrame({"x": [1] * n}), draw(st.sampled_from([".parquet", ".csv"]))


@pytest.mark.slow
@fuzz(15)
@given(predict_case())
def test_predict_on_fuzzed_files_exits_cleanly(trained, case):
    tmp, cfg, ckpt = trained
    frame, suffix = case
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        path = d / f"p{suffix}"
        if suffix == ".csv":
            if any(isinstance(dt, pl.List) for dt in frame.dtypes):
                frame = frame.with_columns([pl.col(c).cast(pl.List(pl.String)).list.join("|")
                                            for c, dt in frame.schema.items() if isinstance(dt, pl.List)])
            frame.write_csv(path)
        else:
            frame.write_parquet(path)
        out = d / "scores.parquet"
        before = files_under(tmp)
        rc, _, err = run(["predict", "--config", str(cfg), "--ckpt_path", str(ckpt), "--predict_out", str(out),
                          "--data.init_args.predict_path", str(path)])
        assert files_under(tmp) == before  # predict writes nothing beside the run
        if rc != 0:
            one_error_line(rc, err)
            assert not out.exists() and [p.name for p in d.iterdir()] == [path.name]
            return
        scores = pl.read_parquet(out)
        assert scores.height == frame.height
        assert scores["score"].is_between(0, 1).all()


@pytest.mark.slow
@pytest.mark.parametrize("damage, expected", [
    ("uint64 ids above 2**63", "UInt64 ids above 2**63 - 1"),
    ("NaN in a numeric column", "NaN/inf values in numeric field"),
])
def test_odd_files_through_a_real_recsys_process(tmp_path, damage, expected):
    """The same contract with the console script in its own process: exit 2, one line, no traceback."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    n = ROWS
    frame = pl.DataFrame({
        "用户 id": pl.Series([2**64 - 1 - (i % 3) if damage.startswith("uint64") else i % 3 for i in range(n)],
                           dtype=pl.UInt64),
        "price": [float("nan") if damage.startswith("NaN") and i == 5 else float(i) for i in range(n)],
        "tags": [[] if i % 2 else ["🙂", ""] for i in range(n)],
        "label": [i % 2 for i in range(n)],
        "split": ["train"] * 24 + ["valid"] * 8 + ["test"] * 8,
    })
    schema = {"label": "label", "fields": [{"name": "用户 id", "kind": "categorical"},
                                           {"name": "price", "kind": "numeric"}, {"name": "tags", "kind": "multi_hot"}]}
    data, schema_path = write_case(tmp_path, frame, schema, ".parquet")
    cfg = fit_config(tmp_path, data, schema_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]))
    res = subprocess.run([sys.executable, "-m", "recsys.cli", "fit", "--config", str(cfg)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    line = one_error_line(res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and expected in line and str(data) in line
    assert not (tmp_path / "runs").exists()
