"""Several processes: Lightning DDP for the dense part, TorchRec-sharded embedding tables.

:class:`ShardedDDPStrategy` is a Lightning ``DDPStrategy`` that, before wrapping the task in
``DistributedDataParallel``, asks TorchRec's planner (``EmbeddingShardingPlanner``) for a
sharding plan of every ``EmbeddingBagCollection``/``EmbeddingCollection`` in the model and
replaces each one by its sharded module (what ``DistributedModelParallel`` does inside). The
tables train with TorchRec's fused in-backward optimizer (``model.embedding_optimizer``; when it
is unset, the dense optimizer's kind and learning rate are used) and are left out of DDP's
gradient all-reduce; everything else (dense layers, attention, towers) is plain data-parallel.

Pick it from YAML or the command line (the short name is registered with Lightning)::

    recsys fit --config experiments/deepfm_synthetic.yaml \\
        --trainer.strategy recsys_ddp --trainer.devices 2 --trainer.accelerator cpu

    trainer:
      strategy:
        class_path: recsys.tasks.distributed.ShardedDDPStrategy
        init_args: {sharding_types: [table_wise, column_wise]}

On CPU the process group is gloo (table-wise and column-wise sharding; row-wise needs CUDA);
on GPUs it is NCCL and the planner may also choose row-wise / table-row-wise sharding. The data
module gives every rank its slice of each global batch (``data.batch_size`` is the global
batch), so N processes train on the same batches as one.

Checkpoints of a sharded run are directories written with ``torch.distributed.checkpoint``
(DCP): every rank writes its own shards, rank 0 adds ``recsys_meta.pt`` (loops, callbacks,
dense optimizer, schema and encoders; plain tensors and JSON types). :func:`recsys.checkpoint.read_checkpoint`
reads either kind in a single process, gathering the shards into whole tables (so ``predict``,
``report`` and :func:`recsys.tasks.load_checkpoint` work on one process, whatever the number
of processes that trained), always with ``weights_only=True``.

Every checkpoint is written atomically: a file goes to a temporary name beside its target and
is renamed when complete; a DCP directory is written under a temporary name and swapped in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from pytorch_lightning.strategies import DDPStrategy

# the checkpoint floor (reading, safe unpickling, atomic writes); re-exported for old imports
from recsys.checkpoint import (  # noqa: F401
    FUSED_KEY,
    META_FILE,
    STATE_KEY,
    RecsysCheckpointIO,
    _safe_reader,
    _short,
    _torch_load,
    read_checkpoint,
    remove_path,
)
from recsys.errors import RecsysError

# how long a collective waits for the other ranks before failing (Lightning's default is 30 min)
DEFAULT_TIMEOUT_S = 300.0
SHARDING_TYPES = ("table_wise", "column_wise", "row_wise", "table_row_wise", "table_column_wise")


# ------------------------------------------------------------------------ collectives
# The tasks' epoch-end hooks reduce their metrics with these, eagerly and on every rank, so no
# value is left for Lightning to reduce lazily (that happens only where a metric is read: on rank
# 0 alone for the progress bar, which then waits in a collective the other ranks never join).
def process_group_ready() -> bool:
    """A default process group of more than one process exists."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``t`` over all ranks (in place; returned). Every rank must call it."""
    import torch.distributed as dist

    if process_group_ready():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` over all ranks (in place; returned). Every rank must call it."""
    import torch.distributed as dist

    if process_group_ready():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def is_peer_failure(e: BaseException) -> bool:
    """``e`` says a collective failed because another rank is gone, hung or timed out (gloo's
    "Connection reset by peer" / "Timed out waiting" / "pair closure", NCCL's watchdog errors),
    rather than a bug of this rank."""
    import torch.distributed as dist

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(m in text for m in (
        "gloo", "Connection reset by peer", "Connection closed by peer", "pair closure", "Timed out waiting",
        "NCCL", "ProcessGroup", "Socket Timeout"))


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` (``[n_r, ...]``, ``n_r`` may differ by rank) in rank order:
    ``[sum_r n_r, ...]``, the same on every rank. Two collectives (sizes, then padded rows); every
    rank must call it."""
    import torch.distributed as dist

    if not process_group_ready():
        return t
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    width = max(counts)
    padded = t.new_zeros((width, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


# --------------------------------------------------------------------------- sharding
def _collections(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from torchrec import EmbeddingBagCollection, EmbeddingCollection

    return [(name, m) for name, m in module.named_modules() if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))]


def sharded_modules(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(qualified name, module) of every TorchRec sharded module under ``module``."""
    from torchrec.distributed.types import ShardedModule

    return [(name, m) for name, m in module.named_modules() if isinstance(m, ShardedModule)]


