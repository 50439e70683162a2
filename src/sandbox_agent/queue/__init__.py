"""The task queue the pilot matches jobs from: states, leases and history in SQLite or
PostgreSQL.

``Store`` is the embedded default (one file under ``--home``) and the broker's store
(that file, or a PostgreSQL database for several broker processes: ``open_queue``);
``states`` holds the JAliEn job states and the transitions allowed between them.
"""

from sandbox_agent.queue.states import State, TransitionError
from sandbox_agent.queue.store import (
    Job,
    LeaseError,
    NoSuchJob,
    StateChange,
    Store,
    StoreError,
    open_queue,
)

__all__ = ["Job", "LeaseError", "NoSuchJob", "State", "StateChange", "Store", "StoreError",
           "TransitionError", "open_queue"]  # fmt: skip
