"""StreamingCTRDataModule: parquet data larger than memory, read a bounded chunk at a time.

The data is a parquet file, a directory of parquet files or a glob, with a split column (or one
path per split, like :class:`~recsys.data.datamodule.CTRDataModule`). Nothing is ever loaded
whole: each file is cut into *pieces* of ``piece_rows`` consecutive rows (read with a polars
slice, which only decodes the row groups it touches), and training reads a few pieces at a time.

Per epoch, for one split (see :func:`plan_epoch`):

1. **pieces** (only those holding rows of the split) are put in a random order drawn from
   ``seed + epoch`` (file order for valid/test/predict); their split rows, concatenated in that
   order, form one *stream* of ``N`` rows;
2. **ranks** (DDP processes: the trainer's ``global_rank``/``world_size``, or the constructor's
   ``rank``/``world_size``) each take one contiguous range of the stream, ``N / world_size`` rows
   (+-1), so each rank reads only its own pieces;
3. a rank's rows are cut into **batches** (``batch_size``) and consecutive batches into
   **chunks** of about ``shuffle_buffer`` rows; chunk ``k`` goes to **dataloader worker**
   ``k % num_workers``;
4. a worker reads a chunk's piece slices (a few pieces from anywhere in the data), encodes them
   with the fitted :class:`~recsys.data.preprocess.FeatureEncoder`, shuffles the chunk's rows
   (seeded by ``seed``, epoch, rank and chunk) and yields its batches.

So every row of the split is yielded exactly once per epoch across all ranks and workers; the
batches of an epoch are a function of ``(seed, epoch)``, the data and the batch size alone (not
of timing or of ``num_workers``), and their order is too for a given ``num_workers`` (the
DataLoader takes one batch from each worker in turn); memory is bounded by one chunk per worker
(plus the DataLoader's prefetch), independent of the row count. Every rank yields the same number of batches (DDP needs that): when a rank has fewer rows,
its last batches are a little smaller.

**Encoders** are fitted on a *bounded sample* of the train split: whole train pieces in a
seeded random order until ``fit_rows`` rows (default one million; ``None`` fits on every train
row, in memory, which gives exactly :class:`CTRDataModule`'s encoders). Values that never occur
in the sample map to the OOV id like any unseen value, and quantile boundaries and
standardization statistics are the sample's.

Batches are the same :class:`~recsys.data.batch.Batch` as CTRDataModule's; ``rows`` is the row's
position within its split (file order, split rows only), so ``predict`` output maps back to keys.
``user_ids`` ranks users within one chunk only (no model uses it; reports use the in-memory
module).

From YAML (``recsys fit --config experiments/streaming_deepfm_synthetic.yaml``; see docs/streaming.md)::

    data:
      class_path: recsys.data.streaming.StreamingCTRDataModule
      init_args:
        dataset: data/clicks/          # directory of parquet files with a 'split' column
        schema: data/clicks/schema.yaml
        batch_size: 4096
        num_workers: 2

>>> import tempfile
>>> from recsys.data.datasets.synthetic import write_synthetic_parquet
>>> d = write_synthetic_parquet(tempfile.mkdtemp() + "/ds", 4_000, chunk_rows=2_000, n_users=50, n_items=40)
>>> dm = StreamingCTRDataModule(dataset=str(d), schema=str(d / "schema.yaml"), batch_size=256, piece_rows=500)
>>> batch = next(iter(dm.train_dataloader())); len(batch), batch.sparse.keys()[:2]
(256, ['user_id', 'item_id'])
"""

from __future__ import annotations

import dataclasses
import glob as _glob
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl
import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from recsys.data.batch import Batch, SplitDataset
from recsys.data.preprocess import FeatureEncoder
from recsys.errors import ConfigError, DataError
from recsys.schema import Schema

SPLITS = ("train", "valid", "test")


