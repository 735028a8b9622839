"""Result types shared by the metric modules (a scorer's report), so that no two scorers import each other."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScoreReport:
    """Scores in input order (``None`` = failed), the reason of each failure ``{index: reason}``
    and, for a scorer that can time out (a remote service), the indices of the failures that were
    timeouts (including texts never sent because the run's wait budget was spent). ``timed_out``
    is ``None`` for a scorer that cannot time out (local models): the task then reports no
    ``n_timed_out`` rather than a count that means nothing."""

    scores: list
    failures: dict = field(default_factory=dict)
    timed_out: set | None = None

    @property
    def n_failed(self) -> int:
        return sum(score is None for score in self.scores)

    @property
    def n_timed_out(self) -> int | None:
        return None if self.timed_out is None else len(self.timed_out)
