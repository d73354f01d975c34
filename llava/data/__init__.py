"""LLaVA data: templates -> (ids, labels), datasets and mixtures, the collator, the preflight check."""

from llava.data.collator import DataCollatorForSupervisedDataset
from llava.data.dataset import LazySupervisedDataset, make_supervised_data_module
from llava.data.preprocess import preprocess
from llava.data.problems import DataProblem

__all__ = [
    "DataCollatorForSupervisedDataset",
    "DataProblem",
    "LazySupervisedDataset",
    "make_supervised_data_module",
    "preprocess",
]
