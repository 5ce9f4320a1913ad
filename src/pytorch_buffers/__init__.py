"""Find the tensors in a module that ``.to()`` will not move or ``state_dict()`` will not save.

- :func:`inventory` lists every tensor a module holds, with its kind and device.
- :func:`find_strays` picks out the tensors ``.to()``/``state_dict()`` miss, with fixes.
- :func:`check_devices` raises a clear error before a forward pass would fail.
- :func:`explain_state_dict` explains a ``load_state_dict`` mismatch.
"""

from ._checkpoint import (
    KeyProblem,
    KeyReport,
    PrefixFix,
    StateDictReport,
    explain_state_dict,
)
from ._devices import DeviceMismatchError, check_devices
from ._inventory import Inventory, TensorKind, TensorRecord, inventory
from ._strays import Stray, StrayReport, find_strays

__version__ = "0.2.0"

__all__ = [
    "DeviceMismatchError",
    "Inventory",
    "KeyProblem",
    "KeyReport",
    "PrefixFix",
    "StateDictReport",
    "Stray",
    "StrayReport",
    "TensorKind",
    "TensorRecord",
    "__version__",
    "check_devices",
    "explain_state_dict",
    "find_strays",
    "inventory",
]
