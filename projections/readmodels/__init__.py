"""Queryable read models (runs, nodes, workflows, approvals, timers, ...).

`views` holds the projection as engine-neutral SQL plans, `queries` the read side;
`SqliteReadModels` runs both on the embedded default's SQLite file.
"""

from aob.projections.readmodels.sqlite import SqliteReadModels
from aob.projections.readmodels.views import Position, Positioned

__all__ = ["Position", "Positioned", "SqliteReadModels"]
