"""A fixed pool of Ray actors working through a stream of tasks: the scheduling loop the expert farm and DreamBench
generation share.

Each actor gets at most `max_in_flight` tasks at a time, and tasks are drawn from their iterable only as actors have
room (backpressure: a stream of a million subjects is never held by the driver). A task whose actor died is retried
on a fresh actor up to `max_retries` times, then recorded as failed; a task that raised is recorded as failed with
its reason and not retried (bad data does not get better). Actors are killed at the end, so they never hold CPUs
the next stage needs.

Why not Ray Data's actor-pool `map_batches`: it retries whole blocks, not one subject, has no notion of a task
that failed for bad data (fail it) against an actor that died (retry it), and its output would need a sink that
commits G's manifest; exactly-once by subject and resume by manifest would have to be rebuilt around it. This loop
is 100 lines and keeps both.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sized
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from tqdm import tqdm

log = logging.getLogger(__name__)


def run_actor_pool(
    new_actor: Callable[[], Any],
    tasks: Iterable,
    call: Callable[[Any, Any], ray.ObjectRef],
    key: Callable[[Any], str],
    key_field: str,
    *,
    num_actors: int,
    max_in_flight: int,
    max_retries: int,
    desc: str,
    progress: bool = True,
    total: int | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> tuple[list[dict], int]:
    """Run `call(actor, task)` for every task. Returns (one result per task, actor restarts).

    A result is what the task returned, or `{key_field: key(task), "status": "failed", "reason": ...}`. `tasks` may
    be any iterable: it is drawn from only as actors have room, so a stream of tasks is never held in memory. With
    `on_result`, each result is handed to it as it arrives and none is kept (the returned list is empty).
    """
    if total is None and isinstance(tasks, Sized):
        total = len(tasks)
    fresh = iter(tasks)
    retry: deque = deque()
    attempts: Counter = Counter()
    in_flight: dict = {}  # ObjectRef -> (actor index, actor handle, task)
    kept: list[dict] = []
    actors: list = []
    restarts = 0
    bar = tqdm(total=total, desc=desc, disable=not progress)

    def next_task():
        if retry:
            return retry.popleft()
        return next(fresh, None)

    def deliver(result: dict, task) -> None:
        attempts.pop(key(task), None)  # finished: memory stays flat over a stream of tasks
        (on_result or kept.append)(result)
        bar.update(1)

    def fill(i: int) -> None:
        while sum(1 for a, _, _ in in_flight.values() if a == i) < max_in_flight:
            task = next_task()
            if task is None:
                return
            attempts[key(task)] += 1
            in_flight[call(actors[i], task)] = (i, actors[i], task)

    def failed(task, reason: str) -> None:
        deliver({key_field: key(task), "status": "failed", "reason": reason}, task)

    try:
        while len(actors) < num_actors:  # an actor only for work there is
            first = next_task()
            if first is None:
                break
            retry.append(first)
            actors.append(new_actor())
            fill(len(actors) - 1)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            i, actor, task = in_flight.pop(ready[0])
            try:
                deliver(ray.get(ready[0]), task)
            except (RayActorError, ActorDiedError, ActorUnavailableError) as err:
                log.warning("%s: actor %d died on %s (%s)", desc, i, key(task), type(err).__name__)
                if actors[i] is actor:  # the other tasks queued on the dead actor fail too: replace it once
                    restarts += 1
                    actors[i] = new_actor()
                if attempts[key(task)] <= max_retries:
                    retry.appendleft(task)
                else:
                    failed(task, f"actor died {attempts[key(task)]} times")
            except RayTaskError as err:  # a bug or bad data inside the task: record it, don't retry it forever
                failed(task, str(err.cause)[:500])
            fill(i)
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
    return kept, restarts
