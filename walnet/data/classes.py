"""Class names: matching a label (a CSV cell, a folder name) to the known classes.

The known classes are the paper's three (walnet.constants.PLAQUE_CLASSES) unless the caller
gives a list. Labels are matched ignoring case and surrounding / repeated spaces, so a
spreadsheet's ``"Hyperechoic "`` is the paper's class; any other label is an error, never a new
class: a typo would otherwise train a model with an extra, almost empty class. No class name or
label may start like a spreadsheet formula (walnet.constants.formula_problem): class names become
the columns and cells of ``walnet predict``'s CSV.
"""
from __future__ import annotations

import difflib

from walnet.constants import PLAQUE_CLASSES, formula_problem


def normalize_label(name: str) -> str:
    """The form labels are compared in: case-folded, spaces trimmed and runs of spaces made one."""
    return " ".join(str(name).split()).casefold()


def known_classes(classes=None) -> tuple[str, ...]:
    """`classes` as a tuple (the paper's classes when None), checked: non-empty names that stay
    distinct under :func:`normalize_label` and start like no spreadsheet formula."""
    if classes is None:
        return PLAQUE_CLASSES
    if isinstance(classes, str):
        raise ValueError(f"classes must be a list of class names, got the string {classes!r}")
    names = tuple(str(c) for c in classes)
    if not names:
        raise ValueError("classes is empty; give at least one class name")
    seen: dict[str, str] = {}
    for name in names:
        key = normalize_label(name)
        if not key:
            raise ValueError(f"classes {names} holds an empty name")
        problem = formula_problem(name.strip())
        if problem:
            raise ValueError(f"classes {names}: the class name {name!r} {problem}")
        if key in seen:
            raise ValueError(f"classes {names} names one class twice ({seen[key]!r} and {name!r})")
        seen[key] = name
    return names


def match_label(name: str, classes: tuple[str, ...]) -> int:
    """The index in `classes` (from :func:`known_classes`) of the label `name`.

    Raises ValueError for a label starting like a spreadsheet formula, and for an empty or
    unknown label, listing the known classes and, where one
    is close, suggesting it.
    """
    problem = formula_problem(str(name).strip())
    if problem:
        raise ValueError(f"the label {name!r} {problem}")
    key = normalize_label(name)
    for i, cls in enumerate(classes):
        if normalize_label(cls) == key:
            return i
    if not key:
        raise ValueError(f"the label is empty; known classes: {', '.join(classes)}")
    by_key = {normalize_label(c): c for c in classes}
    close = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.6)
    hint = f" (did you mean {by_key[close[0]]!r}?)" if close else ""
    other = "; give the class list explicitly for another class set" if classes == PLAQUE_CLASSES else ""
    raise ValueError(f"unknown label {name!r}{hint}; known classes: {', '.join(classes)}{other}")


def class_map(names, classes=None) -> tuple[str, ...]:
    """The pinned class order, `classes` (the paper's classes when None), after checking that
    every name in `names` matches one of them (see :func:`match_label`)."""
    known = known_classes(classes)
    for name in dict.fromkeys(names):
        match_label(name, known)
    return known
