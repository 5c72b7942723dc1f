"""The Ray Serve app over HTTP on 127.0.0.1, with the real deployments and the smoke pipeline's tiny apprentice:
offline-equal images, request batching, a checkpoint swap under load, every input limit, the web page in headless
Chromium, and schemathesis fuzzing from the app's own OpenAPI schema."""

import base64
import concurrent.futures
import dataclasses
import io
import threading

import numpy as np
import pytest
import requests
from PIL import Image

from core.data.images import from_png


def _open_gates(folder: str, source: str, value: float):
    """The smoke apprentice with its demo gates set to `value` (a few smoke steps leave them near 0, where an endpoint
    that dropped the demos would still pass), saved to `folder`."""
    import torch

    from core.pipelines.suti import load_apprentice, save_apprentice

    apprentice = load_apprentice(source)
    with torch.no_grad():
        for branch in apprentice.adapter.branches.values():
            branch.gate.fill_(value)
    save_apprentice(apprentice, folder)
    return apprentice


@pytest.fixture(scope="module")
def served(smoke, tmp_path_factory):
    from ray import serve

    from apps.serve import start

    config, _ = smoke
    folder = str(tmp_path_factory.mktemp("opened"))
    apprentice = _open_gates(folder, config.paths.apprentice, 1.0)
    config = dataclasses.replace(config, paths=dataclasses.replace(config.paths, apprentice=folder))
    url = start(config)
    yield config, url, apprentice
    serve.shutdown()


def _offline(apprentice, config, body: dict, seed: int) -> np.ndarray:
    from core.method.apprentice import sample

    demos = [from_png(base64.b64decode(d["image"])) for d in body["demos"]]
    return sample(
        apprentice,
        body["prompt"],
        demos,
        [d["caption"] for d in body["demos"]],
        num_images=body.get("num_images", 1),
        sampler=config.apprentice.sampler,
        num_inference_steps=body["steps"],
        guidance_scale=body["guidance_scale"],
        seed=seed,
    )


def _images(reply) -> list[np.ndarray]:
    return [from_png(base64.b64decode(b)) for b in reply.json()["images"]]


def test_served_image_is_the_offline_samplers_and_depends_on_the_demos(served):
    from apps.serve import example_request
    from core.method.apprentice import sample

    config, url, apprentice = served
    body = example_request(config)
    reply = requests.post(f"{url}/v1/generate", json=dict(body, seed=3), timeout=120)
    assert reply.status_code == 200, reply.text
    offline = _offline(apprentice, config, body, seed=3)[0]
    assert np.abs(_images(reply)[0].astype(int) - offline.astype(int)).max() <= 2
    kwargs = {
        "num_images": 1,
        "sampler": config.apprentice.sampler,
        "num_inference_steps": body["steps"],
        "guidance_scale": body["guidance_scale"],
        "seed": 3,
    }
    without_demos = sample(apprentice, body["prompt"], [], [], **kwargs)[0]
    assert np.abs(without_demos.astype(int) - offline.astype(int)).max() > 10  # the demos travelled and mattered


def test_concurrent_requests_are_batched_and_each_keeps_its_own_images(served):
    """Six requests at once (two demo counts, so two groups): some go through the UNet together, and every reply
    is still what that request alone draws offline at its seed."""
    from apps.serve import example_request

    config, url, apprentice = served
    body = dict(example_request(config), steps=4)
    bodies = [dict(body, seed=10 + i, demos=body["demos"][: 1 + i % 2], num_images=1 + i % 2) for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda b: requests.post(f"{url}/v1/generate", json=b, timeout=120), bodies))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    assert max(r.json()["batch_size"] for r in replies) > 1
    for b, r in zip(bodies, replies):
        offline = _offline(apprentice, config, b, seed=b["seed"])
        served_images = _images(r)
        assert len(served_images) == b["num_images"]
        for got, want in zip(served_images, offline):
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


def test_new_checkpoint_swaps_in_under_load_without_a_failed_request(served, tmp_path):
    """Redeploying with another checkpoint only changes the apprentice's user_config: the replicas reload in place
    while a client keeps sending requests, and none of them fails."""
    from apps.serve import example_request, start

    config, url, _apprentice = served
    body = dict(example_request(config), steps=2)
    before = requests.post(f"{url}/v1/generate", json=body, timeout=120).json()["model"]
    swapped = _open_gates(str(tmp_path), config.paths.apprentice, 3.0)
    statuses, stop = [], threading.Event()

    def client():
        while not stop.is_set() and len(statuses) < 500:
            statuses.append(requests.post(f"{url}/v1/generate", json=body, timeout=120).status_code)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        start(dataclasses.replace(config, paths=dataclasses.replace(config.paths, apprentice=str(tmp_path))))
        after = requests.post(f"{url}/v1/generate", json=body, timeout=120)
    finally:
        stop.set()
        thread.join()
        start(config)  # back to the module's checkpoint for the tests after this one
    assert statuses and set(statuses) == {200}, statuses
    assert after.json()["model"] != before
    offline = _offline(swapped, config, body, seed=0)[0]
    assert np.abs(_images(after)[0].astype(int) - offline.astype(int)).max() <= 2


