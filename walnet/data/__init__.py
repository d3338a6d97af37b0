"""Data for walnet: records from a CSV file or an ImageFolder tree, the class names they are
matched to, the dataset that reads their images, patient-grouped stratified splits, the
embedded synthetic plaque phantom, and the opt-in training augmentation (walnet.data.augment,
imported on use: it needs torchvision)."""
from walnet.data.classes import class_map, known_classes, match_label, normalize_label
from walnet.data.datasets import PAPER_CLASSES, PlaqueDataset, Record
from walnet.data.sources import DuplicateRowWarning, check_data_path, load_records, read_csv, scan_image_folder
from walnet.data.splits import SPLITS, assign_splits, load_split, save_split, split_indices

__all__ = [
    "PAPER_CLASSES",
    "DuplicateRowWarning",
    "PlaqueDataset",
    "Record",
    "SPLITS",
    "assign_splits",
    "check_data_path",
    "class_map",
    "known_classes",
    "load_records",
    "load_split",
    "match_label",
    "normalize_label",
    "read_csv",
    "save_split",
    "scan_image_folder",
    "split_indices",
]
