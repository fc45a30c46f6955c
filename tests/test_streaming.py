"""StreamingCTRDataModule: exact coverage across ranks x workers, seeded order, bounded memory,
corrupt files, and a fit through RankingTask / `recsys fit` that matches the in-memory module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from recsys.data.batch import Batch
from recsys.data.datasets.synthetic import write_synthetic_parquet
from recsys.data.streaming import StreamingCTRDataModule, batch_sizes, plan_epoch
from recsys.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"n_users": 200, "n_items": 100, "history_len": 5}


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory) -> Path:
    """12k rows in 3 files (5000, 5000, 2000 rows; row groups of 1000), each file with its own
    train/valid/test tail: 9600 train rows."""
    return write_synthetic_parquet(tmp_path_factory.mktemp("stream") / "ds", 12_000, chunk_rows=5_000,
                                   row_group_size=1_000, seed=3, **SMALL)


def _dm(ds_dir: Path, **kw) -> StreamingCTRDataModule:
    args = {"dataset": str(ds_dir), "schema": str(ds_dir / "schema.yaml"), "batch_size": 256,
            "piece_rows": 1_000, "shuffle_buffer": 2_048, "seed": 7}
    args.update(kw)
    return StreamingCTRDataModule(**args)


def _simulated(ds_dir: Path, split: str, epoch: int, world_size: int = 2, num_workers: int = 2, **kw):
    """Batches of every (rank, worker) of one epoch, computed in this process."""
    out = {}
    for rank in range(world_size):
        dm = _dm(ds_dir, rank=rank, world_size=world_size, **kw)
        ds = dm.dataset_for(split)
        for w in range(num_workers):
            out[rank, w] = list(ds.batches(w, num_workers, epoch=epoch))
        assert len(ds) == sum(len(out[rank, w]) for w in range(num_workers))
    return out, dm


@pytest.mark.parametrize("split", ["train", "valid"])
def test_two_ranks_two_workers_cover_every_row_once(ds_dir, split):
    parts, dm = _simulated(ds_dir, split, epoch=0)
    frame = dm.frame(split)
    n = len(frame)
    assert n == (9_600 if split == "train" else 1_200)
    rows = torch.cat([b.rows for bs in parts.values() for b in bs])
    assert len(rows) == n and sorted(rows.tolist()) == list(range(n))  # every row exactly once
    # DDP needs the same number of batches on every rank
    per_rank = [sum(len(parts[r, w]) for w in range(2)) for r in range(2)]
    assert per_rank[0] == per_rank[1]
    # rows map to the right data: labels and encoded item ids equal the in-memory encoding
    enc = dm.features.transform(frame)
    items = torch.from_numpy(enc.ids["item_id"][0])
    for bs in parts.values():
        for b in bs:
            assert isinstance(b, Batch)
            assert b.sparse.keys() == [f.name for f in dm.features.schema.id_fields]
            assert torch.equal(b.labels, torch.from_numpy(enc.labels)[b.rows])
            assert torch.equal(b.sparse["item_id"].values(), items[b.rows])
            assert torch.allclose(b.dense, torch.from_numpy(enc.dense)[b.rows])


def test_uneven_rows_still_give_equal_batch_counts():
    # 4801 rows, 2 ranks of 2400/2401 rows, batch 100: 25 batches each (rank 0's last ones smaller)
    for rank in range(2):
        plan = plan_epoch([1000, 1000, 2801], rank=rank, world_size=2, batch_size=100, chunk_rows=300,
                          shuffle=True, seed=0, epoch=0)
        sizes = [s for c in plan for s in c.batch_sizes]
        assert len(sizes) == 25 and max(sizes) <= 100 and min(sizes) >= 1
        assert sum(sizes) == (2400 if rank == 0 else 2401)
    assert batch_sizes(8, 3, 4) == [4, 3, 1]
    with pytest.raises(ValueError):
        batch_sizes(2, 3, 4)


def test_order_is_seeded_and_changes_with_epoch(ds_dir):
    def order(epoch, seed=7):
        parts, _ = _simulated(ds_dir, "train", epoch, world_size=1, num_workers=1, seed=seed)
        return torch.cat([b.rows for b in parts[0, 0]]).tolist()

    e0 = order(0)
    assert order(0) == e0                      # same seed, fresh module: same order
    assert order(1) != e0                      # next epoch: another order
    assert sorted(order(1)) == sorted(e0)
    assert order(0, seed=8) != e0              # another seed: another order
    assert e0 != sorted(e0)                    # it is shuffled at all
    # through the DataLoader: each iteration is the next epoch, set_epoch(0) replays epoch 0
    dm = _dm(ds_dir)
    loader = dm.train_dataloader()
    first = torch.cat([b.rows for b in loader]).tolist()
    second = torch.cat([b.rows for b in loader]).tolist()
    assert first == e0 and second == order(1)
    loader.dataset.set_epoch(0)
    assert torch.cat([b.rows for b in loader]).tolist() == e0
    # valid is not shuffled: file order
    assert torch.cat([b.rows for b in dm.val_dataloader()]).tolist() == list(range(1_200))


def test_worker_processes_yield_the_simulated_batches(ds_dir):
    """Real DataLoader workers (forkserver) produce exactly the batches simulated in-process."""
    dm = _dm(ds_dir, num_workers=2)
    got = sorted(tuple(b.rows.tolist()) for b in dm.train_dataloader())
    parts, _ = _simulated(ds_dir, "train", 0, world_size=1, num_workers=2)
    want = sorted(tuple(b.rows.tolist()) for bs in parts.values() for b in bs)
    assert got == want


# VmHWM (this address space's peak RSS), not getrusage's ru_maxrss: after fork + exec Linux carries
# the parent's (here: pytest's) peak into the child's ru_maxrss. One process streams the small
# data set, then the large one: if memory grew with the rows, the second epoch would raise the peak.
_RSS_SCRIPT = r"""
import sys, json
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
from recsys.data.streaming import StreamingCTRDataModule
import torchrec  # noqa: F401  (imported by the batches anyway; part of the baseline)
out = {"base_mb": status("VmRSS")}
for name, dataset in (("small", sys.argv[1]), ("big", sys.argv[2])):
    dm = StreamingCTRDataModule(dataset=dataset, schema=sys.argv[3], batch_size=4096,
                                fit_rows=100_000, piece_rows=16_384, shuffle_buffer=65_536)
    dm.setup("fit")
    n = 0
    for b in dm.train_dataloader():
        n += len(b)
    out[name] = {"rows": n, "peak_mb": status("VmHWM")}
