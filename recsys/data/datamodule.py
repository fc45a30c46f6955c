"""CTRDataModule: raw data -> fitted encoders -> train/valid/test/predict batches.

Used from YAML (``data:`` section of an experiment)::

    data:
      class_path: recsys.data.CTRDataModule
      init_args:
        dataset: movielens-100k        # or synthetic, or path/to/data.parquet (+ schema:)
        batch_size: 4096

or from Python:

>>> dm = CTRDataModule(dataset="synthetic", dataset_options={"n_rows": 2000}, batch_size=256)
>>> dm.features.table_sizes["item_id"] > 2
True
>>> dm.setup("fit"); batch = next(iter(dm.train_dataloader())); len(batch)
256
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytorch_lightning as L
from torch.utils.data import DataLoader

from recsys.data.batch import BatchIndexSampler, ResumableDataLoader, SplitDataset
from recsys.data.preprocess import EncodedSplit, FeatureEncoder
from recsys.data.sources import BUILTIN, read_table
from recsys.errors import DataError
from recsys.schema import Schema

SPLITS = ("train", "valid", "test")


class CTRDataModule(L.LightningDataModule):
    """Loads a data set, fits the feature encoders on its train split, serves Batches.

    Args:
        dataset: ``synthetic`` (default, no download), ``movielens-100k``, ``adult``, or the path of a
            parquet/CSV file (or directory of parquet files) holding every split.
        schema: schema YAML. Required for a file data set; for a built-in one it replaces the
            built-in schema (e.g. to drop fields or set per-field widths).
        split_column: column holding ``train``/``valid``/``test`` in a file data set.
        valid_path: separate validation file (then ``dataset`` is the train file and no split
            column is needed).
        test_path: separate test file.
        predict_path: file to score with ``recsys predict`` (default: the test split).
        dataset_options: options of a built-in data set, typed and validated per data set
            (:mod:`recsys.data.datasets.options`: ``n_rows``, ``seed``, ... for synthetic;
            ``history_len``, the sequence length, wherever there is a sequence; ``split_seed``
            for adult); a misspelled key is a ConfigError naming the closest valid one.
        fields: keep only these schema fields (plus the tables they share); ``None`` keeps all.
        batch_size: training batch size.
        eval_batch_size: batch size for valid/test/predict (default: 4x ``batch_size``).
        seed: seed of the shuffling order (epoch ``e`` uses ``seed + e``).
        features_from: a recsys checkpoint (or a FeatureEncoder JSON file) whose fitted encoders
            to use instead of fitting on the train split; ``recsys predict/test/validate
            --ckpt_path FILE`` sets it, so scoring maps raw values exactly as training did.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        schema: str | None = None,
        split_column: str = "split",
        valid_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        dataset_options: dict[str, Any] | None = None,
        fields: list[str] | None = None,
        batch_size: int = 4096,
        eval_batch_size: int | None = None,
        seed: int = 0,
        features_from: str | None = None,
    ):
        super().__init__()
        # stored in checkpoints ("datamodule_hyper_parameters"), so a report can rebuild the data
        self.save_hyperparameters()
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}", where="data.batch_size")
        self.dataset = dataset
        self.schema_path = schema
        self.split_column = split_column
        self.valid_path, self.test_path, self.predict_path = valid_path, test_path, predict_path
        self.dataset_options = dict(dataset_options or {})
        self.fields = fields
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 4 * batch_size
        self.seed = seed
        self.features_from = features_from
        self._features: FeatureEncoder | None = None
        self._frames: dict[str, pl.DataFrame] = {}
        self._encoded: dict[str, EncodedSplit] = {}
        self._datasets: dict[str, SplitDataset] = {}

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        if "train" in self._frames:  # loaded (a predict file may have been read first)
            return
        if self.dataset in BUILTIN:
            frame, schema = BUILTIN[self.dataset](**self.dataset_options)
            source = self.dataset
            if self.schema_path:
                schema = Schema.from_yaml(self.schema_path)
        else:
            if self.dataset_options:
                raise DataError(f"dataset_options apply to built-in data sets {sorted(BUILTIN)}, not files",
                                where="data.dataset_options", fix="remove dataset_options")
            if not self.schema_path:
                raise DataError("a file data set needs a schema", where=f"data.dataset={self.dataset}",
                                fix="add 'schema: path/to/schema.yaml' under data (or use a built-in data set: "
                                    f"{sorted(BUILTIN)})")
            schema = Schema.from_yaml(self.schema_path)
            source = self.dataset
            cols = list(schema.source_columns)
            if self.test_path is not None and self.valid_path is None:
                raise DataError("test_path is set but valid_path is not", where="data",
                                fix="pass valid_path too (early stopping and checkpoints need validation rows), "
                                    "or put all rows in one file with a split column")
            if self.valid_path is None and self.test_path is None:
                frame = read_table(self.dataset, [c for c in cols if c != self.split_column] + [self.split_column])
            else:
                frame = None
        if self.fields is not None:
            schema = schema.select(self.fields)
        self.schema = schema
        if frame is not None:
            if self.split_column not in frame.columns:
                raise DataError(f"no split column {self.split_column!r}", where=source,
                                fix="add a column with values train/valid/test, or pass valid_path/test_path")
            split = frame[self.split_column].cast(pl.String)
            for name in SPLITS:
                self._frames[name] = frame.filter(split == name)
        else:
            cols = list(schema.source_columns)
            self._frames["train"] = read_table(self.dataset, cols)
            for name, path in (("valid", self.valid_path), ("test", self.test_path)):
                if path is not None:
                    self._frames[name] = read_table(path, cols)
        self._source = source
        for name in ("train", "valid"):
            if name not in self._frames or len(self._frames[name]) == 0:
                raise DataError(f"the {name} split is empty", where=self._split_source(name),
                                fix=f"make sure some rows have {self.split_column} == {name!r}" if frame is not None
                                else "give the file data rows")
        if self.test_path is not None and len(self._frames.get("test", ())) == 0:
            raise DataError("the test split is empty", where=self._split_source("test"), fix="give the file data rows")

    def _split_source(self, split: str) -> str:
        """Where a split's rows come from, for messages: its own file, or the file + split column."""
        own = {"train": self.dataset if (self.valid_path or self.test_path) else None,
               "valid": self.valid_path, "test": self.test_path,
               "predict": self.predict_path}.get(split)
        if own:
            return f"{own} [{split}]"
        return f"{self._source} [{split}: rows with {self.split_column} == {split!r}]" \
            if split != "predict" and self.dataset not in BUILTIN else f"{self._source} [{split}]"

    @property
    def features(self) -> FeatureEncoder:
        """The fitted FeatureEncoder (schema + encoders); fitting happens on first access."""
        if self._features is None:
            self._load()
            if self.features_from:
                self._features = load_features(self.features_from)
            else:
                self._features = FeatureEncoder(self.schema).fit(self._frames["train"],
                                                                 source=self._split_source("train"))
                self._validate_eval_splits()
        return self._features

    def _validate_eval_splits(self) -> None:
        """Check the valid and test rows against the fitted schema (columns, types, labels) now,
        before any training step, naming the file that is wrong (not after training ends)."""
        from recsys.data.missing import replace_missing

        for split in ("valid", "test"):
            frame = self._frames.get(split)
            if frame is None or len(frame) == 0:
                continue
            src = self._split_source(split)
            self._features.validate(replace_missing(frame, self._features.schema, src), src)

    def frame(self, split: str) -> pl.DataFrame:
        """The raw (unencoded) rows of a split, or of the predict file for ``predict``."""
        if split == "predict":
            if self.predict_path:
                if "predict" not in self._frames:
                    self._frames["predict"] = read_table(self.predict_path)
                return self._frames["predict"]
            split = "test"
        self._load()
        if split not in self._frames or len(self._frames[split]) == 0:
            raise DataError(f"the {split} split is empty", where=self._source,
                            fix=f"provide {split} rows (split column or {split}_path)")
        return self._frames[split]

    def encoded(self, split: str) -> EncodedSplit:
        if split not in self._encoded:
            frame = self.frame(split)
            src = self._split_source(split) if split != "predict" or self.predict_path else f"{self._source} [test]"
            self._encoded[split] = self.features.transform(frame, source=src, require_label=split != "predict")
        return self._encoded[split]

    def dataset_for(self, split: str) -> SplitDataset:
        if split not in self._datasets:
            keys = [f.name for f in self.features.schema.id_fields]
            self._datasets[split] = SplitDataset(self.encoded(split), keys)
        return self._datasets[split]

    # -------------------------------------------------------------- lightning
    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("predict",)}
        for split in wanted.get(stage or "fit", SPLITS):
            self.dataset_for(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset_for(split)
        bs = self.batch_size if split == "train" else self.eval_batch_size
        rank, world = self._rank_and_world()
        sampler = BatchIndexSampler(len(ds), bs, shuffle=shuffle, seed=self.seed, rank=rank, world_size=world)
        # the training loader is resumable: Lightning stores its position in every checkpoint
        cls = ResumableDataLoader if split == "train" else DataLoader
        return cls(ds, sampler=sampler, batch_size=None, num_workers=0)

    def _rank_and_world(self) -> tuple[int, int]:
        """This process's rank and the number of processes (1 outside a distributed trainer).
        Under several processes every rank takes its slice of each global batch (see
        :class:`~recsys.data.batch.BatchIndexSampler`); predict always runs on the whole data."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size <= 1 or trainer.predicting:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)

    def predict_keys(self) -> pl.DataFrame:
        """Key columns (user/item/time, where present) of the predict rows, in row order."""
        frame = self.frame("predict")
        cols = [c for c in self.features.schema.keys.values() if c in frame.columns]
        return frame.select(cols) if cols else pl.DataFrame({"row": range(len(frame))})


def load_features(path: str) -> FeatureEncoder:
    """Fitted encoders from a recsys checkpoint (``.ckpt``) or a FeatureEncoder JSON file."""
    p = Path(path)
    if p.suffix == ".json":
        return FeatureEncoder.load(p)
    if not p.exists():
        raise DataError("checkpoint not found", where=str(p), fix="check --ckpt_path / data.features_from")
    from recsys.errors import RecsysError
    from recsys.checkpoint import read_checkpoint

    try:
        ckpt = read_checkpoint(p, keys=())  # weights_only=True; a file or a sharded run's directory
        return FeatureEncoder.from_dict(ckpt["recsys"]["features"])
    except RecsysError as e:
        raise DataError(f"cannot read fitted encoders from it ({e.message})", where=str(p),
                        fix="pass a checkpoint written by recsys fit") from None
    except Exception as e:  # noqa: BLE001 - corrupt file, foreign checkpoint
        raise DataError(f"cannot read fitted encoders from it ({type(e).__name__})", where=str(p),
                        fix="pass a checkpoint written by recsys fit") from None
