"""The fault suite: inject each fault an operator meets into the stages as a user runs them (`python -m apps.<stage>`
processes on a local cluster, `experiment=smoke` with longer experts and training so that a fault lands mid-work),
prove that it fired, and check what the stage made of it.

    python -m benchmarks.faults                      # every case; JSON to benchmarks/results/faults.json
    python -m benchmarks.faults --cases corrupt_g_shard,fuzzer --work /tmp/faults

Cases: SIGKILL of an expert actor, of the expert stage's driver, of a Ray Train worker and of the train stage's
driver; a corrupt (truncated) G shard; a corrupt newest training checkpoint; corrupt rows and a corrupt file in the
corpus; stalled clients, the largest requests at once, and the hostile-input fuzzer against a kept-up Serve app.
Each case reports `injected` (with its proof: the process is gone, the file was moved aside), `recovered`, the G keys
lost and duplicated against the expected key set, training steps redone (at most), and HTTP 5xx answers (a 503
with Retry-After from a full queue is a refusal by design, counted apart). The fast cases (corrupt G shard, corrupt
checkpoint, corrupt corpus) are also tests (`tests/unit/test_g_contract.py`,
`tests/e2e/test_apprentice_training.py`, `tests/e2e/test_mining_ray_data.py`, `tests/e2e/test_stages_alone.py`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from apps.config import compose, free_port, stage_summary
from benchmarks.processes import alive, descendants, processes_named
from core.data import g as gc

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

# Long enough that a fault lands in the middle of the work on 2 cores.
EXPERTS = ["expert.max_subjects=6", "expert.steps=40", "expert.num_actors=2", "expert.max_tasks_in_flight=1"]
TRAIN = ["apprentice.steps=40", "apprentice.checkpoint_every=4"]
SERVE = [
    "serve.ingress_max_ongoing_requests=4",
    "serve.ingress_max_queued_requests=4",
    "serve.max_ongoing_requests=2",
    "serve.max_queued_requests=1",
    "serve.max_batch_size=2",
    "serve.body_read_timeout_s=2.0",
    "serve.max_steps=8",
    "serve.max_request_megapixels=16",
    "serve.max_body_bytes=8388608",
]


class Work:
    """A folder of smoke-pipeline inputs (world, scorer, base, D_S) and the stage processes run on it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.root = folder / "smoke"

    def overrides(self, *extra: str) -> list[str]:
        return ["experiment=smoke", f"paths.root={self.root}", f"hydra.run.dir={self.folder / 'hydra'}", *extra]

    def command(self, stage: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", f"apps.{stage}", *self.overrides(*extra)]

    def run(self, stage: str, *extra: str, timeout: float = 600) -> tuple[int, dict, str]:
        """Run a stage to its end: (exit code, its JSON summary or {}, the end of its stderr)."""
        command = self.command(stage, *extra)
        done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)
        return done.returncode, summary(done.stdout), done.stderr[-3000:]

    def start(self, stage: str, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(stage, *extra),
            cwd=ROOT,
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def config(self, *extra: str):
        return compose([o for o in self.overrides(*extra) if not o.startswith("hydra.")])


summary = stage_summary


def wait_for(condition, timeout: float, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(every)
    return None


def sigkill(pid: int) -> bool:
    """SIGKILL `pid`; True once it is gone (the proof that the fault fired)."""
    os.kill(pid, signal.SIGKILL)
    return wait_for(lambda: not alive([pid]), 30) is not None


def kill_driver(proc: subprocess.Popen) -> dict:
    """SIGKILL a stage's driver as `kill -9` does, then clean up what its local cluster left, as `ray stop` would."""
    family = descendants(proc.pid)
    gone = sigkill(proc.pid)
    proc.wait(timeout=30)
    time.sleep(5.0)  # Ray's own reaper gets the chance to stop the cluster first
    orphans = alive(family - {proc.pid})
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"driver_gone": gone, "cluster_processes_left_behind": len(orphans)}


# ---------------------------------------------------------------- G


def expected_keys(work: Work, *extra: str) -> set[tuple]:
    from core.data import schema, storage

    config = work.config(*EXPERTS, *extra)
    records = storage.read_table(config.paths.ds, schema.DS_SCHEMA, "paths.ds", "D_S").to_pylist()
    cfg = config.expert
    return {
        (r["subject_id"], p, j)
        for r in records[: cfg.max_subjects]
        for p in r["prompt_ids"]
        for j in range(cfg.samples_per_prompt)
    }


def g_check(work: Work, g_uri: str, *extra: str) -> dict:
    """G's keys against the expected set: lost, duplicated, unexpected."""
    from core.data import schema

    table = gc.read_table(g_uri)
    keys = list(zip(*(table.column(c).to_pylist() for c in schema.G_KEY), strict=True))
    expected = expected_keys(work, *extra)
    return {
        "g_keys_expected": len(expected),
        "g_keys_lost": len(expected - set(keys)),
        "g_keys_duplicated": len(keys) - len(set(keys)),
        "g_keys_unexpected": len(set(keys) - expected),
    }


def shards_in(g_uri: str) -> list[str]:
    return sorted(glob.glob(os.path.join(g_uri, "subject-*.parquet")))


def case_expert_actor(work: Work) -> dict:
    g_uri = str(work.folder / "g_actor")
    shutil.rmtree(g_uri, ignore_errors=True)  # a case starts from nothing
    proc = work.start("experts", *EXPERTS, f"paths.g={g_uri}")
    victims = wait_for(lambda: processes_named(b"ray::ExpertActor.run"), 300)
    injected = bool(victims)
    if victims:
        time.sleep(1.5)  # inside its fine-tune
        injected = sigkill(victims[0])
    out, _ = proc.communicate(timeout=900)
    result = summary(out)
    return {
        "injected": injected,
        "proof": f"expert actor process {victims[0] if victims else None} gone",
        "recovered": proc.returncode == 0 and result.get("actor_restarts", 0) >= 1 and not result.get("failed"),
        "actor_restarts": result.get("actor_restarts", 0),
        **g_check(work, g_uri),
    }


def case_expert_driver(work: Work) -> dict:
    g_uri = str(work.folder / "g_driver")
    shutil.rmtree(g_uri, ignore_errors=True)  # a case starts from nothing
    proc = work.start("experts", *EXPERTS, f"paths.g={g_uri}")
    first = wait_for(lambda: shards_in(g_uri), 600)
    before = len(shards_in(g_uri))
    killed = kill_driver(proc)
    code, result, err = work.run("experts", *EXPERTS, f"paths.g={g_uri}")
    return {
        "injected": bool(first) and killed["driver_gone"],
        "proof": f"driver gone with {before} subject shards in G",
        **killed,
        "recovered": code == 0 and result.get("skipped_already_in_g", 0) >= 1,
        "rerun": {k: result.get(k) for k in ("skipped_already_in_g", "done", "failed")} if code == 0 else err,
        **g_check(work, g_uri),
    }


def case_corrupt_g_shard(work: Work) -> dict:
    """A complete G with one shard truncated to 40 bytes, then the expert stage run again."""
    g_uri = str(work.folder / "g_corrupt")
    shutil.rmtree(g_uri, ignore_errors=True)  # a case starts from nothing
    code, _, err = work.run("experts", *EXPERTS, f"paths.g={g_uri}")
    if code != 0:
        return {"injected": False, "recovered": False, "setup_error": err}
    victim = shards_in(g_uri)[0]
    with open(victim, "r+b") as f:
        f.truncate(40)
    code, result, err = work.run("experts", *EXPERTS, f"paths.g={g_uri}")
    moved = glob.glob(os.path.join(g_uri, "_corrupt", os.path.basename(victim) + ".*.corrupt"))
    return {
        "injected": True,
        "proof": f"{os.path.basename(victim)} truncated to 40 bytes; moved aside to {moved[0] if moved else None}",
        "recovered": code == 0 and bool(moved) and result.get("done") == 1 and result.get("moved_aside") == [victim],
        "rerun": {k: result.get(k) for k in ("moved_aside", "skipped_already_in_g", "done")} if code == 0 else err,
        **g_check(work, g_uri),
    }


# ---------------------------------------------------------------- training


def sealed_steps(storage_root: str) -> list[int]:
    """Steps of the checkpoints written whole (sealed) under a Ray Train storage folder."""
    steps = []
    for marker in glob.glob(os.path.join(storage_root, "*", "checkpoint_*", "checkpoint_complete.json")):
        try:
            steps.append(int(json.loads(Path(marker).read_text())["step"]))
        except (OSError, ValueError, KeyError):
            pass
    return sorted(steps)


def registered_steps(storage_root: str) -> list[int]:
    """Steps of the checkpoints Ray Train has registered (listed in its run snapshot): what a restarted worker group
    resumes from. A worker killed before the first registration restarts from scratch, by Ray Train's design."""
    steps = []
    for snapshot in glob.glob(os.path.join(storage_root, "*", "checkpoint_manager_snapshot.json")):
        try:
            names = [r["checkpoint_dir_name"] for r in json.loads(Path(snapshot).read_text())["checkpoint_results"]]
            for name in names:
                marker = Path(snapshot).parent / name / "checkpoint_complete.json"
                steps.append(int(json.loads(marker.read_text())["step"]))
        except (OSError, ValueError, KeyError):  # not written yet, or being replaced
            pass
    return sorted(steps)


def train_outcome(work: Work, extra: list[str], at_kill: int | None) -> dict:
    config = work.config(*TRAIN, *extra)
    state = json.loads((Path(config.paths.apprentice) / "train_state.json").read_text())
    resumes = state["resumes"]
    out = {"final_step": state["step"], "resumes": resumes}
    if resumes and at_kill is not None:
        # Steps done after the newest sealed checkpoint are lost with the process: fewer than checkpoint_every.
        out["newest_checkpoint_at_kill"] = at_kill
        out["steps_redone_at_most"] = at_kill - resumes[-1]["checkpoint_step"] + config.apprentice.checkpoint_every - 1
    return out


def case_train_worker(work: Work) -> dict:
    storage_root = str(work.folder / "train_worker")
    shutil.rmtree(storage_root, ignore_errors=True)  # a case starts from nothing
    extra = ["apprentice.num_workers=2", f"paths.train_storage={storage_root}", f"paths.run={storage_root}/run"]
    proc = work.start("train", *TRAIN, *extra)
    wait_for(lambda: registered_steps(storage_root), 600)
    workers = processes_named(b"ray::RayTrainWorker")
    at_kill = max(registered_steps(storage_root), default=None)
    injected = bool(workers) and sigkill(workers[-1])
    out, _ = proc.communicate(timeout=900)
    result = summary(out)
    recovered = proc.returncode == 0 and result.get("resumes", 0) >= 1 and result.get("steps") == 40
    return {
        "injected": injected,
        "proof": f"train worker {workers[-1] if workers else None} gone after checkpoint step {at_kill}",
        "recovered": recovered,
        **(train_outcome(work, extra, at_kill) if proc.returncode == 0 else {}),
    }


def case_train_driver(work: Work, corrupt_newest: bool = False) -> dict:
    name = "train_checkpoint" if corrupt_newest else "train_driver"
    storage_root = str(work.folder / name)
    shutil.rmtree(storage_root, ignore_errors=True)  # a case starts from nothing
    extra = [f"paths.train_storage={storage_root}", f"paths.run={storage_root}/run"]
    proc = work.start("train", *TRAIN, *extra)
    wait_for(lambda: len(sealed_steps(storage_root)) >= 2, 600)
    killed = kill_driver(proc)
    at_kill = max(sealed_steps(storage_root), default=None)
    out = {"injected": killed["driver_gone"], "proof": f"driver gone after checkpoint step {at_kill}", **killed}
    if corrupt_newest:
        markers = glob.glob(os.path.join(storage_root, "*", "checkpoint_*", "checkpoint_complete.json"))
        newest = max(markers, key=lambda m: json.loads(Path(m).read_text())["step"])
        weights = glob.glob(os.path.join(os.path.dirname(newest), "**", "*.safetensors"), recursive=True)
        with open(weights[0], "r+b") as f:
            f.truncate(100)
        corrupted = os.path.basename(os.path.dirname(newest))
        out["proof"] = f"driver gone; {corrupted} (step {at_kill}): {os.path.basename(weights[0])} cut to 100 bytes"
    code, result, err = work.run("train", *TRAIN, *extra)
    out["recovered"] = code == 0 and result.get("steps") == 40 and result.get("resumes", 0) >= 1
    if code != 0:
        out["rerun_error"] = err
        return out
    outcome = train_outcome(work, extra, at_kill)
    if corrupt_newest:
        out["recovered"] = out["recovered"] and outcome["resumes"][-1]["skipped"] == [corrupted]
    return {**out, **outcome}


# ---------------------------------------------------------------- corpus


def case_corrupt_corpus(work: Work) -> dict:
    """Undecodable images in the corpus are skipped and counted; an unreadable corpus file stops mining with an
    error naming the file and `paths.corpus`, and writes no D_S; without it, mining runs again."""
    import pyarrow as pa

    from core.data import schema, storage

    config = work.config()
    corpus = str(work.folder / "corrupt_corpus" / "corpus")
    shutil.rmtree(os.path.dirname(corpus), ignore_errors=True)
    shutil.copytree(config.paths.corpus, corpus)
    bad = [
        {"url": f"https://example.com/broken/{i}.png", "image": b"\x89PNG\r\n garbage", "caption": "a ball"}
        for i in range(5)
    ]
    rows = [dict(r, truth_subject_id=None) for r in bad]
    storage.write_shard(pa.Table.from_pylist(rows, schema.CORPUS_SCHEMA), corpus, schema.CORPUS_SCHEMA, "broken")
    ds = str(work.folder / "corrupt_corpus" / "ds")
    extra = [f"paths.corpus={corpus}", f"paths.ds={ds}"]
    code_rows, rows_result, rows_err = work.run("mine", *extra)
    cut = os.path.join(corpus, "cut.parquet")
    shutil.copy(storage.list_shards(corpus)[0], cut)
    with open(cut, "r+b") as f:
        f.truncate(64)
    shutil.rmtree(ds, ignore_errors=True)
    code_file, _, file_err = work.run("mine", *extra)
    clear = "cut.parquet" in file_err and "paths.corpus" in file_err
    wrote_nothing = code_file != 0 and not os.path.exists(ds)
    os.remove(cut)
    code_again, _, _ = work.run("mine", *extra)
    return {
        "injected": True,
        "proof": "5 rows of undecodable image bytes; then a shard cut to 64 bytes",
        "corrupt_images_skipped": rows_result.get("corrupt_images_skipped"),
        "rows_recovered": code_rows == 0 and rows_result.get("corrupt_images_skipped", 0) >= 5,
        "unreadable_file_error_names_file_and_key": clear,
        "unreadable_file_wrote_no_ds": wrote_nothing,
        "recovered": code_rows == 0 and clear and wrote_nothing and code_again == 0,
        "rows_error": None if code_rows == 0 else rows_err,
    }


# ---------------------------------------------------------------- Serve


class Server:
    """`python -m apps.serve ... serve.keep_serving=true` in the background, stopped with SIGTERM."""

    def __init__(self, work: Work):

        self.extra = [*SERVE, f"serve.port={free_port()}", "serve.keep_serving=true"]
        self.config = work.config(*self.extra)
        self.proc = work.start("serve", *self.extra)
        line = ""
        for line in self.proc.stdout:
            if line.startswith("serving on"):
                break
        if not line.startswith("serving on"):
            raise RuntimeError("the server never came up")
        self.url = line.split()[2]

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        return {"server_exit": self.proc.returncode, "stopped_by": summary(out).get("stopped_by")}


def good_request(config, **changes) -> dict:
    from apps.serve import example_request

    return dict(example_request(config), **changes)


def case_stalled_clients(server: Server) -> dict:
    import requests

    from benchmarks.hostile import stalled_connection

    n = 2 * server.config.serve.ingress_max_ongoing_requests
    stalled = [stalled_connection(server.url) for _ in range(n)]
    codes, health = [], []
    try:
        time.sleep(0.5)
        for _ in range(3):
            start = time.monotonic()
            health.append((requests.get(f"{server.url}/healthz", timeout=10).status_code, time.monotonic() - start))
        start = time.monotonic()
        while time.monotonic() - start < 60:
            reply = requests.post(f"{server.url}/v1/generate", json=good_request(server.config, steps=2), timeout=60)
            codes.append(reply.status_code)
            if reply.status_code != 503:
                break
            time.sleep(float(reply.headers["retry-after"]))
        answers = []
        for sock in stalled:
            sock.settimeout(server.config.serve.body_read_timeout_s + 30)
            try:
                answers.append(sock.recv(200).split(b"\r\n")[0].decode())
            except OSError as err:
                answers.append(repr(err))
    finally:
        for sock in stalled:
            sock.close()
    return {
        "injected": True,
        "proof": f"{n} connections holding half a body open (twice the ingress limit)",
        "healthz_seconds_max": round(max(s for _, s in health), 3),
        "request_statuses": codes,
        "stalled_answers": dict(Counter(a.split(" ", 2)[1] if a.startswith("HTTP") else a for a in answers)),
        "http_5xx": sum(c >= 500 and c != 503 for c in codes) + sum(a.startswith("HTTP/1.1 5") for a in answers),
        "recovered": all(c == 200 for c, _ in health) and max(s for _, s in health) < 2.0 and codes[-1] == 200,
    }


def case_largest_requests(server: Server) -> dict:
    import requests

    from benchmarks.serve_memory import largest_body

    limits = server.config.serve
    request = good_request(server.config)
    body = largest_body(limits, request["demos"][0]["caption"], request["prompt"])
    concurrency = 2 * limits.ingress_max_ongoing_requests

    def post(_):
        headers = {"content-type": "application/json"}
        return requests.post(f"{server.url}/v1/generate", data=body, headers=headers, timeout=300).status_code

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(post, range(concurrency)))
    statuses = dict(Counter(codes))
    return {
        "injected": True,
        "proof": f"{concurrency} requests of {len(body) / 2**20:.1f} MiB ({limits.max_demos} demos, "
        f"{limits.max_request_megapixels:g} MP decoded in all) at once",
        "statuses": statuses,
        "refused_503": codes.count(503),
        "http_5xx": sum(c >= 500 and c != 503 for c in codes),
        "recovered": codes.count(200) >= 1 and all(c in (200, 503) for c in codes),
    }