@torch.no_grad()
def copy_full_into_sharded(module: torch.nn.Module, full: Mapping[str, torch.Tensor]) -> None:
    """Copy whole tables (``full``: the unsharded module's state dict) into the local shards of
    a TorchRec sharded module, in place."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    for key, value in module.state_dict().items():
        if key not in full:
            continue
        src = full[key]
        if isinstance(value, ShardedTensor):
            for sh in value.local_shards():
                index = tuple(slice(o, o + n) for o, n in zip(sh.metadata.shard_offsets, sh.metadata.shard_sizes))
                sh.tensor.copy_(src[index])
        elif isinstance(value, torch.Tensor) and value.shape == src.shape:
            value.copy_(src)


def _drop_in_backward(params) -> None:
    """Undo ``apply_optimizer_in_backward`` on ``params`` (they go back to the dense optimizer)."""
    from torch.distributed.optim.apply_optimizer_in_backward import param_to_optim_hook_handle_map

    for p in params:
        for handle in param_to_optim_hook_handle_map.pop(p, []):
            handle.remove()
        for attr in ("_in_backward_optimizers", "_optimizer_classes", "_optimizer_kwargs"):
            if hasattr(p, attr):
                delattr(p, attr)


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group (every backend) if one is still initialised."""
    import signal

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl+C must not cut the teardown short
    try:
        dist.destroy_process_group()
    finally:
        signal.signal(signal.SIGINT, previous)


_took_part = False  # this process set up a process group (a rank of a multi-process run)