# ----------------------------------------------------------------------------------- files
def parquet_files(path: str | Path | list) -> list[Path]:
    """The parquet files of ``path``: a file, a directory (its ``*.parquet``, sorted), a glob, or a list.

    Raises :class:`DataError` naming ``path`` when nothing matches.
    """
    if isinstance(path, (list, tuple)):
        out: list[Path] = []
        for p in path:
            out += parquet_files(p)
        return out
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.parquet")) + sorted(p.glob("*.pq"))
        where = f"{p} (a directory)"
    elif p.is_file():
        files = [p]
        where = str(p)
    else:
        files = [Path(f) for f in sorted(_glob.glob(str(p)))]
        where = str(p)
    if not files:
        raise DataError("no parquet files found", where=where,
                        fix="pass a .parquet file, a directory holding .parquet files, or a glob like 'data/*.parquet'")
    for f in files:
        if f.suffix.lower() not in (".parquet", ".pq"):
            raise DataError(f"unsupported file type {f.suffix!r}; streaming reads parquet only", where=str(f),
                            fix="convert the data to parquet (polars: scan_csv(...).sink_parquet(...))")
    return files


def _read_error(f: Path, e: Exception) -> DataError:
    first = str(e).splitlines()[0][:300] if str(e) else ""
    return DataError(f"could not read the parquet file ({type(e).__name__}: {first})", where=str(f),
                     fix="the file is truncated, corrupt or not parquet; rewrite it (or remove it from the data set)")


@dataclass(frozen=True)
class Piece:
    """``length`` consecutive rows of ``files[file]`` from ``start``, holding ``rows`` rows of the
    split; ``offset`` is the split position of the first of them (split rows in file order)."""

    file: int
    start: int
    length: int
    rows: int
    offset: int