def case_fuzzer(server: Server, n: int) -> dict:
    from benchmarks.hostile import fuzz

    statuses, errors = fuzz(server.url, good_request(server.config, steps=1), n)
    return {
        "injected": True,
        "proof": f"{len(statuses)} hostile requests (non-finite numbers, lone surrogates, type confusion)",
        "statuses": dict(Counter(statuses)),
        "http_5xx": sum(s >= 500 for s in statuses),
        "unexplained_4xx": sum(1 for _, s, _ in errors if s < 500),
        "recovered": not errors and len(statuses) >= n,
        "first_errors": errors[:3],
    }


# ---------------------------------------------------------------- the suite

CASES = {
    "expert_actor_sigkill": case_expert_actor,
    "expert_driver_sigkill": case_expert_driver,
    "corrupt_g_shard": case_corrupt_g_shard,
    "train_worker_sigkill": case_train_worker,
    "train_driver_sigkill": lambda work: case_train_driver(work),
    "corrupt_latest_checkpoint": lambda work: case_train_driver(work, corrupt_newest=True),
    "corrupt_corpus": case_corrupt_corpus,
}
SERVE_CASES = ("stalled_clients", "largest_requests", "fuzzer")


def setup(work: Work) -> None:
    """The smoke pipeline's inputs (world, scorer, base, D_S, and a G to train on), each stage as its own process;
    the served apprentice comes from a short training run."""
    for stage in ("world", "scorer", "pretrain", "mine", "experts"):
        code, _, err = work.run(stage)
        if code != 0:
            raise RuntimeError(f"apps.{stage} failed while preparing the suite:\n{err}")


