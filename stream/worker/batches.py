"""A batch's work must finish before Faust acks it, even when the agent is being stopped.

Faust's `take_events` acks every event of a batch in a `finally` as soon as the agent's body
leaves the batch, also when it leaves by cancellation (a clean stop or a rebalance cancels the
agent): a batch cut short in the middle of sending its decisions or writing its state would be
acked, committed, and never processed again. So the work runs as its own task, shielded from
the agent's cancellation: on cancellation it is given `grace_s` to finish, then the
cancellation goes on; if it cannot finish, the process exits before the ack (a restart resumes
from the last commit).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("qris_guard.worker")


async def finish_before_ack(work: Coroutine[Any, Any, None], grace_s: float = 60.0) -> None:
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            log.info("stopping: finishing the batch in progress before it is acked")
            try:
                done, _ = await asyncio.wait({task}, timeout=grace_s)
            except asyncio.CancelledError:
                done = set()
            if not done or task.cancelled() or task.exception() is not None:
                log.critical("the batch in progress could not finish; exiting before it is acked")
                os._exit(70)
        raise
