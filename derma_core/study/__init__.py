"""``derma study FILE.yaml``: a grid of ordinary runs under one MLflow parent run, then one report.

A study file names its cells as a product of axes (backends with their overrides, datasets,
seeds, any config key) plus explicit cells and a baseline (:mod:`.spec`). Each cell is resolved
to the config ``derma run`` would use and identified by a hash of that config, the code version
and the data digest (:mod:`.planning`); a cell with a FINISHED run of that identity in the store is
not run again. Missing cells run one after another as children of the study's parent run, in
shards when several processes share the work (:mod:`.execute`), and the report is
``derma report``'s with the spread across seeds and the table of cells (:mod:`.summary`).
One process's work, from the command's options to the report, is :mod:`.session`.
See docs/study.md.
"""

from __future__ import annotations

from .planning import (KIND_CELL, KIND_STUDY, TAG_CELL, TAG_CELL_ID, TAG_CODE_VERSION, TAG_STUDY, PlannedCell,
                   cell_identity, code_version, identity_config, lookup, plan, resolve_cell)
from .spec import Cell, ReportSpec, Study, StudyError, load_study, parse_data_dirs, parse_shard

__all__ = [
    "Cell", "ReportSpec", "Study", "StudyError", "load_study", "parse_data_dirs", "parse_shard",
    "PlannedCell", "cell_identity", "code_version", "identity_config", "lookup", "plan", "resolve_cell",
    "KIND_CELL", "KIND_STUDY", "TAG_CELL", "TAG_CELL_ID", "TAG_CODE_VERSION", "TAG_STUDY",
]