print(json.dumps(out))
"""

RSS_ROWS = 1_000_000
RSS_BOUND_MB = 300


@pytest.mark.slow
def test_peak_rss_is_bounded_and_flat_in_the_row_count(tmp_path):
    """Streaming one epoch adds at most RSS_BOUND_MB to the process's RSS after imports (batch
    4096, shuffle_buffer 65536, fit_rows 100k), and 4x the rows add almost nothing: 200k then 800k
    train rows (in memory, 1M rows are ~250 MB as a raw polars frame and ~950 MB of added RSS in
    CTRDataModule). The issue's 5M rows take too long to generate in the test suite on 2 cores;
    experiments/bench/scaling.py measures 1M vs 5M rows."""
    d = write_synthetic_parquet(tmp_path / "big", RSS_ROWS, chunk_rows=125_000, row_group_size=16_384)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(d / "part-0000[01].parquet"), str(d),
                          str(d / "schema.yaml")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    small, big = res["small"], res["big"]
    assert small["rows"] == 200_000 and big["rows"] == 800_000
    assert big["peak_mb"] - res["base_mb"] < RSS_BOUND_MB, res
    assert big["peak_mb"] - small["peak_mb"] < 60, res  # flat: not proportional to the rows


def test_truncated_or_corrupt_parquet_names_the_file(ds_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ds_dir.glob("*.parquet"):
        (bad / f.name).write_bytes(f.read_bytes())
    victim = bad / "part-00001.parquet"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated: no footer
    with pytest.raises(DataError, match="part-00001.parquet") as e:
        _dm(bad, schema=str(ds_dir / "schema.yaml")).setup("fit")
    assert "truncated, corrupt" in str(e.value)
    # footer intact, data pages overwritten: found when the piece is read, still naming the file
    victim.write_bytes(data[:4] + bytes(len(data) // 2) + data[4 + len(data) // 2:])
    dm = _dm(bad, schema=str(ds_dir / "schema.yaml"), fit_rows=1_000)
    with pytest.raises(DataError, match="part-00001.parquet"):
        dm.setup("fit")
        for _ in dm.train_dataloader():
            pass
    # not a parquet file at all
    victim.write_text("user_id,item_id\n1,2\n")
    with pytest.raises(DataError, match="part-00001.parquet"):
        _dm(bad, schema=str(ds_dir / "schema.yaml")).setup("fit")


def test_bad_configuration_is_a_recsys_error(ds_dir, tmp_path):
    with pytest.raises(DataError, match="no parquet files"):
        _dm(tmp_path / "nothing", schema=str(ds_dir / "schema.yaml")).setup("fit")
    with pytest.raises(ConfigError, match="rank"):
        _dm(ds_dir, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size"):
        _dm(ds_dir, batch_size=0)
    with pytest.raises(DataError, match="split column 'fold'"):
        _dm(ds_dir, split_column="fold").setup("fit")
    with pytest.raises(DataError, match="the test split is empty"):
        nosplit = tmp_path / "train_only.parquet"
        pl.read_parquet(ds_dir / "part-00000.parquet").filter(pl.col("split") == "train").write_parquet(nosplit)
        _dm(ds_dir, dataset=str(nosplit)).setup("test")


def _fit_config(tmp_path: Path, name: str, data: dict) -> Path:
    cfg = yaml.safe_load((ROOT / "experiments" / "streaming_deepfm_synthetic.yaml").read_text())
    cfg["trainer"].update({
        "max_epochs": 2, "default_root_dir": str(tmp_path / name), "enable_progress_bar": False,
        "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                   "init_args": {"save_dir": str(tmp_path), "name": name}},
    })
    cfg["trainer"]["callbacks"] = cfg["trainer"]["callbacks"][:1]
    cfg["model"]["init_args"]["model"]["init_args"].update({"embedding_dim": 8, "hidden_units": [64, 32]})
    cfg["model"]["init_args"]["lr"] = 0.003
    cfg["data"] = data
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_fit_and_predict_through_the_cli_match_in_memory(ds_dir, tmp_path):
    """`recsys fit` with the streaming module reaches the in-memory CTRDataModule's AUC on the same
    rows (same encoders: fit_rows covers the whole train split), and `recsys predict` maps every
    test row back to its keys."""
    from recsys.cli import main

    common = {"dataset": str(ds_dir), "schema": str(ds_dir / "schema.yaml"), "batch_size": 256, "seed": 0}
    stream = _fit_config(tmp_path, "stream", {"class_path": "recsys.data.streaming.StreamingCTRDataModule",
                                              "init_args": {**common, "piece_rows": 1_000, "shuffle_buffer": 4_096,
                                                            "fit_rows": None}})
    memory = _fit_config(tmp_path, "memory", {"class_path": "recsys.data.CTRDataModule", "init_args": common})
    assert main(["fit", "--config", str(stream)]) == 0
    assert main(["fit", "--config", str(memory)]) == 0
    ms, mm = (json.loads(next((tmp_path / n).glob("version_*/metrics.json")).read_text()) for n in ("stream", "memory"))
    assert ms["valid"]["auc"] > 0.6, ms  # learned the planted signal (chance is 0.5)
    assert abs(ms["valid"]["auc"] - mm["valid"]["auc"]) < 0.02, (ms["valid"], mm["valid"])
    assert abs(ms["test"]["auc"] - mm["test"]["auc"]) < 0.02, (ms["test"], mm["test"])

    out = tmp_path / "pred.parquet"
    assert main(["predict", "--config", str(stream), "--ckpt_path", ms["best_checkpoint"],
                 "--predict_out", str(out)]) == 0
    pred = pl.read_parquet(out)
    test = _dm(ds_dir).frame("test")
    assert len(pred) == len(test) == 1_200
    keys = ["user_id", "item_id", "timestamp"]
    assert pred.select(keys).equals(test.select(keys))  # test rows in file order
    assert pred["score"].is_between(0, 1).all()

    # reports rebuild the checkpoint's own data module class (not the in-memory one)
    from recsys.data.streaming import StreamingCTRDataModule
    from recsys.tasks import load_datamodule

    assert type(load_datamodule(ms["best_checkpoint"])) is StreamingCTRDataModule
    assert type(load_datamodule(mm["best_checkpoint"])).__name__ == "CTRDataModule"


def _interleave(per_worker: list[list]) -> list:
    """The DataLoader's order: one batch from each worker in turn, passing over finished workers."""
    out, its = [], [iter(x) for x in per_worker]
    live = list(range(len(its)))
    while live:
        for w in list(live):
            b = next(its[w], None)
            if b is None:
                live.remove(w)
            else:
                out.append(b)
    return out


