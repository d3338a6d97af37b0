"""Data for walnet: datasets (ImageFolder / CSV), patient-grouped stratified splits, and the
embedded synthetic plaque phantom."""
from walnet.data.datasets import PAPER_CLASSES, PlaqueDataset, Record, class_map, read_csv, scan_image_folder
from walnet.data.splits import SPLITS, load_split, save_split, split_indices

__all__ = [
    "PAPER_CLASSES",
    "PlaqueDataset",
    "Record",
    "SPLITS",
    "class_map",
    "load_split",
    "read_csv",
    "save_split",
    "scan_image_folder",
    "split_indices",
]