def _png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "black").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_every_limit_is_a_4xx_naming_the_problem_and_the_replica_survives(served):
    from apps.serve import example_request

    config, url, _ = served
    good = example_request(config)
    post = lambda body, **kw: requests.post(f"{url}/v1/generate", json=body, timeout=60, **kw)
    assert requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"

    def refused(body, status: int, *words: str):
        reply = post(body)
        assert reply.status_code == status, (reply.status_code, reply.text[:300])
        for word in words:
            assert word in reply.text, reply.text[:300]

    demo = good["demos"][0]
    refused(dict(good, demos=[dict(demo, image=base64.b64encode(b"\x89PNG garbage").decode())]), 422, "demos[0].image")
    refused(dict(good, demos=[demo, dict(demo, image="not base64!")]), 422, "demos[1].image", "base64")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    refused(
        dict(good, demos=[dict(demo, image=base64.b64encode(gif.getvalue()).decode())]), 422, "demos[0].image", "GIF"
    )
    refused(
        dict(good, demos=[dict(demo, image=_png(5000, 5000))]), 422, "demos[0].image", "too large"
    )  # a 5000x5000 bomb of a few kB
    refused(dict(good, demos=[demo] * 9), 422, "demos")
    refused(dict(good, demos=[]), 422, "demos")
    refused(dict(good, prompt="x" * 301), 422, "prompt")
    refused(dict(good, steps=201), 422, "steps")
    refused(dict(good, num_images=5), 422, "num_images")
    refused(dict(good, seed=-1), 422, "seed")
    refused(dict(good, extra_field=1), 422, "extra_field")
    reply = requests.post(
        f"{url}/v1/generate", data=b"{not json", headers={"content-type": "application/json"}, timeout=60
    )
    assert reply.status_code == 422
    huge = b"{" + b" " * (config.serve.max_body_bytes + 1) + b"}"
    reply = requests.post(f"{url}/v1/generate", data=huge, headers={"content-type": "application/json"}, timeout=60)
    assert reply.status_code == 413
    chunks = (
        b" " * (1 << 20) for _ in range(config.serve.max_body_bytes // (1 << 20) + 2)
    )  # chunked: no Content-Length
    reply = requests.post(f"{url}/v1/generate", data=chunks, headers={"content-type": "application/json"}, timeout=60)
    assert reply.status_code == 413, reply.text[:300]

    reply = post(dict(good, num_images=2, seed=5))  # after all that, the replica still draws
    assert reply.status_code == 200, reply.text
    images = _images(reply)
    assert len(images) == 2 and images[0].shape == (32, 32, 3)


def test_web_page_draws_in_headless_chromium(served, tmp_path):
    """A person's path: open the page, upload two demos, type captions and a prompt, press Generate, see an image.
    Debian's Chromium (installed by the README's test command); never skipped."""
    from playwright.sync_api import sync_playwright

    from apps.serve import example_request

    config, url, apprentice = served
    body = example_request(config)
    files = []
    for i, d in enumerate(body["demos"][:2]):
        path = tmp_path / f"demo{i}.png"
        path.write_bytes(base64.b64decode(d["image"]))
        files.append(str(path))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(f"{url}/")
            page.set_input_files("#files", files)
            page.wait_for_selector("#caption-1")
            for i, d in enumerate(body["demos"][:2]):
                page.fill(f"#caption-{i}", d["caption"])
            page.fill("#prompt", body["prompt"])
            page.fill("#steps", str(body["steps"]))
            page.fill("#seed", "7")
            page.click("#generate")
            page.wait_for_selector("img.result", timeout=120_000)
            src = page.get_attribute("img.result", "src")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            # A corrupt upload: the page shows the server's 422 naming the field.
            broken = tmp_path / "broken.png"
            broken.write_bytes(b"\x89PNG not really")
            page.set_input_files("#files", [str(broken)])
            page.wait_for_selector("#caption-0")
            page.click("#generate")
            page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=60_000)
            error = page.text_content("#error")
            stale = page.locator("img.result").count()  # the earlier result is gone once an error shows
            # A server failure whose body is not JSON (a proxy's error page, say): still one plain sentence.
            page.route(
                "**/v1/generate",
                lambda route: route.fulfill(status=500, body="Internal Server Error", content_type="text/plain"),
            )
            page.click("#generate")
            page.wait_for_function("document.getElementById('error').textContent.includes('500')", timeout=60_000)
            failure = page.text_content("#error")
        finally:
            browser.close()
    assert "demos[0].image" in error and "{" not in error and "[" not in error.replace("demos[0]", ""), error
    assert stale == 0
    assert "JSON" not in failure and "Unexpected token" not in failure and failure.endswith("."), failure
    assert src.startswith("data:image/png;base64,")
    drawn = from_png(base64.b64decode(src.split(",", 1)[1]))
    two = dict(body, demos=body["demos"][:2])
    offline = _offline(apprentice, config, two, seed=7)[0]
    assert np.abs(drawn.astype(int) - offline.astype(int)).max() <= 2


def test_schemathesis_fuzzing_finds_no_server_error(served):
    """At least 500 requests generated from the app's own OpenAPI schema (valid and invalid by the schema): never a
    5xx, and every 4xx says why in `detail`."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation import GenerationMode

    _, url, _ = served
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    sent, errors = [], []
    budget = {("POST", "/v1/generate"): 280, ("GET", "/healthz"): 20}
    for result in schema.get_all_operations():
        operation = result.ok()
        examples = budget[(operation.method.upper(), operation.path)]
        has_input = bool(operation.body) or bool(operation.query) or bool(operation.headers)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,):

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                derandomize=True,
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                response = case.call(base_url=url, timeout=60)
                sent.append(response.status_code)
                if response.status_code >= 500 or (response.status_code >= 400 and "detail" not in response.json()):
                    errors.append((case.body, response.status_code, response.text[:200]))

            fuzz()
    assert len(sent) >= 500, len(sent)
    assert not errors, errors[:3]
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
