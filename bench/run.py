#!/usr/bin/env python3
"""Runs oxserve's benchmark on this machine and writes BENCHMARKS.md. Started by `bench/run`
(which installs and builds what it needs first); see bench/README.md.

Every target serves the same model files and is driven by the same closed-loop load generator
(bench/loadgen) over loopback:
  raw              the SavedModel run in-process through oxserve's TensorFlow backend (the limit)
  oxserve          REST and gRPC, batching off and on (--enable_batching)
  fastapi          FastAPI + uvicorn serving tf.saved_model.load (bench/peers/fastapi_app.py)
  kserve           KServe's Python model server wrapping the same model (bench/peers/kserve_app.py)

The `predict` scenario is not a server: `oxserve predict` runs over the files of
bench/out/predict/ (JSON lines and TFRecords; each file read several times over, through symbolic
links, for about --duration seconds of work) against the raw runtime at the same batch size.
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_PY = BENCH / ".venv" / "bin" / "python"
OXSERVE = ROOT / "target" / "release" / "oxserve"
LOADGEN = ROOT / "target" / "release" / "loadgen"
BATCHING = BENCH / "batching_parameters.txt"
# The TensorFlow kernels of every target: oxserve's default (TensorFlow's own, see README) unless
# the environment asks otherwise, and the Python peers the same, so that they differ in serving only.
ONEDNN_OPTS = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0")

SCENARIOS = ["half_plus_two", "planet", "resnet50", "predict"]
# Scenarios whose c=1 rows (raw runtime, oxserve REST and gRPC, batching off) make goal ratios:
# measured paired, one request to each target in turn (see `paired_load`).
PAIRED_C1 = ["planet", "resnet50"]
# Scenarios whose c=32 rows (batching off and on, REST and gRPC: those of the batching goal) are
# measured in turns, both servers up at once.
ALTERNATED_C32 = ["planet"]
TARGET_ORDER = ["raw", "oxserve", "fastapi", "kserve"]


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server process started by the benchmark: cold start, peak RSS, clean stop."""

    def __init__(self, name, cmd, probe, env=None, cwd=None, log_path=None):
        self.name = name
        self.log_file = open(log_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.cold_start_s = self.wait_ready(probe)
        self.peak_rss_mb = None

    def wait_ready(self, probe, timeout=300):
        url, body = probe
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_file.name}")
            try:
                request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as resp:
                    if resp.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not answer a prediction within {timeout}s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        try:
            while True:
                pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
                if pid:
                    self.proc.returncode = os.waitstatus_to_exitcode(status)
                    self.peak_rss_mb = usage.ru_maxrss / 1024.0
                    break
                if time.monotonic() > deadline:
                    self.proc.kill()
                    deadline = float("inf")
                time.sleep(0.05)
        except ChildProcessError:
            pass
        except KeyboardInterrupt:
            self.proc.kill()
            raise
        self.log_file.close()


def alternate(measures, rounds):
    """Runs each measurement of `measures` (name -> function) in turn, `rounds` times over, and
    returns name -> list of results. This VM's speed drifts by up to ±15% over seconds to
    minutes: measured alternately, in short runs, every target sees about the same drift."""
    results = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            results[name].append(measure())
    return results


def median_run(runs, key="throughput_rps"):
    """The median of alternated runs (by `key`; the lower middle one of an even count), with every
    run's throughput and p50 kept next to it (in the order measured, so that the goals can pair
    each round of one target with the same round of another)."""
    ordered = sorted(runs, key=lambda r: r[key])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["alternated_runs"] = [r[key] for r in runs]
    median["alternated_p50_ms"] = [r["p50_ms"] for r in runs]
    return median


ALTERNATED_KEYS = {"throughput_rps": "alternated_runs", "p50_ms": "alternated_p50_ms"}


def paired_ratios(a, b, key):
    """The ratio of `a` to `b` in each round they were measured alternately, or None when they were
    not (or `key` was not kept per round)."""
    runs = ALTERNATED_KEYS.get(key)
    xs, ys = (a or {}).get(runs), (b or {}).get(runs)
    if not xs or not ys or len(xs) != len(ys) or len(xs) < 2 or not all(ys):
        return None
    return [x / y for x, y in zip(xs, ys)]


