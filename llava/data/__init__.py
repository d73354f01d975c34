"""LLaVA data: templates -> (ids, labels), datasets and mixtures, the collator, the preflight check.

Imports are lazy so that `python -m llava.data.check` and header-scanning
helpers do not pay for torch until they need it.
"""

_EXPORTS = {
    "preprocess": "llava.data.preprocess",
    "LazySupervisedDataset": "llava.data.dataset",
    "make_supervised_data_module": "llava.data.dataset",
    "DataCollatorForSupervisedDataset": "llava.data.collator",
    "DataProblem": "llava.data.problems",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llava.data' has no attribute {name!r}")
