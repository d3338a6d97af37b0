"""Values (and the class-name rule) shared by several layers of walnet (data, ops, models, engine), defined
once here."""

#: Mask value that carries no label: a pseudo mask of a sample whose attention is uninformative,
#: or a true mask that is unknown. ``CrossEntropyLoss(ignore_index=IGNORE_INDEX)`` skips it.
IGNORE_INDEX = 255

#: The RCM's foreground threshold on the segmentation's plaque probability, and the dilation of
#: its box as a fraction of the feature map's width (the authors' W / 7).
RCM_THRESHOLD = 0.5
RCM_DILATION = 1 / 7

#: The paper's plaque classes, in label order (0 hyperechoic, 1 hypoechoic, 2 mixed-echoic).
PLAQUE_CLASSES = ("hyperechoic", "hypoechoic", "mixed-echoic")

#: What a spreadsheet reads as the start of a formula in a CSV cell: no class name starts so, since
#: class names become the columns and cells of ``walnet predict``'s CSV.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def formula_problem(name: str) -> str | None:
    """Why the class name `name` would be read as a formula by a spreadsheet opening a CSV that
    holds it ("must not start with ..."), or None where it starts with none of
    :data:`FORMULA_PREFIXES`. The one rule for class names wherever they enter walnet."""
    if str(name).startswith(FORMULA_PREFIXES):
        return "must not start with =, +, - or @ (a spreadsheet would read it as a formula)"
    return None

#: How an image is resized to the model's input size, by name (Pillow's filters; walnet.data.datasets
#: maps them), and the one training uses. An exported folder records it in config.json's "input".
RESIZE_METHODS = ("bilinear", "bicubic", "lanczos", "nearest")
TRAIN_RESIZE = "bilinear"