def run_loadgen(args, label, duration, warmup, concurrency=None, max_requests=None):
    cmd = [str(LOADGEN), *args, "--duration-secs", str(duration), "--warmup-secs", str(warmup), "--label", label]
    if concurrency is not None:
        cmd += ["--concurrency", str(concurrency), "--max-requests", str(max_requests)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Read both pipes while it runs (`paired` prints every cycle: more than a pipe holds), then
    # reap it with wait4 for its peak RSS.
    outputs = {}
    readers = [threading.Thread(target=lambda name=name, pipe=pipe: outputs.__setitem__(name, pipe.read()))
               for name, pipe in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = outputs["out"], outputs["err"]
    proc.stdout.close()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"loadgen failed ({shlex.join(cmd)}):\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["loadgen_peak_rss_mb"] = usage.ru_maxrss / 1024.0
    for one in result.get("targets", {"": result}).values():
        if one["errors"]:
            log(f"  {label} {one['target']}: {one['errors']} errors, first: {one['first_error']}")
    return result


def cycle_ratios(paired, a, b):
    """`a`'s latency over `b`'s in each cycle of a `loadgen paired` run."""
    i, j = paired["order"].index(a), paired["order"].index(b)
    return [cycle[i] / cycle[j] for cycle in paired["cycles_us"] if cycle[j]]


def partial_run(args):
    """Whether a run measures less than the whole benchmark: some scenarios or predict inputs
    only, no peers, or --quick."""
    return bool(args.quick or args.no_peers or args.predict_formats or set(args.scenarios) != set(SCENARIOS))


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.duration = args.duration or (2.0 if args.quick else 8.0)
        self.warmup = 0.5 if args.quick else 1.5
        self.out = BENCH / "out"
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.scenarios = json.loads((self.out / "scenarios.json").read_text())
        # A partial run keeps its results apart, so that it cannot replace the full run's, from
        # which --render-only rewrites BENCHMARKS.md.
        self.partial = partial_run(args)
        self.kept = self.out / "partial" if self.partial else self.out
        self.kept.mkdir(parents=True, exist_ok=True)
        self.results = []
        self.servers = []

    def record(self, scenario, target, protocol, batching, result, server=None):
        row = {**result, "scenario": scenario, "target": target, "protocol": protocol, "batching": batching}
        if server is not None:
            row["cold_start_s"] = server.cold_start_s
        self.results.append(row)
        log(f"  {scenario:14} {target:8} {protocol:5} batching={'on ' if batching else 'off'} c={result['concurrency']:<3}"
            f" {result['throughput_rps']:>9.1f} req/s  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms")
        return row

    def max_requests(self, scenario):
        return 200_000

    def load(self, scenario, args, label, concurrency, duration=None):
        return run_loadgen(args, label, duration or self.duration, self.warmup, concurrency,
                           self.max_requests(scenario))

    def finish_server(self, server, rows):
        server.stop()
        for row in rows:
            row["peak_rss_mb"] = server.peak_rss_mb

    # ---- targets

    def raw_load(self, name, sc, c):
        return self.load(name, ["raw", "--model-dir", sc["version_dir"],
                                "--input", f"{sc['input']['alias']}={sc['input']['npy']}"], f"{name}/raw", c)

    def record_raw(self, name, result):
        row = self.record(name, "raw", "-", False, result)
        row["peak_rss_mb"] = result["loadgen_peak_rss_mb"]

    def raw(self, name, sc):
        # For PAIRED_C1, c=1 is measured paired with oxserve's own c=1 rows (see `oxserve`).
        for c in (16,) if name in PAIRED_C1 else (1, 16):
            self.record_raw(name, self.raw_load(name, sc, c))

    def start_oxserve(self, name, sc, batching):
        """An oxserve server for scenario `name`, and its loads by protocol (concurrency -> result)."""
        rest, grpc = free_port(), free_port()
        cmd = [str(OXSERVE), "serve", f"--port={grpc}", f"--rest_api_port={rest}", f"--model_name={sc['model']}",
               f"--model_base_path={sc['base']}"]
        if batching:
            cmd += ["--enable_batching", f"--batching_parameters_file={BATCHING}"]
        url = f"http://127.0.0.1:{rest}/v1/models/{sc['model']}:predict"
        body = pathlib.Path(sc["input"]["json"]).read_bytes()
        tag = "on" if batching else "off"
        server = Server(f"oxserve-{name}-{tag}", cmd, (url, body), log_path=self.logs / f"oxserve-{name}-{tag}.log",
                        env={**os.environ, "RUST_LOG": "warn"})
        log(f"  oxserve batching {tag}: cold start {server.cold_start_s:.2f}s")
        server.paired_args = ["--url", url, "--body", sc["input"]["json"], "--addr", f"127.0.0.1:{grpc}",
                              "--model", sc["model"]]
        loads = {
            "REST": lambda c, duration=None: self.load(name, ["http", "--url", url, "--body", sc["input"]["json"]],
                                                       f"{name}/oxserve-rest", c, duration),
            "gRPC": lambda c, duration=None: self.load(
                name, ["grpc", "--addr", f"127.0.0.1:{grpc}", "--model", sc["model"], "--input",
                       f"{sc['input']['alias']}={sc['input']['npy']}"], f"{name}/oxserve-grpc", c, duration),
        }
        return server, loads

    def oxserve(self, name, sc):
        """oxserve with batching off, then on; for ALTERNATED_C32, both up at once (see below)."""
        both_up = name in ALTERNATED_C32
        started, rows = {}, {False: [], True: []}

        def measure(batching, levels):
            server, loads = started[batching]
            if name in PAIRED_C1 and not batching:
                self.paired_c1(name, sc, server, rows[batching])
                levels = tuple(c for c in levels if c != 1)
            for proto, load in loads.items():
                for c in levels:
                    rows[batching].append(self.record(name, "oxserve", proto, batching, load(c), server))

        if not both_up:
            for batching in (False, True):
                started[batching] = self.start_oxserve(name, sc, batching)
                measure(batching, (1, 16, 32))
                self.finish_server(started[batching][0], rows[batching])
            return
        for batching in (False, True):
            started[batching] = self.start_oxserve(name, sc, batching)
        for batching in (False, True):
            measure(batching, (1, 16))
        # REST off, REST on, gRPC off, gRPC on, and again, in short runs: the goal's ratio is taken
        # between rows measured seconds apart, not minutes (the batching-off row alone swung by ±15%
        # between runs).
        rounds = self.args.c32_rounds or (3 if self.quick else 15)
        duration = self.args.c32_round_secs or (self.duration if self.quick else 3.0)
        runs = alternate({(proto, batching): lambda proto=proto, batching=batching:
                          started[batching][1][proto](32, duration)
                          for proto in ("REST", "gRPC") for batching in (False, True)}, rounds)
        for (proto, batching), proto_runs in runs.items():
            rows[batching].append(self.record(name, "oxserve", proto, batching, median_run(proto_runs),
                                              started[batching][0]))
        for batching in (False, True):
            self.finish_server(started[batching][0], rows[batching])

    def paired_c1(self, name, sc, server, rows):
        """The raw runtime, oxserve REST and gRPC at c=1, one request to each in turn (`loadgen
        paired`): the rows of the goal ratios, all taken over the same moments of the VM."""
        duration = self.args.c1_paired_secs or (3 * self.duration if self.quick else 120.0)
        paired = run_loadgen(["paired", "--model-dir", sc["version_dir"], "--input",
                              f"{sc['input']['alias']}={sc['input']['npy']}", *server.paired_args],
                             f"{name}/paired", duration, self.warmup)
        summaries = paired["targets"]
        ratios = {f"{a}/{b}": statistics.median(cycle_ratios(paired, a, b)) if paired["cycles_us"] else None
                  for a, b in (("REST", "raw"), ("gRPC", "raw"), ("REST", "gRPC"))}
        log(f"  paired c=1: {len(paired['cycles_us'])} cycles, median cycle ratios "
            + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items() if v is not None))
        for target, protocol in (("raw", "-"), ("oxserve", "REST"), ("oxserve", "gRPC")):
            result = {**summaries["raw" if target == "raw" else protocol], "paired_cycles": len(paired["cycles_us"]),
                      "paired_cycle_ratios": ratios}
            if target == "raw":
                self.record_raw(name, {**result, "loadgen_peak_rss_mb": paired["loadgen_peak_rss_mb"]})
            else:
                rows.append(self.record(name, target, protocol, False, result, server))

    def python_peer(self, name, sc, peer):
        port = free_port()
        env = {**os.environ, "MODEL_NAME": sc["model"], "MODEL_PATH": sc["version_dir"], "HTTP_PORT": str(port),
               "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1",
               "TF_ENABLE_ONEDNN_OPTS": ONEDNN_OPTS}
        if peer == "fastapi":
            cmd = [str(BENCH / ".venv" / "bin" / "uvicorn"), "fastapi_app:app", "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning", "--no-access-log"]
        else:
            cmd = [str(VENV_PY), "kserve_app.py"]
        url = f"http://127.0.0.1:{port}/v1/models/{sc['model']}:predict"
        body = pathlib.Path(sc["input"]["json"]).read_bytes()
        server = Server(f"{peer}-{name}", cmd, (url, body), env=env, cwd=BENCH / "peers",
                        log_path=self.logs / f"{peer}-{name}.log")
        log(f"  {peer}: cold start {server.cold_start_s:.2f}s")
        rows = []
        for c in (1, 16):
            result = self.load(name, ["http", "--url", url, "--body", sc["input"]["json"]], f"{name}/{peer}", c)
            rows.append(self.record(name, peer, "REST", False, result, server))
        self.finish_server(server, rows)

    # ---- the predict scenario

    def run_predict(self, form, files, batch_size, label):
        """One `oxserve predict --report` over `files` into a fresh output directory."""
        out_dir = self.out / "predict-output"
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd = [str(OXSERVE), "predict", "--model_dir", form["model_dir"], "--data_format", form["data_format"],
               "--output_dir", str(out_dir), "--batch_size", str(batch_size), "--report", "--input", *map(str, files)]
        load_before = os.getloadavg()[0]
        with open(self.logs / f"predict-{label}.log", "wb") as log_file:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file,
                                    env={**os.environ, "RUST_LOG": "info"})
            out = proc.stdout.read()
            proc.stdout.close()
            _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"oxserve predict failed; see {self.logs / f'predict-{label}.log'}")
        report = json.loads(out.decode().strip().splitlines()[-1])
        report["peak_rss_mb"] = usage.ru_maxrss / 1024.0
        report["load_avg"] = [load_before, os.getloadavg()[0]]
        shutil.rmtree(out_dir, ignore_errors=True)
        return report

    def predict_files(self, form, passes):
        """`passes` symbolic links to the format's input file (read once each)."""
        links_dir = self.out / "predict-links"
        shutil.rmtree(links_dir, ignore_errors=True)
        links_dir.mkdir(parents=True)
        source = pathlib.Path(form["file"])
        files = []
        for i in range(passes):
            link = links_dir / f"{i:04d}-{source.name}"
            link.symlink_to(source)
            files.append(link)
        return files

    def predict_raw(self, name, form, batch):
        """The raw runtime on a batch of the format's model (float inputs only: loadgen feeds .npy)."""
        label = form["name"]
        result = self.load(name, ["raw", "--model-dir", form["model_dir"], "--input",
                                  f"{form['raw']['alias']}={form['raw']['npy']}"], f"predict/raw-{label}", 1)
        return {**result, "scenario": name, "target": "raw", "format": label, "batch_size": batch,
                "throughput_ips": result["throughput_rps"] * batch, "peak_rss_mb": result["loadgen_peak_rss_mb"]}

    def predict(self, name, sc):
        batch = sc["batch_size"]
        wanted = self.args.predict_formats
        repeats = self.args.predict_repeats or (1 if self.quick else 2)
        for form in sc["formats"]:
            if wanted and form["name"] not in wanted:
                continue
            label = form["name"]
            raws = [self.predict_raw(name, form, batch)] if form["raw"] else []
            # Short runs first (they warm the page cache and tell the speed), up to one of as many
            # passes over the file as make --duration seconds of work: that one is measured.
            passes, runs = 1, []
            for _ in range(4):
                report = self.run_predict(form, self.predict_files(form, passes), batch, label)
                if report["seconds"] >= 0.75 * self.duration:
                    runs.append(report)
                    break
                passes = max(passes + 1, math.ceil(passes * 1.1 * self.duration / max(report["seconds"], 1e-3)))
            # Then raw runtime and pipeline again, alternately: the best of each is kept.
            measures = {"pipeline": lambda: self.run_predict(form, self.predict_files(form, passes), batch, label)}
            if form["raw"]:
                measures = {"raw": lambda: self.predict_raw(name, form, batch), **measures}
            more = alternate(measures, max(repeats - len(runs), 0))
            raws += more.get("raw", [])
            runs += more["pipeline"]
            shutil.rmtree(self.out / "predict-links", ignore_errors=True)
            best = max(runs, key=lambda r: r.get("steady_instances_per_second") or r["instances_per_second"])
            inprocess = max(r.get("raw_runtime_instances_per_second") or 0.0 for r in runs) or None
            best_raw = max(raws, key=lambda r: r["throughput_ips"]) if raws else None
            if best_raw:
                self.results.append(best_raw)
            raw_ips = best_raw["throughput_ips"] if best_raw else inprocess
            steady = best.get("steady_instances_per_second") or best["instances_per_second"]
            row = {"scenario": name, "target": "oxserve predict", "format": label, "model": form["model"],
                   "data_format": form["data_format"], "description": form["description"], "batch_size": batch,
                   "instances": best["instances"], "errors": best["errors"], "seconds": best["seconds"],
                   "warmup_s": best.get("warmup_seconds"), "whole_run_ips": best["instances_per_second"],
                   "throughput_ips": steady, "raw_ips": raw_ips,
                   "raw_source": "loadgen raw" if best_raw else "in-process",
                   "raw_inprocess_ips": inprocess,
                   "ratio": steady / raw_ips if raw_ips else None,
                   "runtime_busy_fraction": best["runtime_busy_fraction"],
                   "cpu_ms_per_instance": min((r["steady_cpu_ms_per_instance"] for r in runs
                                               if r.get("steady_cpu_ms_per_instance")), default=None),
                   "raw_cpu_ms_per_instance": min((r["raw_runtime_cpu_ms_per_instance"] for r in runs
                                                   if r.get("raw_runtime_cpu_ms_per_instance")), default=None),
                   "peak_rss_mb": best["peak_rss_mb"], "load_avg": best["load_avg"],
                   "runs": [{"steady_ips": r.get("steady_instances_per_second"), "whole_run_ips": r["instances_per_second"],
                             "raw_inprocess_ips": r.get("raw_runtime_instances_per_second"),
                             "cpu_ms_per_instance": r.get("steady_cpu_ms_per_instance"),
                             "raw_cpu_ms_per_instance": r.get("raw_runtime_cpu_ms_per_instance"), "load_avg": r["load_avg"]}
                            for r in runs],
                   "raw_runs_ips": [r["throughput_ips"] for r in raws]}
            self.results.append(row)
            log(f"  predict {label:20} {steady:8.1f} inst/s ({row['instances']} in {row['seconds']:.1f} s, best of "
                f"{len(runs)}, {row['errors']} errors) vs raw {fmt(raw_ips)} inst/s ({row['raw_source']}): "
                f"{fmt(row['ratio'], 2)}x; load {row['load_avg'][0]:.1f}")
            if row["errors"]:
                log(f"  predict {label}: {row['errors']} errors: see {self.logs / f'predict-{label}.log'}")

    def run(self):
        for name in self.args.scenarios:
            sc = self.scenarios.get(name)
            if sc is None:
                raise SystemExit(f"bench/out/scenarios.json has no scenario {name}: run bench/prepare.py "
                                 "(bench/run does)")
            log(f"scenario {name}: {sc['description']}")
            if name == "predict":
                self.predict(name, sc)
                (self.kept / "results.json").write_text(json.dumps(self.results, indent=1))
                continue
            self.raw(name, sc)
            self.oxserve(name, sc)
            if not self.args.no_peers:
                self.python_peer(name, sc, "fastapi")
                self.python_peer(name, sc, "kserve")
            (self.kept / "results.json").write_text(json.dumps(self.results, indent=1))


