"""Bad-input cases for the op wrappers: arguments an op must refuse, the error it raises and the
argument the message must name, as pytest parameters with readable ids."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@dataclass(frozen=True)
class BadInput:
    """op(*args, **kwargs) must raise `error` with a message matching `names` (a regex: the name
    of the offending argument) before any kernel runs."""

    id: str
    args: tuple
    error: type[Exception]
    names: str
    kwargs: dict = field(default_factory=dict)

    def check(self, op, **kwargs) -> None:
        """Calls op with the case's arguments; the case's own keyword arguments win over kwargs."""
        with pytest.raises(self.error, match=self.names):
            op(*self.args, **{**kwargs, **self.kwargs})


def params(cases: list[BadInput]) -> list:
    """The cases as pytest parameters, each named by its id."""
    return [pytest.param(case, id=case.id) for case in cases]