def passed(case: dict) -> bool:
    return bool(
        case.get("injected")
        and case.get("recovered")
        and not case.get("g_keys_lost")
        and not case.get("g_keys_duplicated")
        and not case.get("g_keys_unexpected")
        and not case.get("http_5xx")
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join([*CASES, *SERVE_CASES]))
    parser.add_argument("--work", default=None, help="folder for the suite's files (default: a temporary one)")
    parser.add_argument("--fuzz", type=int, default=2000, help="requests the fuzzer sends")
    parser.add_argument("--out", default=str(RESULTS / "faults.json"))
    parser.add_argument("--merge", action="store_true", help="keep the other cases of the report at --out")
    args = parser.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    unknown = set(names) - set(CASES) - set(SERVE_CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from {[*CASES, *SERVE_CASES]}")
    folder = Path(args.work or tempfile.mkdtemp(prefix="faults-"))
    folder.mkdir(parents=True, exist_ok=True)
    work = Work(folder)
    began = time.perf_counter()
    setup(work)
    results = {}
    for name in [n for n in names if n in CASES]:
        start = time.perf_counter()
        results[name] = CASES[name](work)
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(name, "passed" if passed(results[name]) else "FAILED", json.dumps(results[name])[:400], flush=True)
    serve_names = [n for n in names if n in SERVE_CASES]
    if serve_names:
        code, _, err = work.run("train")  # an apprentice to serve
        if code != 0:
            raise RuntimeError(f"apps.train failed while preparing the Serve cases:\n{err}")
        server = Server(work)
        try:
            for name in serve_names:
                start = time.perf_counter()
                run = {
                    "stalled_clients": case_stalled_clients,
                    "largest_requests": case_largest_requests,
                    "fuzzer": lambda s: case_fuzzer(s, args.fuzz),
                }[name]
                results[name] = run(server)
                results[name]["seconds"] = round(time.perf_counter() - start, 1)
                print(name, "passed" if passed(results[name]) else "FAILED", flush=True)
        finally:
            stopped = server.stop()
        for name in serve_names:
            results[name].update(stopped)
    command = "python -m benchmarks.faults " + " ".join(argv if argv is not None else sys.argv[1:])
    stamp = {"date": time.strftime("%Y-%m-%d"), "command": command.strip()}
    cases = {name: {"passed": passed(case), **case, **stamp} for name, case in results.items()}
    if args.merge and Path(args.out).exists():  # the cases run now replace theirs in the last report
        last = json.loads(Path(args.out).read_text())
        kept = {n: {"date": last.get("date"), "command": last.get("command"), **c} for n, c in last["cases"].items()}
        cases = {**kept, **cases}
    report = {
        "benchmark": "faults",
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        **stamp,
        "seconds": round(time.perf_counter() - began, 1),
        "all_passed": all(c["passed"] for c in cases.values()),
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}))
    if not args.work:
        shutil.rmtree(folder, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
