"""The Ray Serve app under hostile input and load, over HTTP on 127.0.0.1 with the real deployments and the smoke
pipeline's apprentice: validation errors that name the field and never echo the input (non-finite numbers, lone
surrogates, type confusion), a fuzzer of at least 2,000 such requests with no 5xx, a failure inside the model as a
503, stalled clients that cannot take the service down, a full queue answered at once with 503 and Retry-After, and
a bound on the pixels one request can make the server decode.

The service here runs with tight limits (an ingress of 4 ongoing requests, a 2-second body-read timeout) so that
each one is reached in seconds."""

import base64
import concurrent.futures
import dataclasses
import io
import json
import time

import pytest
import requests
from PIL import Image

from benchmarks.hostile import fuzz, stalled_connection

INGRESS_LIMIT = 4
BODY_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def hostile(smoke):
    from ray import serve

    from apps.config import free_port
    from apps.serve import start

    config, _ = smoke
    limits = dataclasses.replace(
        config.serve,
        port=free_port(),
        ingress_max_ongoing_requests=INGRESS_LIMIT,
        ingress_max_queued_requests=INGRESS_LIMIT,
        max_batch_size=2,
        max_ongoing_requests=2,
        max_queued_requests=1,
        body_read_timeout_s=BODY_TIMEOUT_S,
        retry_after_s=3,
        max_request_megapixels=20.0,
        # The smoke sampler's 8 steps at most: a valid fuzzed request of up to 200 steps could outlast the client's
        # timeout on a loaded 2-core machine, and says nothing about hostile input.
        max_steps=config.apprentice.num_inference_steps,
    )
    config = dataclasses.replace(config, serve=limits)
    url = start(config)
    yield config, url
    serve.shutdown()


def _post_raw(url: str, body: bytes, timeout: float = 60) -> requests.Response:
    headers = {"content-type": "application/json"}
    return requests.post(f"{url}/v1/generate", data=body, headers=headers, timeout=timeout)


def _png(width: int, height: int, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "black").save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


# ---------------------------------------------------------------- validation errors


def test_bad_values_are_422_naming_the_field_without_echoing_the_request(hostile):
    from apps.serve import example_request

    config, url = hostile
    good = example_request(config)
    image = good["demos"][0]["image"]
    cases = {
        # non-finite numbers (Python's json writes NaN / Infinity, which JSON itself does not have)
        "guidance_scale": dict(good, guidance_scale=float("nan")),
        "demo_guidance_scale": dict(good, demo_guidance_scale=float("inf")),
        "steps": dict(good, steps=float("-inf")),
        "seed": dict(good, seed=float("nan")),
        "prompt": dict(good, prompt=float("nan")),
        # lone surrogates in strings (json escapes them as \\ud800, which decodes to a str that is not UTF-8)
        "demos[0].caption": dict(good, demos=[dict(good["demos"][0], caption="a \ud800 ball")]),
        # type confusion: a bool or a string must not pass as a number, nor a number as a string
        "num_images": dict(good, num_images=True),
        "guidance_scale ": dict(good, guidance_scale="3"),
        "steps ": dict(good, steps=True),
        "seed ": dict(good, seed="7"),
        "prompt ": dict(good, prompt=5),
        "demos[0].image": dict(good, demos=[dict(good["demos"][0], image=123)]),
    }
    for field, body in cases.items():
        reply = _post_raw(url, json.dumps(body).encode())
        assert reply.status_code == 422, (field, reply.status_code, reply.text[:300])
        detail = reply.json()["detail"]
        assert isinstance(detail, str) and detail.startswith(field.strip() + ":"), (field, detail)
        assert image not in reply.text, field  # the demo image is never echoed back
    # the prompt itself, with a lone surrogate: refused before it reaches the model
    reply = _post_raw(url, json.dumps(dict(good, prompt="a \udfff in the snow")).encode())
    assert reply.status_code == 422 and reply.json()["detail"].startswith("prompt:"), reply.text[:300]
    # a key that is not Unicode text: refused without breaking the reply's encoding
    reply = _post_raw(url, json.dumps(dict(good, **{"\ud800": float("nan")})).encode())
    assert reply.status_code == 422 and isinstance(reply.json()["detail"], str), reply.text[:300]
    assert requests.post(f"{url}/v1/generate", json=good, timeout=120).status_code == 200


def test_hostile_fuzzer_gets_no_server_error(hostile):
    """At least 2,000 requests of non-finite numbers, lone surrogates and confused types: never a 5xx, every 4xx a
    JSON `detail` string, and the service still draws afterwards."""
    from apps.serve import example_request

    config, url = hostile
    good = dict(example_request(config), steps=1)
    statuses, errors = fuzz(url, good, 2000)
    assert len(statuses) >= 2000, len(statuses)
    assert not errors, (len(errors), errors[:3])
    assert statuses.count(200) > 0 and statuses.count(422) > 1000  # both paths were taken
    assert requests.post(f"{url}/v1/generate", json=good, timeout=120).status_code == 200