def test_mid_epoch_resume_continues_with_the_untrained_batches(ds_dir):
    # in the training process: the loader's state_dict after 7 batches, loaded into a fresh module
    dm = _dm(ds_dir)
    loader = dm.train_dataloader()
    full = [b.rows.tolist() for b in loader]  # epoch 0
    it = iter(loader)  # epoch 1
    seen = [next(it).rows.tolist() for _ in range(7)]
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 7
    fresh = _dm(ds_dir).train_dataloader()
    fresh.load_state_dict(state)
    fresh.dataset.set_epoch(1)
    rest = [b.rows.tolist() for b in fresh]
    again = _dm(ds_dir).train_dataloader()
    again.dataset.set_epoch(1)
    assert seen + rest == [b.rows.tolist() for b in again] and seen + rest != full
    # with 2 workers: each worker skips its share of the first k batches of the round robin, so
    # the resumed epoch trains exactly the batches not trained yet (the round robin restarts at
    # worker 0, so their order may differ from the uninterrupted run's)
    ds = _dm(ds_dir).dataset_for("train")
    order = _interleave([list(ds.batches(w, 2)) for w in range(2)])
    for k in (0, 1, 5, len(order) - 1, len(order)):
        tail = _interleave([list(ds.batches(w, 2, skip=k)) for w in range(2)])
        assert sorted(b.rows.tolist() for b in tail) == sorted(b.rows.tolist() for b in order[k:])
    with pytest.raises(DataError, match="batch_size"):
        _dm(ds_dir, batch_size=128).train_dataloader().load_state_dict(state)


def test_has_split_reads_nothing_but_the_split_column(ds_dir, tmp_path):
    dm = _dm(ds_dir)
    assert dm.has_split("train") and dm.has_split("valid") and dm.has_split("test")
    only_train = tmp_path / "train_only.parquet"
    pl.read_parquet(ds_dir / "part-00000.parquet").filter(pl.col("split") == "train").write_parquet(only_train)
    dm = _dm(ds_dir, dataset=str(only_train))
    assert dm.has_split("train") and not dm.has_split("test")
