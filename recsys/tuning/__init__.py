"""Optuna studies over recsys experiment configs (``recsys tune``).

* :mod:`recsys.tuning.space`: the search-space YAML (dotted config keys -> distributions,
  conditional entries, feature-subset search) and its validation;
* :mod:`recsys.tuning.pruning`: :class:`OptunaPruning`, a ``pytorch_lightning`` pruning callback;
* :mod:`recsys.tuning.study`: storage, trial budget, workers, resume, the per-trial `recsys fit`;
* :mod:`recsys.tuning.export`: best config YAML, trials CSV, offline HTML report;
* :mod:`recsys.commands.tune`: the command. User guide: docs/tuning.md.
"""

from recsys.tuning.space import FeatureSearch, Param, SearchSpace, load_space

__all__ = ["FeatureSearch", "Param", "SearchSpace", "load_space"]
