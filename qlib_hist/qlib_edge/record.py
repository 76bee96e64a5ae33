"""``HISTExplainRecord``: a qrun record that saves ``HIST.explain``'s table and plots as artifacts."""

from __future__ import annotations

import tempfile
from typing import Any, List, Optional

from qlib.workflow.record_temp import RecordTemp

from ..explain_report import check_top, write_explanation


class HISTExplainRecord(RecordTemp):
    """qrun record: ``HIST.explain`` on a segment, saved as artifacts under ``explain/``.

    YAML, after ``SignalRecord``::

        - class: HISTExplainRecord
          module_path: qlib_hist
          kwargs: {model: <MODEL>, dataset: <DATASET>, segment: test}

    ``module_path: qlib_hist`` hands it over lazily (``import qlib_hist`` loads no qlib); YAMLs written for 0.1.0
    say ``module_path: qlib_hist.explain``, which still resolves to this class.
    """

    artifact_path = "explain"

    def __init__(
        self,
        recorder: Any,
        model: Any = None,
        dataset: Any = None,
        segment: str = "test",
        day: Optional[str] = None,
        top: int = 3,
    ) -> None:
        super().__init__(recorder=recorder)
        self.model, self.dataset, self.segment, self.day = model, dataset, segment, day
        self.top = check_top(top)  # a bad YAML fails here, before the workflow's records run

    def generate(self, **kwargs: Any) -> None:
        table = self.model.explain(self.dataset, segment=self.segment, top=self.top)
        with tempfile.TemporaryDirectory() as tmp:
            for path in write_explanation(table, tmp, self.day):
                self.recorder.log_artifact(str(path), artifact_path=self.artifact_path)

    def list(self) -> List[str]:
        return ["explanations.pkl", "explain_day.png", "explain_shares.png"]  # qlib prefixes artifact_path