def took_part_in_distributed_run() -> bool:
    """This process was a rank of a multi-process run (a process group was set up here)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    return _took_part or bool(dist is not None and dist.is_available() and dist.is_initialized())


def end_distributed_process(code: int) -> None:
    """End a rank's process now with ``code``, after every exit hook but without the interpreter's
    teardown; returns at once in a process that took no part in a multi-process run.

    Why: gloo frees a finished collective's tensors on its own worker thread
    (``pt_gloo_runloop``), and freeing a tensor that Python let go of takes the GIL. If that
    thread asks for the GIL just before the interpreter starts finalizing, CPython ends the thread
    with ``pthread_exit`` through a ``noexcept`` C++ frame and the whole process aborts:
    "terminate called without an active exception", exit -6, after a run that had finished and
    written everything. A run's last collective comes right before exit (Lightning's
    ``Trainer.log_dir`` broadcasts the run folder), so this is a race every distributed run
    takes at exit; a 2-process script that exits right after ``broadcast_object_list`` aborts in
    about 1 run in 7 on a loaded 2-core machine (``experiments/gloo_exit_abort.py``).

    What it does: wait for non-daemon threads and run the ``atexit`` hooks (the process group is
    destroyed there, loggers flush), as a normal exit does, while the interpreter is still whole
    and threads can take the GIL; flush stdout/stderr; then ``os._exit(code)``: the teardown in
    which the race aborts never starts. Only the command line calls it (``recsys ...``,
    ``python -m recsys.cli``), never the Python API.
    """
    import atexit
    import sys
    import threading

    if not took_part_in_distributed_run():
        return
    for t in threading.enumerate():  # as the interpreter's own exit does first
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()  # noqa: SLF001 - the documented exit hooks, run once, in order
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be written anyway
            pass
    os._exit(code)


class ShardedDDPStrategy(DDPStrategy):
    """DDP for the dense part + TorchRec sharding (planner-chosen) for the embedding tables.

    Args:
        sharding: shard the tables (default). ``False`` keeps every table replicated on every
            rank and trained through DDP like the rest (plain DDP).
        sharding_types: the sharding types the planner may choose from; default
            ``[table_wise, column_wise]`` on CPU, plus ``row_wise`` and ``table_row_wise`` on GPUs.
        timeout_s: seconds a collective (gradient all-reduce, table all-to-all, metric
            reduction, checkpoint barrier) waits for the other ranks before it fails (default
            300). A rank that died or hangs makes the others exit within this time instead of
            waiting forever; raise it if one rank legitimately works alone longer (e.g. very
            large checkpoints on slow disks).
        **kwargs: the arguments of Lightning's ``DDPStrategy`` (``process_group_backend``,
            ``timeout``, ``find_unused_parameters``, ...).
    """

    strategy_name = "recsys_ddp"

    def __init__(self, sharding: bool = True, sharding_types: list[str] | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs: Any):
        from datetime import timedelta

        kwargs.setdefault("checkpoint_io", RecsysCheckpointIO())
        if not timeout_s or timeout_s <= 0:
            raise RecsysError(f"timeout_s must be > 0 seconds, got {timeout_s}", where="trainer.strategy.timeout_s",
                              fix=f"e.g. {DEFAULT_TIMEOUT_S:g}")
        # a collective that waits longer than this for a rank (dead, hung or stopped) fails on the
        # others, which then exit with an error instead of waiting forever (gloo and NCCL alike)
        # (the CLI passes DDPStrategy's own `timeout` at its 30-minute default: timeout_s wins over it)
        from lightning_fabric.plugins.collectives.torch_collective import default_pg_timeout

        if kwargs.get("timeout") in (None, default_pg_timeout):
            kwargs["timeout"] = timedelta(seconds=float(timeout_s))
        super().__init__(**kwargs)
        self.timeout_s = float(timeout_s)
        bad = set(sharding_types or ()) - set(SHARDING_TYPES)
        if bad:
            raise RecsysError(f"unknown sharding types {sorted(bad)}", where="trainer.strategy.sharding_types",
                              fix=f"use some of {list(SHARDING_TYPES)}")
        self.sharding = sharding
        self.sharding_types = list(sharding_types) if sharding_types else None
        self.plan = None  # the ShardingPlan in use (after setup)
        self._sharded = False

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="recsys: DDP + TorchRec-sharded tables",
                                   override=True)

    # ------------------------------------------------------------------ setup
    def setup_distributed(self) -> None:
        global _took_part
        super().setup_distributed()
        _took_part = True
        # Lightning destroys the process group at exit for NCCL only: destroy every backend's in
        # an atexit hook, while the interpreter is whole (a no-op if it is already gone). This
        # alone does not prevent gloo's exit abort (a worker thread asking for the GIL as the
        # interpreter finalizes); the command line ends its ranks with end_distributed_process.
        import atexit

        atexit.unregister(destroy_process_group_at_exit)  # once per process, however many setups
        atexit.register(destroy_process_group_at_exit)

    def setup(self, trainer) -> None:
        from pytorch_lightning.trainer.states import TrainerFn

        if self.sharding and not self._sharded:
            self._shard(self.lightning_module)
        elif not self.sharding and self.world_size > 1 and self.root_device.type != "cuda":
            # replicated tables: DDP runs in-backward optimizers after its all-reduce only on
            # CUDA streams; on CPU the tables train with the dense optimizer
            from torchrec import EmbeddingBagCollection, EmbeddingCollection

            for m in self.lightning_module.modules():
                if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection)):
                    _drop_in_backward(m.parameters())
        if not self._sharded or trainer.state.fn == TrainerFn.FITTING:
            return super().setup(trainer)
        # evaluating a sharded model: DDPStrategy would broadcast rank 0's whole state, shards
        # included; broadcast only the replicated (dense) tensors
        self.accelerator.setup(trainer)
        self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self._broadcast_dense()
        self.setup_precision_plugin()

    def _broadcast_dense(self) -> None:
        import torch.distributed as dist

        ignore = set(getattr(self.lightning_module, "_ddp_params_and_buffers_to_ignore", ()))
        for name, t in self.lightning_module.state_dict(keep_vars=True).items():
            if name not in ignore and type(t) in (torch.Tensor, torch.nn.Parameter):
                dist.broadcast(t.data, src=0)

    def _shard(self, task) -> None:
        import torch.distributed as dist
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from torchrec.distributed.shard import shard
        from torchrec.distributed.types import ShardingEnv

        device = self.root_device
        cuda = device.type == "cuda"
        colls = []
        self.replicated_collections = []
        for name, coll in _collections(task.model):
            configs = coll.embedding_bag_configs() if hasattr(coll, "embedding_bag_configs") else coll.embedding_configs()
            # FBGEMM's fused kernels need widths divisible by 4; a collection with a narrower table
            # (e.g. a wide/LR part of width 1) stays replicated and trains through DDP
            (colls if all(c.embedding_dim % 4 == 0 for c in configs) else self.replicated_collections).append(
                (name, coll))
        if not cuda:
            # DDP runs in-backward optimizers of replicated parameters after its all-reduce only on
            # CUDA streams; on CPU those tables train with the dense optimizer instead
            for _, coll in self.replicated_collections:
                _drop_in_backward(coll.parameters())
        self.replicated_collections = [n for n, _ in self.replicated_collections]
        if not colls:
            return
        emb_opt = task.hparams.get("embedding_optimizer")
        cpu_ok = ("rowwise_adagrad", "adagrad", "sgd")
        if not cuda and emb_opt not in cpu_ok:
            raise RecsysError(
                f"sharded tables on CPU train with FBGEMM's fused optimizers {list(cpu_ok)}; "
                f"model.embedding_optimizer is {emb_opt!r}", where="model.init_args.embedding_optimizer",
                fix="set e.g. --model.init_args.embedding_optimizer rowwise_adagrad (and embedding_lr), "
                    "or use --trainer.strategy.init_args.sharding false for replicated tables")
        if not getattr(task, "_in_backward", False):
            # sharded tables need TorchRec's fused optimizer: on GPUs take the dense optimizer's kind
            name = {"adam": "adam", "adamw": "adam", "sgd": "sgd", "adagrad": "adagrad"}.get(
                task.hparams.get("optimizer", "adam"), "adam")
            task._apply_embedding_optimizer(name, task.hparams.lr)
        types = self.sharding_types or (["table_wise", "column_wise", "row_wise", "table_row_wise"] if cuda
                                        else ["table_wise", "column_wise"])
        if not cuda and set(types) & {"row_wise", "table_row_wise"}:
            raise RecsysError("row-wise sharding of embedding tables needs CUDA", where="trainer.strategy.sharding_types",
                              fix="use table_wise/column_wise on CPU")
        # constraints are keyed by table name (the planner also plans the replicated collections,
        # whose plan is not applied)
        constraints = {}
        for _, coll in colls:
            configs = coll.embedding_bag_configs() if hasattr(coll, "embedding_bag_configs") else coll.embedding_configs()
            for cfg in configs:
                constraints[cfg.name] = ParameterConstraints(sharding_types=types)
        topology = Topology(world_size=self.world_size, compute_device=device.type,
                            local_world_size=self.num_processes)
        sharders = [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]
        pg = dist.group.WORLD
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
        self.plan = planner.collective_plan(task.model, sharders, pg)
        env = ShardingEnv.from_process_group(pg)
        for name, coll in colls:
            sharder = sharders[0] if hasattr(coll, "embedding_bag_configs") else sharders[1]
            full = {k: v.detach().clone() for k, v in coll.state_dict().items()}
            sharded = shard(coll, self.plan.plan[name], env=env, device=device, sharder=sharder)
            # start from the model's own initial tables (identical on every rank: same seed), not
            # from the sharded kernels' default init, so N processes train like one
            copy_full_into_sharded(sharded, full)
            parent_name, _, attr = name.rpartition(".")
            parent = task.model.get_submodule(parent_name) if parent_name else task.model
            setattr(parent, attr, sharded)
        ignore = []
        for name, m in sharded_modules(task.model):
            ignore += [f"model.{name}.{n}" for n, _ in m.named_parameters()]
            ignore += [f"model.{name}.{n}" for n, _ in m.named_buffers()]
        task._ddp_params_and_buffers_to_ignore = ignore
        self._sharded = True
        from pytorch_lightning.utilities import rank_zero_info

        summary = ", ".join(f"{t}: {ps.sharding_type} on ranks {ps.ranks}"
                            for name, _ in colls for t, ps in self.plan.plan[name].items())
        kept = f"; replicated: {self.replicated_collections}" if self.replicated_collections else ""
        rank_zero_info(f"recsys_ddp: {self.world_size} processes; sharded tables: {summary}{kept}")

    # ------------------------------------------------------------- checkpoints
    @property
    def sharded(self) -> bool:
        return self._sharded

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        # restore into the sharded modules (and their fused optimizers), not the unsharded ones
        return self.sharding

    def _fused_optimizers(self) -> dict[str, Any]:
        return {name: m.fused_optimizer for name, m in sharded_modules(self.lightning_module.model)
                if getattr(m, "fused_optimizer", None) is not None}

    def _fused_state(self) -> dict[str, Any]:
        out = {}
        for name, opt in self._fused_optimizers().items():
            state = {k: v for k, v in opt.state_dict()["state"].items() if v}
            if state:
                out[name] = state
        return out

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self._sharded:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        import torch.distributed.checkpoint as dcp

        target = Path(filepath)
        tmp = target.parent / f".{target.name}.tmp"
        if self.is_global_zero:
            remove_path(tmp)
            tmp.parent.mkdir(parents=True, exist_ok=True)
        self.barrier("recsys_dcp_tmp")
        tensors = {STATE_KEY: checkpoint.pop(STATE_KEY), FUSED_KEY: self._fused_state()}
        dcp.save(tensors, checkpoint_id=str(tmp))
        if self.is_global_zero:
            with open(tmp / META_FILE, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            old = target.parent / f".{target.name}.old"
            remove_path(old)
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            remove_path(old)
        checkpoint[STATE_KEY] = tensors[STATE_KEY]
        self.barrier("recsys_dcp_saved")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        p = Path(checkpoint_path)
        if not (self._sharded and p.is_dir()):
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        ckpt = _torch_load(p / META_FILE, "cpu")
        fused_full = {name: opt.state_dict() for name, opt in self._fused_optimizers().items()}
        fused = {name: {k: v for k, v in sd["state"].items() if v} for name, sd in fused_full.items()}
        tensors = {STATE_KEY: self.lightning_module.state_dict(), FUSED_KEY: {k: v for k, v in fused.items() if v}}
        try:
            # in place: this rank's shards, resharded as needed
            dcp.load(tensors, storage_reader=_safe_reader(p))
        except (Exception, CheckpointException) as e:  # noqa: BLE001
            raise RecsysError(f"cannot read the sharded checkpoint ({_short(e)})", where=str(p)) from None
        for name, opt in self._fused_optimizers().items():
            if fused.get(name):
                opt.load_state_dict({**fused_full[name], "state": {**fused_full[name]["state"], **fused[name]}})
        ckpt[STATE_KEY] = tensors[STATE_KEY]
        ckpt["_recsys_dcp_loaded"] = True
        return ckpt

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        if checkpoint.get("_recsys_dcp_loaded"):
            return  # dcp.load wrote into the module's own tensors
        if not self._sharded:
            return super().load_model_state_dict(checkpoint, strict=strict)
        # a whole-table checkpoint (one process, or gathered) into sharded modules: each rank
        # copies its shards out of the whole tables; the rest loads as usual
        state = dict(checkpoint[STATE_KEY])
        for name, module in sharded_modules(self.lightning_module.model):
            prefix = f"model.{name}."
            copy_full_into_sharded(module, {k[len(prefix):]: state.pop(k) for k in list(state) if k.startswith(prefix)})
        missing, unexpected = self.lightning_module.load_state_dict(state, strict=False)
        sharded_prefixes = tuple(f"model.{n}." for n, _ in sharded_modules(self.lightning_module.model))
        missing = [k for k in missing if not k.startswith(sharded_prefixes)]
        if strict and (missing or unexpected):
            raise RecsysError(f"the checkpoint does not fit the model (missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]})", where="--ckpt_path")

    def remove_checkpoint(self, filepath) -> None:
        if self.is_global_zero:
            remove_path(filepath)


def register() -> None:
    """Register ``recsys_ddp`` with Lightning's strategy registry (done on import)."""
    from pytorch_lightning.strategies import StrategyRegistry

    if ShardedDDPStrategy.strategy_name not in StrategyRegistry:
        ShardedDDPStrategy.register_strategies(StrategyRegistry)


register()