@dataclass
class SplitSource:
    """Where one split's rows are: files, an optional split-column filter, and the pieces."""

    name: str
    files: list[Path]
    columns: list[str]
    split_column: str | None
    pieces: list[Piece]

    @property
    def n_rows(self) -> int:
        return sum(p.rows for p in self.pieces)

    @property
    def where(self) -> str:
        files = [str(f) for f in self.files]
        shown = ", ".join(files[:3]) + (f", ... ({len(files)} files)" if len(files) > 3 else "")
        return f"{shown} [{self.name}]"

    def read(self, segments: list[tuple[int, int, int]]) -> tuple[pl.DataFrame, np.ndarray]:
        """Rows ``lo:hi`` (split rows) of each ``(piece index, lo, hi)``, concatenated, and their
        split positions."""
        frames, rows = [], []
        for i, lo, hi in segments:
            p = self.pieces[i]
            f = self.files[p.file]
            try:
                lf = pl.scan_parquet(f).slice(p.start, p.length)
                if self.split_column is not None:
                    lf = lf.filter(pl.col(self.split_column).cast(pl.String) == self.name)
                df = lf.select(self.columns).slice(lo, hi - lo).collect()
            except Exception as e:  # noqa: BLE001 - polars raises several types for a bad file
                raise _read_error(f, e) from None
            if df.height != hi - lo:
                raise DataError(f"expected {hi - lo} rows at rows {p.start}..{p.start + p.length}, read {df.height}",
                                where=str(f), fix="the file changed while it was being read; restart")
            frames.append(df)
            rows.append(np.arange(p.offset + lo, p.offset + hi, dtype=np.int64))
        if not frames:
            return pl.DataFrame(), np.zeros(0, dtype=np.int64)
        try:
            frame = pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else frames[0]
        except Exception as e:  # noqa: BLE001
            raise DataError(f"the files' column types do not match ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                            where=self.where, fix="write every file with the same column types") from None
        return frame, np.concatenate(rows)

    def scan(self) -> pl.LazyFrame:
        """The split's rows as one lazy scan (only the schema's columns)."""
        lfs = []
        for f in self.files:
            lf = pl.scan_parquet(f)
            if self.split_column is not None:
                lf = lf.filter(pl.col(self.split_column).cast(pl.String) == self.name)
            lfs.append(lf.select(self.columns))
        return pl.concat(lfs, how="vertical_relaxed")


def build_source(name: str, files: list[Path], columns: list[str], split_column: str | None,
                 piece_rows: int) -> SplitSource:
    """Cut ``files`` into pieces of ``piece_rows`` rows and count each piece's rows of split ``name``
    (reading only the split column). A file that polars cannot open, or that lacks a column,
    raises :class:`DataError` naming it."""
    pieces: list[Piece] = []
    offset = 0
    for fi, f in enumerate(files):
        try:
            lf = pl.scan_parquet(f)
            present = lf.collect_schema().names()
        except Exception as e:  # noqa: BLE001
            raise _read_error(f, e) from None
        wanted = columns + ([split_column] if split_column else [])
        missing = [c for c in wanted if c not in present]
        if missing:
            what = (f"the split column {split_column!r}" if missing == [split_column]
                    else f"columns {missing}")
            raise DataError(f"{what} missing; the file has {present}", where=str(f),
                            fix="add the columns, fix the schema's field names / 'column:' entries, or pass "
                                "valid_path/test_path instead of a split column")
        try:
            if split_column is None:
                n = lf.select(pl.len()).collect().item()
                counts = {k: min(piece_rows, n - k * piece_rows) for k in range(-(-n // piece_rows))}
            else:
                agg = (lf.select(pl.col(split_column).cast(pl.String) == name)
                       .with_row_index("_i")
                       .group_by((pl.col("_i") // piece_rows).alias("_k"))
                       .agg(pl.len().alias("_n"), pl.col(split_column).sum().alias("_s"))
                       .collect())
                n = int(agg["_n"].sum()) if agg.height else 0
                counts = dict(zip(agg["_k"].to_list(), agg["_s"].to_list()))
        except Exception as e:  # noqa: BLE001
            raise _read_error(f, e) from None
        for k in range(-(-n // piece_rows)):
            rows = int(counts.get(k) or 0)
            if rows:
                start = k * piece_rows
                pieces.append(Piece(fi, start, min(piece_rows, n - start), rows, offset))
                offset += rows
    return SplitSource(name, files, columns, split_column, pieces)


# ------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Chunk:
    """What one worker reads and yields at once: split rows of pieces, cut into batches."""

    index: int                                # chunk number within the rank's epoch
    segments: tuple[tuple[int, int, int], ...]  # (piece index, lo, hi): split rows lo:hi of the piece
    batch_sizes: tuple[int, ...]


def batch_sizes(n: int, n_batches: int, batch_size: int) -> list[int]:
    """``n`` rows as ``n_batches`` batches of at most ``batch_size`` rows: full batches first, then
    the remainder spread so that none is empty.

    >>> batch_sizes(10, 3, 4), batch_sizes(8, 3, 4), batch_sizes(3, 1, 4)
    ([4, 4, 2], [4, 3, 1], [3])
    """
    if n < n_batches or n > n_batches * batch_size:
        raise ValueError(f"cannot cut {n} rows into {n_batches} batches of <= {batch_size}")
    out, left = [], n
    for k in range(n_batches):
        s = min(batch_size, left - (n_batches - k - 1))
        out.append(s)
        left -= s
    return out


def rank_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[a, b)`` of ``n`` stream rows."""
    return n * rank // world_size, n * (rank + 1) // world_size


def n_batches(n: int, world_size: int, batch_size: int) -> int:
    """Batches every rank yields per epoch (the largest rank share, in batches)."""
    return -(-(-(-n // world_size)) // batch_size)


def plan_epoch(piece_rows: list[int], *, rank: int, world_size: int, batch_size: int, chunk_rows: int,
               shuffle: bool, seed: int, epoch: int) -> list[Chunk]:
    """The chunks rank ``rank`` reads in epoch ``epoch`` (see the module docstring).

    Args:
        piece_rows: split rows of each piece, in file order.
        chunk_rows: rows per chunk, rounded down to whole batches (at least one batch).

    >>> [c.segments for c in plan_epoch([4, 4, 4], rank=1, world_size=2, batch_size=3, chunk_rows=3,
    ...                                 shuffle=False, seed=0, epoch=0)]
    [((1, 2, 4), (2, 0, 1)), ((2, 1, 4),)]
    """
    counts = np.asarray(piece_rows, dtype=np.int64)
    n = int(counts.sum())
    if n < world_size:
        raise ValueError(f"{n} rows cannot be shared by {world_size} ranks")
    if shuffle:
        g = np.random.default_rng([int(seed), int(epoch), 0x5EED])
        order = g.permutation(len(counts))
    else:
        order = np.arange(len(counts))
    ends = np.cumsum(counts[order])
    starts = ends - counts[order]
    a, b = rank_range(n, rank, world_size)
    sizes = batch_sizes(b - a, n_batches(n, world_size, batch_size), batch_size)
    per_chunk = max(1, chunk_rows // batch_size)
    chunks = []
    pos = a
    for k, first in enumerate(range(0, len(sizes), per_chunk)):
        bs = sizes[first:first + per_chunk]
        lo, hi = pos, pos + sum(bs)
        pos = hi
        segs = []
        j = int(np.searchsorted(ends, lo, side="right"))
        while j < len(order) and starts[j] < hi:
            s0, s1 = max(lo, int(starts[j])), min(hi, int(ends[j]))
            segs.append((int(order[j]), s0 - int(starts[j]), s1 - int(starts[j])))
            j += 1
        chunks.append(Chunk(k, tuple(segs), tuple(bs)))
    return chunks


# -------------------------------------------------------------------------------- dataset
class StreamingDataset(IterableDataset):
    """Yields one split's :class:`Batch` es chunk by chunk (see the module docstring).

    ``len()`` is the number of batches this rank yields per epoch. Iterating directly (outside a
    DataLoader) yields the batches of epoch ``self.epoch`` for worker 0 of 1; :meth:`batches`
    takes an explicit worker, which is how tests simulate several workers in one process.
    """

    def __init__(self, source: SplitSource, features: FeatureEncoder, *, batch_size: int, shuffle: bool,
                 seed: int, rank: int, world_size: int, chunk_rows: int, require_label: bool = True,
                 epoch_fn: Callable[[], int | None] | None = None):
        if source.n_rows < world_size:
            raise DataError(f"the {source.name} split has {source.n_rows} rows, fewer than the "
                            f"{world_size} processes", where=source.where, fix="use fewer processes or more data")
        self.source, self.features = source, features
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.chunk_rows = rank, world_size, chunk_rows
        self.require_label = require_label
        self.keys = [f.name for f in features.schema.id_fields]
        self.epoch = 0
        self.skip_batches = 0
        self._next_epoch = 0
        self._epoch_fn = epoch_fn

    def __getstate__(self) -> dict:  # workers get no reference to the trainer
        state = dict(self.__dict__)
        state["_epoch_fn"] = None
        return state

    def __len__(self) -> int:
        return n_batches(self.source.n_rows, self.world_size, self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next epoch (and direct iteration) use ``epoch``."""
        self.epoch = self._next_epoch = int(epoch)

    def start_epoch(self) -> None:
        """Called by the DataLoader in the main process when an epoch's iteration begins: the
        trainer's ``current_epoch`` when attached, else one more than the last epoch."""
        e = self._epoch_fn() if self._epoch_fn is not None else None
        self.epoch = self._next_epoch if e is None else int(e)
        self._next_epoch = self.epoch + 1

    def plan(self, epoch: int | None = None) -> list[Chunk]:
        return plan_epoch([p.rows for p in self.source.pieces], rank=self.rank, world_size=self.world_size,
                          batch_size=self.batch_size, chunk_rows=self.chunk_rows, shuffle=self.shuffle,
                          seed=self.seed, epoch=self.epoch if epoch is None else epoch)

    def batches(self, worker: int = 0, num_workers: int = 1, epoch: int | None = None,
                skip: int | None = None) -> Iterator[Batch]:
        """The batches of worker ``worker`` of ``num_workers`` in ``epoch`` (default ``self.epoch``),
        less those among the first ``skip`` batches the DataLoader yields (default
        ``self.skip_batches``: set when resuming mid-epoch; chunks skipped whole are not read)."""
        epoch = self.epoch if epoch is None else epoch
        chunks = self.plan(epoch)[worker::num_workers]
        skip = self.skip_batches if skip is None else skip
        if skip:
            skip = worker_skips(self.plan(epoch), num_workers, skip)[worker]
        for chunk in chunks:
            if skip >= len(chunk.batch_sizes):
                skip -= len(chunk.batch_sizes)
                continue
            yield from itertools.islice(self._chunk_batches(chunk, epoch), skip, None)
            skip = 0

    def _chunk_batches(self, chunk: Chunk, epoch: int) -> Iterator[Batch]:
        frame, rows = self.source.read(list(chunk.segments))
        files = sorted({self.source.files[self.source.pieces[i].file].name for i, _, _ in chunk.segments})
        where = f"{self.source.files[0].parent}/{{{','.join(files)}}} [{self.source.name}]"
        enc = self.features.transform(frame, source=where, require_label=self.require_label)
        ds = SplitDataset(enc, self.keys)
        n = len(rows)
        if self.shuffle:
            g = torch.Generator().manual_seed(int(np.random.SeedSequence(
                [int(self.seed), int(epoch), int(self.rank), int(chunk.index)]).generate_state(1)[0]))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        global_rows = torch.from_numpy(rows)
        pos = 0
        for size in chunk.batch_sizes:
            idx = order[pos:pos + size]
            pos += size
            b = ds[idx]
            yield dataclasses.replace(b, rows=global_rows[idx])

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is None:
            return self.batches(0, 1)
        return self.batches(info.id, info.num_workers)


def worker_skips(plan: list[Chunk], num_workers: int, skip: int) -> list[int]:
    """How many of each worker's batches are among the first ``skip`` batches a DataLoader yields:
    it takes one batch from each worker in turn, passing over workers that have run out."""
    left = [sum(len(c.batch_sizes) for c in plan[w::num_workers]) for w in range(num_workers)]
    out = [0] * num_workers
    while skip > 0 and any(left):
        for w in range(num_workers):
            if skip and left[w]:
                out[w] += 1
                left[w] -= 1
                skip -= 1
    return out


class StreamingLoader(DataLoader):
    """A DataLoader that tells its :class:`StreamingDataset` when an epoch starts (in the main
    process, before workers receive their copy of the dataset), and whose ``state_dict`` records
    how far into the epoch it is, so a run resumed from a mid-epoch checkpoint continues with the
    batches it had not trained yet (Lightning saves and restores loaders that have these methods).
    With ``num_workers=0`` the resumed epoch continues in exactly the original order; with
    workers, each worker skips its own already-trained batches, so the same batches are trained but
    the workers' round robin restarts at worker 0 (resume with the same ``num_workers``)."""

    _resume: dict | None = None
    _position: dict | None = None

    def __iter__(self):
        ds = self.dataset
        if not isinstance(ds, StreamingDataset):
            return super().__iter__()
        ds.start_epoch()
        resume, self._resume = self._resume, None
        ds.skip_batches = resume["batches"] if resume and resume["epoch"] == ds.epoch else 0
        return self._counted(super().__iter__(), ds.epoch, ds.skip_batches)

    def _counted(self, it, epoch: int, start: int):
        self._position = {"epoch": epoch, "batches": start}
        for b in it:
            self._position["batches"] += 1
            yield b

    def state_dict(self) -> dict:
        ds = self.dataset
        pos = self._position or {"epoch": getattr(ds, "epoch", 0), "batches": 0}
        return {**pos, "rows": ds.source.n_rows, "batch_size": ds.batch_size, "seed": ds.seed}

    def load_state_dict(self, state: dict) -> None:
        ds = self.dataset
        for key, now in (("rows", ds.source.n_rows), ("batch_size", ds.batch_size), ("seed", ds.seed)):
            if key in state and state[key] != now:
                raise DataError(f"cannot resume mid-epoch: the checkpoint's loader had {key}={state[key]!r}, "
                                f"this run has {now!r}", where=ds.source.where,
                                fix="resume with the data, batch size and seed of the interrupted run")
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


# ----------------------------------------------------------------------------- datamodule
class StreamingCTRDataModule(L.LightningDataModule):
    """CTR data streamed from parquet, for data larger than memory; the same Batches as CTRDataModule.

    Args:
        dataset: parquet file, directory of parquet files, or glob, holding every split (split
            column) or, with ``valid_path``, only the train rows.
        schema: schema YAML (required; :func:`~recsys.data.datasets.synthetic.write_synthetic_parquet`
            writes one next to its files).
        split_column: column holding ``train``/``valid``/``test``.
        valid_path: separate validation parquet (file/directory/glob); then ``dataset`` is train only.
        test_path: separate test parquet.
        predict_path: parquet to score with ``recsys predict`` (default: the test split).
        fields: keep only these schema fields (plus the tables they share).
        batch_size: training batch size.
        eval_batch_size: batch size for valid/test/predict (default: 4x ``batch_size``).
        seed: seed of the order (piece order, then rows within a chunk; epoch ``e`` differs).
        features_from: a recsys checkpoint (or FeatureEncoder JSON) whose encoders to use instead of
            fitting (set by ``recsys predict/test/validate --ckpt_path``).
        fit_rows: rows of the bounded train sample the encoders are fitted on (whole pieces in a
            seeded random order); ``None`` = every train row (in memory).
        piece_rows: rows per piece, the unit of reading and of the piece-order shuffle; best a
            multiple (or divisor) of the files' row-group size.
        shuffle_buffer: rows shuffled together (a chunk); memory per worker grows with it.
        num_workers: DataLoader worker processes per rank (0 = read in the training process).
        multiprocessing_context: start method of the workers: ``forkserver`` (default; a server
            process that has imported recsys forks each epoch's workers, so they start in
            milliseconds) or ``spawn`` (each worker imports torch/polars itself, seconds). Not
            ``fork``: a forked child of a process that used polars hangs in polars' thread pool.
        rank, world_size: this process's share of the data; ``None`` takes the trainer's
            ``global_rank``/``world_size`` (1 process without a trainer). Set them to simulate ranks.
        synthetic: if set and ``dataset`` does not exist yet, first write synthetic data there with
            :func:`~recsys.data.datasets.synthetic.write_synthetic_parquet` (these are its arguments:
            ``n_rows``, ``chunk_rows``, ``row_group_size``, ``seed`` and SyntheticConfig fields).
    """

    def __init__(
        self,
        dataset: str,
        schema: str | None = None,
        split_column: str = "split",
        valid_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        fields: list[str] | None = None,
        batch_size: int = 4096,
        eval_batch_size: int | None = None,
        seed: int = 0,
        features_from: str | None = None,
        fit_rows: int | None = 1_000_000,
        piece_rows: int = 16_384,
        shuffle_buffer: int = 65_536,
        num_workers: int = 0,
        multiprocessing_context: str | None = "forkserver",
        rank: int | None = None,
        world_size: int | None = None,
        synthetic: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        for name, v, lo in (("batch_size", batch_size, 1), ("piece_rows", piece_rows, 1),
                            ("shuffle_buffer", shuffle_buffer, 1), ("num_workers", num_workers, 0)):
            if not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}", where=f"data.{name}")
        if fit_rows is not None and (not isinstance(fit_rows, int) or fit_rows < 1):
            raise ConfigError(f"fit_rows must be a positive integer or null, got {fit_rows!r}", where="data.fit_rows")
        if (rank is None) != (world_size is None):
            raise ConfigError("set both rank and world_size, or neither", where="data.rank/world_size")
        if world_size is not None and not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank}", where="data.rank")
        if test_path is not None and valid_path is None:
            raise ConfigError("test_path is set but valid_path is not", where="data",
                              fix="pass valid_path too, or put all rows in files with a split column")
        self.dataset = dataset
        self.schema_path = schema
        self.split_column = split_column
        self.valid_path, self.test_path, self.predict_path = valid_path, test_path, predict_path
        self.fields = fields
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 4 * batch_size
        self.seed = seed
        self.features_from = features_from
        self.fit_rows = fit_rows
        self.piece_rows = piece_rows
        self.shuffle_buffer = shuffle_buffer
        self.num_workers = num_workers
        self.multiprocessing_context = multiprocessing_context
        self.rank_override, self.world_size_override = rank, world_size
        self.synthetic = dict(synthetic) if synthetic else None
        self._schema: Schema | None = None
        self._features: FeatureEncoder | None = None
        self._sources: dict[str, SplitSource] = {}

    # ------------------------------------------------------------------ sources
    @property
    def schema(self) -> Schema:
        if self._schema is None:
            if self.synthetic is not None and not Path(self.dataset).exists():
                from recsys.data.datasets.synthetic import write_synthetic_parquet

                write_synthetic_parquet(self.dataset, **self.synthetic)
            path = self.schema_path
            if path is None and Path(self.dataset).is_dir() and (Path(self.dataset) / "schema.yaml").is_file():
                path = str(Path(self.dataset) / "schema.yaml")
            if path is None:
                raise ConfigError("a streaming data set needs a schema", where=f"data.dataset={self.dataset}",
                                  fix="add 'schema: path/to/schema.yaml' under data")
            schema = Schema.from_yaml(path)
            self._schema = schema.select(self.fields) if self.fields is not None else schema
        return self._schema

    def source(self, split: str) -> SplitSource:
        """Where the rows of ``split`` (train/valid/test/predict) are; raises DataError when it is empty."""
        if split == "predict" and not self.predict_path:
            split = "test"
        if split not in self._sources:
            cols = [c for c in self.schema.source_columns]
            if split == "predict":
                files, split_col = parquet_files(self.predict_path), None
                present = set(pl.scan_parquet(files[0]).collect_schema().names()) if files else set()
                cols = [c for c in cols if c in present]  # a predict file may lack the label / keys
            elif self.valid_path is None:
                files, split_col = parquet_files(self.dataset), self.split_column
            else:
                path = {"train": self.dataset, "valid": self.valid_path, "test": self.test_path}[split]
                if path is None:
                    raise DataError(f"no {split} data", where="data", fix=f"pass {split}_path")
                files, split_col = parquet_files(path), None
            src = build_source(split, files, cols, split_col, self.piece_rows)
            if src.n_rows == 0:
                how = f"rows with {self.split_column} == {split!r}" if split_col else "rows"
                raise DataError(f"the {split} split is empty", where=src.where, fix=f"provide {how}")
            self._sources[split] = src
        return self._sources[split]

    def _fit_sample(self) -> pl.DataFrame:
        src = self.source("train")
        if self.fit_rows is None or self.fit_rows >= src.n_rows:
            order = list(range(len(src.pieces)))
        else:
            order = list(np.random.default_rng([int(self.seed), 0xF17]).permutation(len(src.pieces)))
        segs, total = [], 0
        for i in order:
            take = src.pieces[i].rows if self.fit_rows is None else min(src.pieces[i].rows, self.fit_rows - total)
            segs.append((int(i), 0, take))
            total += take
            if self.fit_rows is not None and total >= self.fit_rows:
                break
        return src.read(segs)[0]

    @property
    def features(self) -> FeatureEncoder:
        """The fitted FeatureEncoder; fitted on first access on a bounded train sample (``fit_rows``)."""
        if self._features is None:
            if self.features_from:
                from recsys.data.datamodule import load_features

                self._features = load_features(self.features_from)
            else:
                src = self.source("train")
                self._features = FeatureEncoder(self.schema).fit(self._fit_sample(), source=src.where)
        return self._features

    def scan(self, split: str) -> pl.LazyFrame:
        """The raw rows of a split as a lazy scan (nothing read yet)."""
        return self.source(split).scan()

    def frame(self, split: str) -> pl.DataFrame:
        """The raw rows of a split, **collected in memory** (for reports on valid/test-sized splits;
        training never calls it). Raises DataError when the split is empty."""
        return self.scan(split).collect()

    def has_split(self, split: str) -> bool:
        """Whether ``split`` has rows, without loading them (only the split column is read)."""
        try:
            self.source(split)
        except DataError:
            return False
        return True

    def predict_keys(self) -> pl.DataFrame:
        """Key columns of the predict rows, in row order (only these columns are read)."""
        src = self.source("predict")
        present = set(src.columns)
        cols = [c for c in self.schema.keys.values() if c in present]
        if not cols:
            return pl.DataFrame({"row": range(src.n_rows)})
        return src.scan().select(cols).collect()

    # -------------------------------------------------------------- lightning
    def _rank(self) -> tuple[int, int]:
        if self.world_size_override is not None:
            return int(self.rank_override), int(self.world_size_override)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _trainer_epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else int(trainer.current_epoch)

    def dataset_for(self, split: str) -> StreamingDataset:
        rank, world = self._rank()
        train = split == "train"
        return StreamingDataset(
            self.source(split), self.features, batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train, seed=self.seed, rank=rank, world_size=world,
            chunk_rows=max(self.shuffle_buffer, self.batch_size if train else self.eval_batch_size),
            require_label=split != "predict", epoch_fn=self._trainer_epoch if train else None)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("predict",)}
        for split in wanted.get(stage or "fit", SPLITS):
            self.source(split)
        if stage in (None, "fit"):
            self.features  # noqa: B018 - fit the encoders before the loops start

    def _loader(self, split: str) -> DataLoader:
        ds = self.dataset_for(split)
        kw: dict[str, Any] = {}
        if self.num_workers > 0:
            ctx: Any = self.multiprocessing_context
            if ctx == "forkserver":
                import multiprocessing

                ctx = multiprocessing.get_context("forkserver")
                # the server imports torch/polars/recsys once (polars' thread pool is created lazily,
                # so it is not running there); each epoch's workers are then cheap forks of it
                ctx.set_forkserver_preload(["recsys.data.streaming"])
            kw = {"num_workers": self.num_workers, "multiprocessing_context": ctx, "prefetch_factor": 2}
        return StreamingLoader(ds, batch_size=None, **kw)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