# ---- the report


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine():
    cpu = "?"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = "?"
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    versions = sh([str(VENV_PY), "-c",
                   "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in "
                   "['tensorflow-cpu','keras','fastapi','uvicorn','kserve','numpy']))"])
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
        "os": sh(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "rustc": sh(["rustc", "-V"]), "python": platform.python_version(), "packages": versions,
        "onednn_opts": ONEDNN_OPTS,
        "oxserve_commit": sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        # What the binaries are built from: sources that differ from the commit (new files included).
        "oxserve_uncommitted": sh(["git", "-C", str(ROOT), "status", "--porcelain",
                                   "--", "crates", "bench/loadgen", "Cargo.toml", "Cargo.lock"]) not in ("", "?"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def find(results, scenario, target, protocol=None, batching=False, c=None):
    for r in results:
        if (r["scenario"] == scenario and r["target"] == target and (protocol is None or r["protocol"] == protocol)
                and r["batching"] == batching and (c is None or r["concurrency"] == c)):
            return r
    return None


def ratio(a, b, key="throughput_rps"):
    if not a or not b or not b.get(key) or a.get(key) is None:
        return None
    return a[key] / b[key]


def render(results, info, command, scenarios, notes):
    lines = ["# oxserve benchmarks", "",
             "Generated by `bench/run` — do not edit by hand (hand-written analysis lives in "
             "`bench/analysis.md` and is included below).", "",
             "## Machine", "",
             f"- CPU: {info['cpu']}, {info['cores']} cores; memory {info['memory']}; {info['os']}, Linux {info['kernel']}",
             f"- {info['rustc']}; Python {info['python']}; {info['packages']}",
             f"- TensorFlow kernels for every target: TF_ENABLE_ONEDNN_OPTS={info.get('onednn_opts', '?')}",
             f"- oxserve commit {info['oxserve_commit']}"
             f"{' with uncommitted changes' if info.get('oxserve_uncommitted') else ''}; run {info['date']}",
             f"- {info.get('load', 'load average not recorded')}",
             "- Everything (servers, load generator, Python peers) shares these cores: numbers are "
             "for comparison on this machine, not absolute capacity.", "",
             "## Command", "", "```sh", command, "```", "",
             "Closed loop: each of *c* connections sends a request and waits for the answer before sending the "
             "next (bench/loadgen, single-threaded). Throughput in requests/s; latency in ms; peak RSS of the "
             "server process (for `raw`, of the load generator process running the model in-process); cold start "
             "is process start to the first answered prediction.", ""]
    for name in scenarios:
        sc = next((s for s in [scenarios[name]]), None)
        if name == "predict":
            lines += render_predict(results, sc)
            continue
        rows = sorted((r for r in results if r["scenario"] == name), key=table_order)
        lines += [f"## {name}", "", sc["description"] + "."]
        cycles = max((r.get("paired_cycles", 0) for r in rows if r["concurrency"] == 1), default=0)
        if cycles:
            lines += ["", f"The c=1 rows of the raw runtime and of oxserve REST and gRPC (batching off), those of "
                      f"the goal ratios, were measured paired: one request to each in turn, {cycles:,} times over "
                      "(`loadgen paired`; the order rotates every cycle, the raw runtime runs in the load "
                      "generator's process while oxserve idles). This VM's speed drifts by up to ±15% over seconds "
                      "to minutes; paired, every target meets the same moments of it. Throughput is each "
                      "target's requests over the time they took."]
        rounds = max((len(r.get("alternated_runs", [])) for r in rows if r["concurrency"] == 32), default=0)
        if rounds > 1:
            lines += ["", f"The c=32 rows of oxserve (batching off and on, REST and gRPC: those of the batching goal) "
                      f"were measured alternately, in short runs ({rounds} times over, both servers up); the table "
                      "shows the median run of each, and the goals compare them round by round (the median of the "
                      "rounds' ratios)."]
        lines += ["",
                  "| target | protocol | batching | c | req/s | p50 ms | p99 ms | peak RSS MB | cold start s | errors |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(
                f"| {r['target']} | {r['protocol']} | {'on' if r['batching'] else 'off'} | {r['concurrency']} | "
                f"{fmt(r['throughput_rps'])} | {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | "
                f"{fmt(r.get('peak_rss_mb'), 0)} | {fmt(r.get('cold_start_s'), 2)} | {r['errors']} |")
        lines.append("")
        # Ratios.
        rows = []
        for c in (1, 16):
            raw = find(results, name, "raw", c=c)
            for proto in ("REST", "gRPC"):
                ox = find(results, name, "oxserve", proto, c=c)
                rows.append((f"oxserve {proto} / raw runtime, throughput, c={c}", ratio(ox, raw)))
        for c in (1, 16):
            ox = find(results, name, "oxserve", "REST", c=c)
            for peer in ("fastapi", "kserve"):
                rows.append((f"oxserve REST / {peer}, throughput, c={c}", ratio(ox, find(results, name, peer, c=c))))
        for c in (1, 16):
            rest, grpc = find(results, name, "oxserve", "REST", c=c), find(results, name, "oxserve", "gRPC", c=c)
            rows.append((f"REST / gRPC, p50 latency, c={c}", ratio(rest, grpc, "p50_ms")))
            rows.append((f"REST / gRPC, throughput, c={c}", ratio(rest, grpc)))
        for c in (16, 32):
            for proto in ("REST", "gRPC"):
                on = find(results, name, "oxserve", proto, True, c)
                off = find(results, name, "oxserve", proto, False, c)
                rows.append((f"batching on / off, {proto}, throughput, c={c}", ratio(on, off)))
                rows.append((f"batching on / off, {proto}, p99 latency, c={c}", ratio(on, off, "p99_ms")))
        lines += ["| ratio | value |", "|---|---:|"]
        lines += [f"| {label} | {fmt(value, 2)}x |" for label, value in rows if value is not None]
        lines.append("")
    lines += ["## Goals (issues 5 and 6), as measured by this run", "", "| goal | measured | met |", "|---|---|---|"]
    for goal, measured, met in goals(results):
        lines.append(f"| {goal} | {measured} | {'yes' if met else ('**no**' if met is False else 'not measured')} |")
    lines.append("")
    if notes:
        lines += [notes.strip(), ""]
    return "\n".join(lines)


def table_order(row):
    """Raw runtime first, then oxserve (batching off before on, REST before gRPC), then the peers;
    by concurrency within each."""
    target = TARGET_ORDER.index(row["target"]) if row["target"] in TARGET_ORDER else len(TARGET_ORDER)
    return target, row["batching"], row["protocol"] != "REST", row["concurrency"]


def render_predict(results, sc):
    batch = sc["batch_size"]
    rows = [r for r in results if r["scenario"] == "predict" and r["target"] == "oxserve predict"]
    lines = ["## predict", "",
             f"`oxserve predict` over files (no server) against the raw runtime, both at batch {batch} "
             "(`--batch_size`'s default), one process each. Each input file is read several times over "
             "(symbolic links to it) to make about the measured duration of work. *predict* is the steady "
             "state: instances/s from the first answer written to the last (the warm-up before it, the "
             "pipeline filling up and TensorFlow optimising the graph on its first run, is left out as "
             "loadgen's warm-up is; the whole run's speed, model loading excluded, is shown too). *raw*: "
             f"`loadgen raw` (concurrency 1, a batch of {batch} from an .npy) for float inputs; for string "
             "(JPEG) inputs, which loadgen cannot feed, `oxserve predict --report`'s own measurement: one "
             "full batch of the same input run again and again in the same process after the pipeline (shown "
             "for every input as *raw in-process*). Raw runtime and pipeline are measured alternately, "
             "the best of each kept. *CPU ms/inst*: CPU time of the whole process (all threads, from "
             "/proc/self/stat) per instance, over the same steady part, for the pipeline and for the "
             "in-process raw runtime: less disturbed than throughput by whatever else runs on the machine, "
             "their ratio is the pipeline's own cost. Load average: 1 minute, when the pipeline started and "
             "ended.", ""]
    lines += [f"- `{r['format']}`: {r['description']}" for r in rows]
    lines += ["",
              "| input | instances | predict inst/s | whole run inst/s | raw inst/s | predict / raw | raw measured by "
              "| raw in-process inst/s | CPU ms/inst predict | CPU ms/inst raw | runtime busy | peak RSS MB | load avg "
              "| errors |",
              "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        load = "–" if not r.get("load_avg") else "/".join(f"{v:.1f}" for v in r["load_avg"])
        lines.append(
            f"| {r['format']} | {r['instances']:,} | {fmt(r['throughput_ips'])} | {fmt(r.get('whole_run_ips'))} | "
            f"{fmt(r['raw_ips'])} | {fmt(r['ratio'], 2)}x | {r['raw_source']} | {fmt(r['raw_inprocess_ips'])} | "
            f"{fmt(r.get('cpu_ms_per_instance'), 3)} | {fmt(r.get('raw_cpu_ms_per_instance'), 3)} | "
            f"{100 * r['runtime_busy_fraction']:.0f}% | {fmt(r.get('peak_rss_mb'), 0)} | {load} | {r['errors']} |")
    lines.append("")
    return lines


def goals(results):
    out = []

    def add(goal, a, b, key, threshold, better="higher"):
        # Rows measured alternately are compared round by round (both saw the same drift of the
        # VM) and judged by the median of those ratios; the others by their one measurement.
        rounds = paired_ratios(a, b, key)
        r = statistics.median(rounds) if rounds else ratio(a, b, key)
        if r is None:
            out.append((goal, "–", None))
            return
        measured = f"{r:.2f}x"
        if rounds:
            measured += f" (median of rounds {', '.join(f'{x:.2f}' for x in rounds)})"
        elif a and b and a.get("paired_cycles") and a.get("paired_cycles") == b.get("paired_cycles"):
            measured += f" (paired, {a['paired_cycles']:,} cycles)"
        out.append((goal, measured, r >= threshold if better == "higher" else r <= threshold))

    ox16 = find(results, "half_plus_two", "oxserve", "REST", c=16)
    add("half_plus_two, REST, c=16: ≥ 5x FastAPI's throughput", ox16,
        find(results, "half_plus_two", "fastapi", c=16), "throughput_rps", 5.0)
    add("half_plus_two, REST, c=16: ≥ 3x KServe's throughput", ox16,
        find(results, "half_plus_two", "kserve", c=16), "throughput_rps", 3.0)
    raw1 = find(results, "resnet50", "raw", c=1)
    add("ResNet50, c=1: oxserve REST throughput ≥ 95% of the raw runtime's",
        find(results, "resnet50", "oxserve", "REST", c=1), raw1, "throughput_rps", 0.95)
    add("ResNet50, c=1: oxserve gRPC throughput ≥ 95% of the raw runtime's",
        find(results, "resnet50", "oxserve", "gRPC", c=1), raw1, "throughput_rps", 0.95)
    add("Planet, one image, c=1: REST p50 latency ≤ 1.5x gRPC's",
        find(results, "planet", "oxserve", "REST", c=1), find(results, "planet", "oxserve", "gRPC", c=1),
        "p50_ms", 1.5, better="lower")
    for proto in ("REST", "gRPC"):
        on = find(results, "planet", "oxserve", proto, True, 32)
        off = find(results, "planet", "oxserve", proto, False, 32)
        add(f"Planet, c=32, {proto}: batching on ≥ 1.4x the throughput of batching off", on, off, "throughput_rps", 1.4)
        add(f"Planet, c=32, {proto}: batching on p99 ≤ 2x batching off's", on, off, "p99_ms", 2.0, better="lower")
    for r in results:
        if r["scenario"] == "predict" and r["target"] == "oxserve predict":
            goal = f"predict, {r['format']}, batch {r['batch_size']}: throughput ≥ 0.9x the raw runtime's"
            if r.get("ratio") is None:
                out.append((goal, "–", None))
            else:
                out.append((goal, f"{r['ratio']:.2f}x", r["ratio"] >= 0.9))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s per measurement instead of 8")
    parser.add_argument("--duration", type=float, help="seconds measured per run")
    parser.add_argument("--scenarios", nargs="+", default=SCENARIOS, choices=SCENARIOS)
    parser.add_argument("--no-peers", action="store_true", help="skip FastAPI and KServe")
    parser.add_argument("--predict-formats", nargs="+", metavar="FORMAT",
                        help="only these inputs of the predict scenario (planet-json, planet-tfrecord, jpeg-json, "
                             "jpeg-tfrecord, jpeg-tfrecord-gzip)")
    parser.add_argument("--predict-repeats", type=int,
                        help="measurements of each predict input and of the raw runtime, alternately; the best of "
                             "each is reported (default 2, 1 with --quick)")
    parser.add_argument("--c1-paired-secs", type=float,
                        help=f"seconds of the paired c=1 measurement of {', '.join(PAIRED_C1)} (raw runtime, oxserve "
                             "REST and gRPC in turn; default 120, 3x --duration with --quick)")
    parser.add_argument("--c32-rounds", type=int,
                        help=f"rounds of the alternated c=32 measurements of {', '.join(ALTERNATED_C32)} (oxserve "
                             "REST and gRPC, batching off and on; default 15, 3 with --quick); the median run of each "
                             "is reported")
    parser.add_argument("--c32-round-secs", type=float,
                        help="seconds measured per c=32 run (default 3, --duration with --quick)")
    parser.add_argument("--output", help="the report (default: BENCHMARKS.md; bench/out/partial/BENCHMARKS.md for "
                                         "a run of some scenarios or inputs only, without peers, or --quick)")
    parser.add_argument("--command", default="bench/run", help="the command line recorded in the report")
    parser.add_argument("--render-only", action="store_true", help="rewrite the report from bench/out/results.json")
    args = parser.parse_args()
    if args.render_only and partial_run(args):
        parser.error("--render-only rewrites the full run's report: give it no options that choose a subset")
    bench = Bench(args)
    output = args.output or str(bench.kept / "BENCHMARKS.md" if bench.partial else ROOT / "BENCHMARKS.md")
    load_path = bench.kept / "load.json"
    if not args.render_only:
        # The machine and commit as they were when measured: --render-only rewrites the report later.
        load = {"before": os.getloadavg(), "info": machine()}
        started = time.monotonic()
        try:
            bench.run()
        finally:
            (bench.kept / "results.json").write_text(json.dumps(bench.results, indent=1))
        log(f"done in {time.monotonic() - started:.0f}s")
        load["after"] = os.getloadavg()
        load["seconds"] = time.monotonic() - started
        load_path.write_text(json.dumps(load))
        results = bench.results
    else:
        results = json.loads((bench.kept / "results.json").read_text())
    notes_path = BENCH / "analysis.md"
    notes = notes_path.read_text() if notes_path.exists() else ""
    scenarios = {name: bench.scenarios[name] for name in SCENARIOS if any(r["scenario"] == name for r in results)}
    info = machine()
    if load_path.exists():
        load = json.loads(load_path.read_text())
        info = load.get("info", info)
        info["load"] = (f"load average (1/5/15 min) {'/'.join(f'{v:.1f}' for v in load['before'])} before the run, "
                        f"{'/'.join(f'{v:.1f}' for v in load['after'])} after; measurements took {load['seconds']:.0f} s")
    pathlib.Path(output).write_text(render(results, info, args.command, scenarios, notes))
    log(f"wrote {output}")


if __name__ == "__main__":
    main()
