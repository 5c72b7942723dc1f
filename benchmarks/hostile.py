"""Hostile clients of the Serve app, shared by its tests and the fault suite (`benchmarks.faults`): a fuzzer of
malformed requests (non-finite numbers, lone surrogates, type confusion, nesting) and clients that send half a body
and wait."""

from __future__ import annotations

import json
import socket

import requests


def hostile_bodies(good: dict):
    """Hypothesis strategy: the good request with one field replaced by a hostile value (non-finite floats, lone
    surrogates, type confusion, nesting) or a valid one; bodies of fields drawn at random; or a JSON value that is
    not an object at all."""
    from hypothesis import strategies as st

    surrogate = st.sampled_from(["\ud800", "\udfff", "x\udbff", "\udc00y"])
    hostile_text = st.one_of(surrogate, st.text(max_size=8), st.just(""), st.just("x" * 400))
    non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
    junk = st.one_of(
        non_finite,
        surrogate,
        st.booleans(),
        st.none(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        hostile_text,
        st.lists(st.one_of(st.integers(), non_finite, surrogate), max_size=3),
        st.dictionaries(hostile_text, st.one_of(non_finite, surrogate, st.integers()), max_size=2),
    )
    demo = good["demos"][0]
    demo_value = st.one_of(
        st.just(demo),
        st.fixed_dictionaries({"image": st.one_of(st.just(demo["image"]), junk), "caption": hostile_text}),
        st.dictionaries(hostile_text, junk, max_size=3),
        junk,
    )
    fields = {
        "prompt": st.one_of(st.just(good["prompt"]), hostile_text, junk),
        "demos": st.one_of(st.just(good["demos"][:1]), st.lists(demo_value, max_size=3), junk),
        "steps": st.one_of(st.sampled_from([1, 2]), junk),
        "guidance_scale": st.one_of(st.floats(0, 50), junk),
        "demo_guidance_scale": st.one_of(st.none(), st.floats(0, 50), junk),
        "num_images": st.one_of(st.just(1), junk),
        "seed": st.one_of(st.integers(0, 2**31 - 1), junk),
    }
    one_field = st.sampled_from(sorted(fields)).flatmap(lambda k: fields[k].map(lambda v: {**good, k: v}))
    body = st.fixed_dictionaries({}, optional={**fields, **{k: junk for k in ("extra", "\ud800", "")}})
    return st.one_of(one_field, body, junk)


def fuzz(url: str, good: dict, n: int = 2000) -> tuple[list[int], list[tuple]]:
    """Send `n` hostile bodies (deterministic: the same ones every run) to `url`'s /v1/generate. Returns (every
    status, the failures: a 5xx, or a 4xx without a JSON `detail` string)."""
    from hypothesis import HealthCheck, Phase, given, settings

    statuses, errors = [], []
    session = requests.Session()

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(body=hostile_bodies(good))
    def one(body):
        reply = session.post(
            f"{url}/v1/generate",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            timeout=60,
        )
        statuses.append(reply.status_code)
        unexplained = 400 <= reply.status_code < 500 and not isinstance(reply.json().get("detail"), str)
        if reply.status_code >= 500 or unexplained:
            errors.append((repr(body)[:200], reply.status_code, reply.text[:200]))

    one()
    return statuses, errors


def stalled_connection(url: str) -> socket.socket:
    """A client that sends the headers and part of a body, then waits."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        b'{"prompt": "a'
    )
    return sock
