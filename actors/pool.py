"""A fixed pool of Ray actors working through a list of tasks: the scheduling loop the expert farm and DreamBench
generation share.

Each actor gets at most `max_in_flight` tasks at a time (backpressure: the queue stays on the driver). A task whose
actor died is retried on a fresh actor up to `max_retries` times, then recorded as failed; a task that raised is
recorded as failed with its reason and not retried (bad data does not get better). Actors are killed at the end, so
they never hold CPUs the next stage needs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from tqdm import tqdm

log = logging.getLogger(__name__)


def run_actor_pool(
    new_actor: Callable[[], Any],
    tasks: list,
    call: Callable[[Any, Any], ray.ObjectRef],
    key: Callable[[Any], str],
    key_field: str,
    *,
    num_actors: int,
    max_in_flight: int,
    max_retries: int,
    desc: str,
    progress: bool = True,
) -> tuple[list[dict], int]:
    """Run `call(actor, task)` for every task. Returns (one result per task, actor restarts).

    A result is what the task returned, or `{key_field: key(task), "status": "failed", "reason": ...}`.
    """
    actors = [new_actor() for _ in range(min(num_actors, len(tasks)))]
    queue = list(tasks)
    attempts: Counter = Counter()
    in_flight: dict = {}  # ObjectRef -> (actor index, actor handle, task)
    results: list[dict] = []
    restarts = 0
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress)

    def fill(i: int) -> None:
        while queue and sum(1 for a, _, _ in in_flight.values() if a == i) < max_in_flight:
            task = queue.pop(0)
            attempts[key(task)] += 1
            in_flight[call(actors[i], task)] = (i, actors[i], task)

    def failed(task, reason: str) -> None:
        results.append({key_field: key(task), "status": "failed", "reason": reason})
        bar.update(1)

    try:
        for i in range(len(actors)):
            fill(i)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            i, actor, task = in_flight.pop(ready[0])
            try:
                results.append(ray.get(ready[0]))
                bar.update(1)
            except (RayActorError, ActorDiedError, ActorUnavailableError) as err:
                log.warning("%s: actor %d died on %s (%s)", desc, i, key(task), type(err).__name__)
                if actors[i] is actor:  # the other tasks queued on the dead actor fail too: replace it once
                    restarts += 1
                    actors[i] = new_actor()
                if attempts[key(task)] <= max_retries:
                    queue.insert(0, task)
                else:
                    failed(task, f"actor died {attempts[key(task)]} times")
            except RayTaskError as err:  # a bug or bad data inside the task: record it, don't retry it forever
                failed(task, str(err.cause)[:500])
            fill(i)
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
    return results, restarts
