"""The actor pool draws tasks from a stream only as actors have room, and summarises results as they come."""

import ray

from actors.pool import run_actor_pool


@ray.remote(num_cpus=0.5)
class Echo:
    def run(self, task: int) -> dict:
        return {"task": task, "status": "done"}


def test_a_stream_of_tasks_is_drawn_no_faster_than_actors_have_room(ray_session):
    drawn, finished, ahead = [], [], []

    def tasks():
        for i in range(60):
            drawn.append(i)
            ahead.append(len(drawn) - len(finished))  # drawn and not yet finished, at each draw
            yield i

    def on_result(result: dict) -> None:
        finished.append(result["task"])

    kept, restarts = run_actor_pool(
        Echo.remote,
        tasks(),
        lambda actor, task: actor.run.remote(task),
        key=str,
        key_field="task",
        num_actors=2,
        max_in_flight=3,
        max_retries=0,
        desc="echo",
        progress=False,
        on_result=on_result,
    )
    assert kept == [] and restarts == 0  # with on_result nothing is kept
    assert sorted(finished) == list(range(60))
    assert max(ahead) <= 2 * 3 + 1  # in flight on each actor, plus the one being drawn
