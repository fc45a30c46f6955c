"""recsys: recommender and CTR modeling on TorchRec + Lightning."""

from recsys.errors import RecsysError
from recsys.schema import FieldSpec, Schema

__version__ = "0.1.0"
__all__ = ["RecsysError", "FieldSpec", "Schema", "__version__"]