def test_a_failure_inside_the_model_is_a_503_with_a_clear_message(hostile):
    """A model that raises (a real exception inside a real replica, behind the real ingress): 503 naming what failed,
    not a 4xx, and no 500."""
    from ray import serve

    from actors.serve_app import SuTIIngress
    from apps.serve import example_request

    config, url = hostile

    @serve.deployment
    class BrokenModel:
        def resolution(self) -> int:
            return 32

        async def generate(self, request: dict) -> dict:
            raise RuntimeError("out of memory while drawing")

    broken = SuTIIngress.options(ray_actor_options={"num_cpus": 0}).bind(BrokenModel.bind(), config.serve)
    serve.run(broken, name="broken", route_prefix="/broken", blocking=False)
    try:
        deadline = time.monotonic() + 60
        while serve.status().applications["broken"].status != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
        reply = requests.post(f"{url}/broken/v1/generate", json=example_request(config), timeout=60)
    finally:
        serve.delete("broken")
    assert reply.status_code == 503, (reply.status_code, reply.text[:300])
    assert "out of memory while drawing" in reply.json()["detail"], reply.text[:300]


# ---------------------------------------------------------------- stalled clients and full queues


def test_stalled_clients_cannot_take_the_service_down(hostile):
    """Twice the ingress limit of clients that send half a body and wait: /healthz still answers within 2 s, a real
    request completes (retrying after a 503's Retry-After), and each stalled client gets a 408 once the body-read
    timeout passes."""
    from apps.serve import example_request

    config, url = hostile
    stalled = [stalled_connection(url) for _ in range(2 * INGRESS_LIMIT)]
    try:
        time.sleep(0.5)  # let them reach the ingress
        for _ in range(3):
            start = time.monotonic()
            health = requests.get(f"{url}/healthz", timeout=10)
            assert health.status_code == 200 and time.monotonic() - start < 2.0, (health.status_code, health.text)
        start, reply = time.monotonic(), None
        while time.monotonic() - start < 60:
            reply = requests.post(f"{url}/v1/generate", json=dict(example_request(config), steps=2), timeout=60)
            if reply.status_code != 503:
                break
            time.sleep(float(reply.headers["retry-after"]))
        assert reply is not None and reply.status_code == 200, (reply.status_code, reply.text[:300])
        answers = []
        for sock in stalled:
            sock.settimeout(BODY_TIMEOUT_S + 30)
            try:
                answers.append(sock.recv(200).split(b"\r\n")[0])
            except OSError as err:
                answers.append(repr(err).encode())
    finally:
        for sock in stalled:
            sock.close()
    # Each stalled client was answered (a 408 from the body-read timeout, or a 503 when the ingress's queue was full)
    # rather than held open.
    assert all(a.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")) for a in answers), answers
    assert any(a.startswith(b"HTTP/1.1 408") for a in answers), answers


def test_a_full_queue_is_answered_at_once_with_503_and_retry_after(hostile):
    """More concurrent generations than the apprentice's and the ingress's ongoing + queued limits: the surplus is
    refused at once with 503 and Retry-After (not left waiting), the rest are drawn, and /healthz answers meanwhile."""
    from apps.serve import example_request

    config, url = hostile
    # The largest request the limits allow (the module's server caps steps at the smoke sampler's 8).
    body = dict(example_request(config), steps=config.serve.max_steps, num_images=config.serve.max_images)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [
            pool.submit(lambda: (time.monotonic(), requests.post(f"{url}/v1/generate", json=body, timeout=300)))
            for _ in range(12)
        ]
        time.sleep(1.0)
        start = time.monotonic()
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        health_s = time.monotonic() - start
        results = [f.result() for f in futures]
    codes = [r.status_code for _, r in results]
    assert codes.count(200) >= 3 and codes.count(503) >= 1, codes
    assert set(codes) <= {200, 503}, codes
    refusals = [r for _, r in results if r.status_code == 503]
    for r in refusals:
        assert int(r.headers["retry-after"]) == config.serve.retry_after_s
        assert r.elapsed.total_seconds() < 10, r.elapsed  # refused at once, not after a wait
    # The apprentice's queue (2 ongoing + 1 queued) is smaller than the ingress's (4): the ingress itself refuses some,
    # with a JSON detail; the HTTP proxy refuses the surplus beyond the ingress's own queue.
    assert any("queue is full" in r.text for r in refusals), [r.text[:100] for r in refusals]
    assert health_s < 2.0, health_s


# ---------------------------------------------------------------- a memory budget per request


def test_decoded_pixels_per_request_are_bounded(hostile):
    """`serve.max_request_megapixels` bounds the pixels all of a request's demos decode to: four 2500x2500 PNGs
    (25 MP) are refused before any is decoded, with a 422 naming the demos; one of them alone is drawn. A JPEG is
    decoded straight towards the model's resolution, so a large one counts for what it decodes to."""
    from apps.serve import example_request

    config, url = hostile
    good = example_request(config)
    big = _png(2500, 2500)
    demos = [dict(good["demos"][0], image=big) for _ in range(4)]
    reply = requests.post(f"{url}/v1/generate", json=dict(good, demos=demos), timeout=60)
    assert reply.status_code == 422, (reply.status_code, reply.text[:300])
    assert reply.json()["detail"].startswith("demos:") and "megapixels" in reply.json()["detail"], reply.text[:300]
    assert big not in reply.text
    reply = requests.post(f"{url}/v1/generate", json=dict(good, demos=demos[:1], steps=2), timeout=60)
    assert reply.status_code == 200, reply.text[:300]
    jpegs = [dict(good["demos"][0], image=_png(4000, 4000, "JPEG")) for _ in range(4)]  # 64 MP, drafted to 1/8
    reply = requests.post(f"{url}/v1/generate", json=dict(good, demos=jpegs, steps=2), timeout=60)
    assert reply.status_code == 200, reply.text[:300]
