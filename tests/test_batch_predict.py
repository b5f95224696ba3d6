"""`oxserve predict`: batch prediction over JSON-lines, TFRecord and gzipped TFRecord files (written
with TensorFlow's own TFRecordWriter), compared line by line with the REST answers of a running
oxserve for the same instances; bad lines, sharding over workers, resuming."""

import base64
import gzip
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

from conftest import BIN, DEMO, DTYPES_MODEL, HALF_PLUS_THREE, HALF_PLUS_TWO, expected_outputs, run_cli, wait_for

PLANET = DEMO / "planet"
JPEG = DEMO / "jpeg_classifier"
JPEG_FILES = sorted((DEMO / "inputs").glob("*.jpg"))
RESULTS = "prediction.results-{:05d}-of-{:05d}"
ERRORS = "prediction.errors_stats-{:05d}-of-{:05d}"


def tf():
    """TensorFlow, imported only by the tests that write TFRecord files."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    import tensorflow

    return tensorflow


def predict(*args, env=None, timeout=300):
    out = run_cli("predict", *args, env=env, timeout=timeout)
    return out


def read_lines(path):
    text = pathlib.Path(path).read_text()
    return [json.loads(line) for line in text.splitlines()]


def results(out_dir, shard=0, of=1):
    return read_lines(pathlib.Path(out_dir) / RESULTS.format(shard, of))


def errors(out_dir, shard=0, of=1):
    return read_lines(pathlib.Path(out_dir) / ERRORS.format(shard, of))


def rest_rows(server, model, instances, batch_size):
    """The REST answer for `instances`, sent in the batches `oxserve predict` forms."""
    rows = []
    for i in range(0, len(instances), batch_size):
        resp = server.post(f"/v1/models/{model}:predict", {"instances": instances[i : i + batch_size]})
        assert resp.status_code == 200, resp.text
        rows.extend(resp.json()["predictions"])
    return rows


@pytest.fixture(scope="module")
def expected():
    return expected_outputs()["models"]


@pytest.fixture(scope="module")
def planet(serve):
    return serve("planet", PLANET)


@pytest.fixture(scope="module")
def jpeg(serve):
    return serve("jpeg_classifier", JPEG)


@pytest.fixture(scope="module")
def hpt(serve):
    return serve("half_plus_two", HALF_PLUS_TWO)


def test_json_lines_with_keys_bad_lines_and_gzip(tmp_path, planet, expected):
    images = expected["planet"]["inputs"]["image"]["value"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    # a.jsonl: bare instances, keyed named instances, bad lines of every kind, a blank line.
    lines_a, good, keys = [], [], []
    for i in range(9):
        image = images[i % 3]
        if i % 3 == 1:
            lines_a.append(json.dumps({"image": image, "key": f"k{i}"}))
            keys.append(f"k{i}")
        else:
            lines_a.append(json.dumps(image))
            keys.append(None)
        good.append(image)
        if i == 2:
            lines_a.append("this is not JSON")  # line 4
        if i == 4:
            lines_a.append("[[1, 2, 3]]")  # wrong shape, line 7
            lines_a.append("")  # blank: skipped, not an error
        if i == 6:
            lines_a.append(json.dumps({"key": 99}))  # a key and no inputs, line 11
    (inputs / "a.jsonl").write_text("\n".join(lines_a) + "\n")
    # b.jsonl.gz: gzipped by extension, no trailing newline, one more keyed instance.
    with gzip.open(inputs / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps(images[2]) + "\n" + json.dumps({"key": [1, {"x": 2}], "image": images[0]}))
    good += [images[2], images[0]]
    keys += [None, [1, {"x": 2}]]

    out = tmp_path / "out"
    res = predict("--model_dir", PLANET, "--input", f"{inputs}/*.jsonl*", "--output_dir", out, "--batch_size", 4)
    assert res.returncode == 0, res.stderr
    got = results(out)
    want = rest_rows(planet, "planet", good, 4)
    assert len(got) == len(want) == 11
    for line, row, key in zip(got, want, keys):
        if key is None:
            assert line == row
        else:
            assert list(line)[0] == "key" and line.pop("key") == key
            assert line == row
    errs = errors(out)
    assert [(e["file"], e["line"]) for e in errs] == [
        (str(inputs / "a.jsonl"), 4),
        (str(inputs / "a.jsonl"), 7),
        (str(inputs / "a.jsonl"), 11),
    ]
    assert "JSON Parse error" in errs[0]["error"]
    assert "shape [1,3]" in errs[1]["error"] and "[128,128,3]" in errs[1]["error"]
    assert errs[2]["key"] == 99 and "no inputs" in errs[2]["error"]
    assert "done: 14 instances (11 predictions, 3 errors)" in res.stderr


def write_jpeg_records(path, records, options=None):
    t = tf()
    with t.io.TFRecordWriter(str(path), options=options) as writer:
        for record in records:
            writer.write(record)


def test_tfrecord_and_gzipped_tfrecord_of_jpegs(tmp_path, jpeg):
    jpegs = [p.read_bytes() for p in JPEG_FILES]
    records = [jpegs[i % 3] for i in range(10)]
    records.insert(5, b"this is not a JPEG")  # record 5 fails, alone: its batch is retried
    write_jpeg_records(tmp_path / "plain.tfrecord", records)
    write_jpeg_records(tmp_path / "zipped.tfrecord.gz", records[:4], options="GZIP")
    # The same gzipped data without a telling name, read with --data_format tf-record-gzip.
    (tmp_path / "zipped.bin").write_bytes((tmp_path / "zipped.tfrecord.gz").read_bytes())

    def b64(records):
        return [{"b64": base64.b64encode(r).decode()} for r in records]

    out = tmp_path / "out"
    res = predict(
        "--model_dir", JPEG, "--input", tmp_path / "plain.tfrecord",
        "--input", tmp_path / "zipped.tfrecord.gz", "--output_dir", out, "--batch_size", 4,
    )
    assert res.returncode == 0, res.stderr
    assert "1 batch(es) failed as a whole" in res.stderr
    good = [r for r in records if r != b"this is not a JPEG"] + records[:4]
    got = results(out)
    assert len(got) == 14
    # Batches run across file boundaries, and the failed batch was run again one instance at a
    # time: compare with one REST batch, classes exactly and scores to 1e-6.
    for line, row in zip(got, rest_rows(jpeg, "jpeg_classifier", b64(good), 14)):
        assert line["classes"] == row["classes"]
        assert max(abs(a - b) for a, b in zip(line["scores"], row["scores"])) <= 1e-6
    (err,) = errors(out)
    assert err["file"] == str(tmp_path / "plain.tfrecord") and err["record"] == 5
    assert "INVALID_ARGUMENT" in err["error"]

    out2 = tmp_path / "out2"
    res = predict(
        "--model_dir", JPEG, "--input", tmp_path / "zipped.bin", "--data_format", "tf-record-gzip",
        "--output_dir", out2, "--batch_size", 4,
    )
    assert res.returncode == 0, res.stderr
    assert results(out2) == rest_rows(jpeg, "jpeg_classifier", b64(records[:4]), 4)


def test_tfrecord_of_examples_feeds_inputs_by_feature_name(tmp_path, planet, expected):
    t = tf()
    import numpy as np

    images = np.asarray(expected["planet"]["inputs"]["image"]["value"], dtype=np.float32)
    path = tmp_path / "examples.tfrecord"
    with t.io.TFRecordWriter(str(path)) as writer:
        for i in range(7):
            feature = {"image": t.train.Feature(float_list=t.train.FloatList(value=images[i % 3].ravel()))}
            if i % 2 == 0:
                feature["key"] = t.train.Feature(bytes_list=t.train.BytesList(value=[f"img-{i}".encode()]))
            if i == 3:
                feature = {"pixels": feature["image"]}  # misnamed: an error for this record only
            writer.write(t.train.Example(features=t.train.Features(feature=feature)).SerializeToString())
    out = tmp_path / "out"
    res = predict("--model_dir", PLANET, "--input", path, "--output_dir", out, "--batch_size", 3)
    assert res.returncode == 0, res.stderr
    assert "tf.Example with a feature per input" in res.stderr
    got = results(out)
    good = [images[i % 3].tolist() for i in range(7) if i != 3]
    want = rest_rows(planet, "planet", good, 3)
    assert len(got) == 6
    for line, row, i in zip(got, want, [0, 1, 2, 4, 5, 6]):
        if i % 2 == 0:
            assert line.pop("key") == f"img-{i}"
        assert line == row
    (err,) = errors(out)
    assert err["record"] == 3 and 'no feature "image"' in err["error"]


def test_float16_and_bfloat16_inputs_from_examples_and_json_lines(tmp_path):
    """Keras mixed-precision models take float16 inputs, which tf.io.parse_example cannot make:
    float_list and int64_list features are rounded to them as tf.cast rounds (to nearest, ties to
    even). A finite value beyond the type's range fails its record alone. JSON lines for such
    inputs are batched too (their rows went missing)."""
    t = tf()
    import numpy as np

    h, b = 2.0**-11, 2.0**-8  # half an ulp of 1 in float16 and in bfloat16
    floats = np.float32([1 + h, 1 + 3 * h, 1 + h + 2**-23, 1 + b, 1 + 3 * b, 65519, -1e-8, 0.1, -3.14159])
    ints = [-2049, 65504, 257, 7]
    feature = {
        "floats": t.train.Feature(float_list=t.train.FloatList(value=floats)),
        "ints": t.train.Feature(int64_list=t.train.Int64List(value=ints)),
        "too_big_for_half": t.train.Feature(float_list=t.train.FloatList(value=[1.0, 65520.0])),
        "too_big": t.train.Feature(float_list=t.train.FloatList(value=[np.finfo(np.float32).max])),
    }
    path = tmp_path / "examples.tfrecord"
    with t.io.TFRecordWriter(str(path)) as writer:
        for name, f in feature.items():
            key = t.train.Feature(bytes_list=t.train.BytesList(value=[name.encode()]))
            writer.write(t.train.Example(features=t.train.Features(feature={"x": f, "key": key})).SerializeToString())
    for dtype in (t.float16, t.bfloat16):
        out = tmp_path / dtype.name
        res = predict("--model_dir", DTYPES_MODEL, "--signature_def", f"identity_{dtype.name}", "--input", path, "--output_dir", out)
        assert res.returncode == 0, res.stderr
        got = {line.pop("key"): line["y"] for line in results(out)}
        for name, values in (("floats", floats), ("ints", np.float32(ints))):
            want = t.cast(values, dtype).numpy().astype(np.float32)
            assert np.array_equal(np.float32(got[name]), want), (dtype.name, name, got[name], want)
        errs = {e["key"]: e["error"] for e in errors(out)}
        proto, largest = ("DT_HALF", "65504.0") if dtype == t.float16 else ("DT_BFLOAT16", "3.3895314e38")
        assert errs.pop("too_big") == (
            f"feature x: 3.4028235e38 is out of range for input x of type {proto} (its largest finite value is {largest})"
        )
        if dtype == t.float16:
            assert errs.pop("too_big_for_half").startswith("feature x: 65520.0 is out of range"), errs
            assert "too_big_for_half" not in got
        else:
            assert got["too_big_for_half"] == [1.0, 65536.0]
        assert errs == {}
        (tmp_path / "lines.jsonl").write_text("[0.5, 256.0]\n[-2, 1.5]\n")
        out = tmp_path / f"{dtype.name}-lines"
        res = predict("--model_dir", DTYPES_MODEL, "--signature_def", f"identity_{dtype.name}", "--input", tmp_path / "lines.jsonl", "--output_dir", out)
        assert res.returncode == 0, res.stderr
        assert (results(out), errors(out)) == ([[0.5, 256.0], [-2.0, 1.5]], [])


def test_truncated_and_corrupt_tfrecord_files(tmp_path, hpt):
    t = tf()
    ex = lambda v: t.train.Example(  # noqa: E731
        features=t.train.Features(feature={"x": t.train.Feature(float_list=t.train.FloatList(value=[v]))})
    ).SerializeToString()
    write_jpeg_records(tmp_path / "full.tfrecord", [ex(float(i)) for i in range(5)])
    data = (tmp_path / "full.tfrecord").read_bytes()
    (tmp_path / "truncated.tfrecord").write_bytes(data[:-7])
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0x40
    (tmp_path / "corrupt.tfrecord").write_bytes(bytes(corrupt))
    out = tmp_path / "out"
    res = predict(
        "--model_dir", HALF_PLUS_TWO, "--input", tmp_path / "truncated.tfrecord",
        "--input", tmp_path / "corrupt.tfrecord", "--output_dir", out,
    )
    assert res.returncode == 0, res.stderr
    got = results(out)
    # half_plus_two's serving_default takes x [-1, 1]: the float feature x, y = x / 2 + 2.
    assert got[:4] == [[2.0], [2.5], [3.0], [3.5]]
    errs = errors(out)
    assert errs[0]["file"].endswith("truncated.tfrecord") and errs[0]["record"] == 4
    assert "truncated" in errs[0]["error"] and "rest of the file is skipped" in errs[0]["error"]
    assert errs[1]["file"].endswith("corrupt.tfrecord") and "corrupted record" in errs[1]["error"]
    assert len(got) == 4 + errs[1]["record"]


def hpt_inputs(tmp_path, count=100):
    """Two JSON-lines files of keyed half_plus_two instances: key i, x = i."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, keys in (("a.jsonl", range(0, 60)), ("b.jsonl", range(60, count))):
        (inputs / name).write_text("".join(json.dumps({"key": i, "x": [float(i)]}) + "\n" for i in keys))
    return inputs


def test_three_workers_predict_every_instance_exactly_once(tmp_path):
    inputs = hpt_inputs(tmp_path)
    out = tmp_path / "out"
    common = ["predict", "--model_dir", HALF_PLUS_TWO, "--input", f"{inputs}/*.jsonl", "--output_dir", out]
    base_env = {k: v for k, v in os.environ.items() if k not in ("JOB_COMPLETION_INDEX", "OXSERVE_NUM_WORKERS")}
    # Worker 0 by flag; workers 1 and 2 as pods of a Kubernetes Indexed Job.
    workers = [
        (common + ["--shard", "0/3"], base_env),
        (common + ["--num_workers", "3"], {**base_env, "JOB_COMPLETION_INDEX": "1"}),
        (common, {**base_env, "JOB_COMPLETION_INDEX": "2", "OXSERVE_NUM_WORKERS": "3"}),
    ]
    procs = [
        subprocess.Popen([str(BIN), *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args, env in workers
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    seen = []
    for shard in range(3):
        lines = results(out, shard, 3)
        assert errors(out, shard, 3) == []
        for line in lines:
            assert line["y"] == [line["key"] / 2 + 2]
        seen += [line["key"] for line in lines]
        # Input order within a shard.
        assert [line["key"] for line in lines] == sorted(line["key"] for line in lines)
    assert sorted(seen) == list(range(100))
    # Balanced: 100 instances over 3 shards.
    assert sorted(len(results(out, s, 3)) for s in range(3)) == [33, 33, 34]


def test_worker_index_errors(tmp_path):
    inputs = hpt_inputs(tmp_path)
    env = {**os.environ, "JOB_COMPLETION_INDEX": "1"}
    env.pop("OXSERVE_NUM_WORKERS", None)
    common = ["--model_dir", HALF_PLUS_TWO, "--input", f"{inputs}/*.jsonl", "--output_dir", tmp_path / "o"]
    res = predict(*common, env=env)
    assert res.returncode != 0 and "--num_workers" in res.stderr
    for env_index in ({}, {"JOB_COMPLETION_INDEX": "0"}):
        res = predict(*common, "--num_workers", "0", env={**env, **env_index} if env_index else
                      {k: v for k, v in env.items() if k != "JOB_COMPLETION_INDEX"})
        assert res.returncode != 0 and "--num_workers" in res.stderr, res.stderr
    for bad in ("3/3", "x/2", "1"):
        res = predict(*common, "--shard", bad)
        assert res.returncode != 0 and "--shard" in res.stderr
    res = predict(*common, "--shard", "0/3", "--num_shards", "2")
    assert res.returncode != 0 and "--num_shards" in res.stderr
    res = predict("--model_dir", HALF_PLUS_TWO, "--input", f"{tmp_path}/nothing-*.jsonl", "--output_dir", tmp_path / "o")
    assert res.returncode != 0 and "no file matches" in res.stderr
    res = predict("--model_dir", HALF_PLUS_TWO, "--input", tmp_path, "--output_dir", tmp_path / "o")
    assert res.returncode != 0 and "is a directory" in res.stderr, res.stderr


def test_a_failing_writer_ends_the_job_with_its_error(tmp_path):
    """A shard that cannot be written (here its results path is a directory) ends the whole job
    with the error while every stage upstream still has work queued: no thread is left waiting
    on a full channel."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jsonl").write_text("".join(json.dumps({"x": [float(i)]}) + "\n" for i in range(9000)))
    out = tmp_path / "out"
    (out / RESULTS.format(1, 3) / "in-the-way").mkdir(parents=True)
    res = predict(
        "--model_dir", HALF_PLUS_TWO, "--input", f"{inputs}/a.jsonl", "--output_dir", out,
        "--num_shards", "3", "--batch_size", "4", timeout=60,
    )
    assert res.returncode != 0
    assert "renaming" in res.stderr and RESULTS.format(1, 3) in res.stderr, res.stderr
    assert len(results(out, 0, 3)) == 3000


def test_resume_skips_complete_shards(tmp_path):
    inputs = hpt_inputs(tmp_path)
    out = tmp_path / "out"
    args = ["--model_dir", HALF_PLUS_TWO, "--input", f"{inputs}/*.jsonl", "--output_dir", out, "--num_shards", "3"]
    res = predict(*args)
    assert res.returncode == 0, res.stderr
    first = {s: (out / RESULTS.format(s, 3)).read_text() for s in range(3)}
    mtimes = {s: (out / RESULTS.format(s, 3)).stat().st_mtime_ns for s in range(3)}
    (out / RESULTS.format(1, 3)).unlink()
    res = predict(*args)
    assert res.returncode == 0, res.stderr
    assert "shard 0 of 3 is already complete" in res.stderr
    assert "shard 2 of 3 is already complete" in res.stderr
    assert "shard 1 of 3 complete" in res.stderr
    assert {s: (out / RESULTS.format(s, 3)).read_text() for s in range(3)} == first
    assert (out / RESULTS.format(0, 3)).stat().st_mtime_ns == mtimes[0]
    # Everything complete: nothing to do, the model is not even loaded.
    res = predict(*args)
    assert res.returncode == 0 and "nothing to do" in res.stderr
    assert "\x1b[" not in res.stderr  # logs to a pipe are plain text, without colour codes
    # Another model (or another version of it) is another job: its answers are not mixed in.
    res = predict(*[HALF_PLUS_THREE if a == HALF_PLUS_TWO else a for a in args])
    assert res.returncode != 0 and "different job" in res.stderr and "another model" in res.stderr
    # Another job into the same directory is refused, unless asked for.
    (inputs / "a.jsonl").write_text(json.dumps({"x": [1.0]}) + "\n")
    res = predict(*args)
    assert res.returncode != 0 and "different job" in res.stderr and "--overwrite" in res.stderr
    res = predict(*args, "--overwrite")
    assert res.returncode == 0, res.stderr
    assert sum(len(results(out, s, 3)) for s in range(3)) == 41


def test_resume_after_a_killed_run(tmp_path, expected):
    """Kill the worker once a shard is complete; the rerun finishes the job; nothing is lost or
    predicted twice, and no partial shard is ever visible under its final name."""
    t = tf()
    import numpy as np

    images = np.asarray(expected["planet"]["inputs"]["image"]["value"], dtype=np.float32)
    path = tmp_path / "images.tfrecord"
    with t.io.TFRecordWriter(str(path)) as writer:
        for i in range(600):
            feature = {
                "image": t.train.Feature(float_list=t.train.FloatList(value=images[i % 3].ravel())),
                "key": t.train.Feature(int64_list=t.train.Int64List(value=[i])),
            }
            writer.write(t.train.Example(features=t.train.Features(feature=feature)).SerializeToString())
    out = tmp_path / "out"
    args = [
        "predict", "--model_dir", PLANET, "--input", path, "--output_dir", out,
        "--num_shards", "4", "--batch_size", "2",
    ]
    proc = subprocess.Popen([str(BIN), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    markers = out / ".oxserve-predict"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if markers.is_dir() and any(p.suffix == ".done" for p in markers.iterdir()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    killed = proc.returncode == -signal.SIGKILL
    visible = sorted(p.name for p in out.glob("prediction.results-*"))
    done = sorted(p.name for p in markers.glob("*.done"))
    # A results file is only ever visible complete, with its marker.
    assert len(visible) == len(done)
    res = run_cli(*args, timeout=300)
    assert res.returncode == 0, res.stderr
    if killed:
        assert "already complete" in res.stderr
    keys = []
    for s in range(4):
        lines = results(out, s, 4)
        keys += [line["key"] for line in lines]
    assert sorted(keys) == list(range(600))
    # No temporary file is left behind in the output directory itself.
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [RESULTS.format(s, 4) for s in range(4)] + [ERRORS.format(s, 4) for s in range(4)]
    )


def test_a_second_run_into_a_directory_being_written_is_refused(tmp_path):
    """While a run writes a shard, the same job started again into the same directory fails at
    once with a clear error (it used to remove the first run's temporary files as crash leftovers,
    and one of the two failed at its rename); the first run goes on undisturbed."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jsonl").write_text("".join(json.dumps({"key": i, "x": [float(i)]}) + "\n" for i in range(20000)))
    out = tmp_path / "out"
    args = ["predict", "--model_dir", HALF_PLUS_TWO, "--input", inputs / "a.jsonl", "--output_dir", out, "--batch_size", "1"]
    first = subprocess.Popen([str(BIN), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = out / ".oxserve-predict"
    try:
        # Once its temporary results file is there, the first run is writing; stopped there, it
        # cannot finish while the second one runs.
        wait_for(
            "the first run's temporary file",
            lambda: first.poll() is not None
            or (state.is_dir() and any(p.name.startswith(RESULTS.format(0, 1) + ".tmp-") for p in state.iterdir())),
            timeout=120,
        )
        assert first.poll() is None, first.stderr.read()
        first.send_signal(signal.SIGSTOP)
        second = run_cli(*args, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode != 0
    assert f"{out}: another oxserve predict is writing shard 0 of 1 there" in second.stderr, second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert [line["key"] for line in results(out)] == list(range(20000))
    # Once it is done, a rerun finds the shard complete, as before.
    res = run_cli(*args)
    assert res.returncode == 0 and "nothing to do" in res.stderr, res.stderr


def test_report_measures_the_pipeline_against_the_runtime(tmp_path):
    inputs = hpt_inputs(tmp_path, count=80)
    res = predict(
        "--model_dir", HALF_PLUS_TWO, "--input", f"{inputs}/*.jsonl", "--output_dir", tmp_path / "out",
        "--batch_size", "8", "--report",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["instances"] == report["predictions"] == 80
    assert report["batches"] == 10 and report["batch_size"] == 8
    assert report["instances_per_second"] > 0 and report["raw_runtime_instances_per_second"] > 0
    assert "instances/s" in res.stderr


def test_model_dir_is_a_version_dir_or_a_base_path_served_at_its_highest_version(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    # Numerically highest, not by name: "00000007" sorts before "3".
    (base / "00000007").symlink_to(HALF_PLUS_TWO / "00000123")
    (base / "3").symlink_to(HALF_PLUS_THREE / "00000123")
    (base / "latest").mkdir()
    (tmp_path / "x.jsonl").write_text("[1.0]\n[3.0]\n")
    for model_dir, want in ((base, [[2.5], [3.5]]), (base / "3", [[3.5], [4.5]])):
        out = tmp_path / f"out-{model_dir.name}"
        res = predict("--model_dir", model_dir, "--input", tmp_path / "x.jsonl", "--output_dir", out)
        assert res.returncode == 0, res.stderr
        assert results(out) == want


def test_signature_tag_set_data_format_and_key_field(tmp_path):
    t = tf()
    records = []
    for v in (1.0, 3.0):
        feature = {
            "x": t.train.Feature(float_list=t.train.FloatList(value=[v])),
            "key": t.train.Feature(int64_list=t.train.Int64List(value=[int(v)])),
        }
        records.append(t.train.Example(features=t.train.Features(feature=feature)).SerializeToString())
    write_jpeg_records(tmp_path / "examples.bin", records)
    # A single string input takes each record as is: tf.Examples for a regress signature.
    common = ["--model_dir", HALF_PLUS_TWO, "--input", tmp_path / "examples.bin", "--data_format", "TF_RECORD"]
    res = predict(*common, "--signature_def", "regress_x_to_y", "--output_dir", tmp_path / "regress")
    assert res.returncode == 0, res.stderr
    assert results(tmp_path / "regress") == [{"key": 1, "outputs": [2.5]}, {"key": 3, "outputs": [3.5]}]
    res = predict(*common, "--tag_set", "serve,gpu", "--output_dir", tmp_path / "gpu")
    assert res.returncode != 0 and "gpu" in res.stderr
    # Cloud ML Engine's TEXT is JSON lines; --key_field names the key member, "" turns keys off.
    (tmp_path / "keyed.txt").write_text('{"id": "a", "x": [1.0]}\n{"id": 7, "key": 3, "x": [3.0]}\n')
    common = ["--model_dir", HALF_PLUS_TWO, "--input", tmp_path / "keyed.txt", "--data_format", "TEXT"]
    res = predict(*common, "--key_field", "id", "--output_dir", tmp_path / "id")
    assert res.returncode == 0, res.stderr
    assert results(tmp_path / "id") == [{"id": "a", "y": [2.5]}]
    (err,) = errors(tmp_path / "id")
    assert err["line"] == 2 and err["key"] == 7 and "does not have named input: key" in err["error"]
    res = predict(*common, "--key_field", "", "--output_dir", tmp_path / "nokey")
    assert res.returncode == 0, res.stderr
    assert results(tmp_path / "nokey") == []
    assert [("key" in e, "named input: id" in e["error"]) for e in errors(tmp_path / "nokey")] == [(False, True)] * 2
    # .ndjson is JSON lines by its name.
    (tmp_path / "plain.ndjson").write_text("[5.0]\n")
    res = predict("--model_dir", HALF_PLUS_TWO, "--input", tmp_path / "plain.ndjson", "--output_dir", tmp_path / "nd")
    assert res.returncode == 0, res.stderr
    assert results(tmp_path / "nd") == [[4.5]]


def test_keys_are_copied_as_written(tmp_path):
    t = tf()
    lines = ['{"key": 12345678901234567890123, "x": [1.0]}', '{"key": -0, "x": [1.0]}',
             '{"key": 1E2, "x": [1.0]}', '{"key": {"a": [1, 2.50]}, "x": [1.0]}', '{"key": "\\u00e9", "x": [1.0]}']
    (tmp_path / "keys.jsonl").write_text("\n".join(lines) + "\n")
    res = predict("--model_dir", HALF_PLUS_TWO, "--input", tmp_path / "keys.jsonl", "--output_dir", tmp_path / "o")
    assert res.returncode == 0, res.stderr
    written = (tmp_path / "o" / RESULTS.format(0, 1)).read_text().splitlines()
    assert [line.split(',"y"')[0] for line in written] == [
        '{"key":12345678901234567890123', '{"key":-0', '{"key":1E2', '{"key":{"a": [1, 2.50]}', '{"key":"\\u00e9"']
    # A float feature's key as REST writes a float32: its shortest digits.
    records = []
    for key in ([0.1], [float("nan")], [0.5, 2.0]):
        feature = {"x": t.train.Feature(float_list=t.train.FloatList(value=[1.0])),
                   "key": t.train.Feature(float_list=t.train.FloatList(value=key))}
        records.append(t.train.Example(features=t.train.Features(feature=feature)).SerializeToString())
    write_jpeg_records(tmp_path / "keys.tfrecord", records)
    res = predict("--model_dir", HALF_PLUS_TWO, "--input", tmp_path / "keys.tfrecord", "--output_dir", tmp_path / "t")
    assert res.returncode == 0, res.stderr
    written = (tmp_path / "t" / RESULTS.format(0, 1)).read_text().splitlines()
    assert [line.split(',"y"')[0] for line in written] == ['{"key":0.1', '{"key":NaN', '{"key":[0.5, 2.0]']


def test_a_file_is_read_once_under_any_spelling_and_named_literally(tmp_path):
    (tmp_path / "a.jsonl").write_text("[1.0]\n[2.0]\n")
    (tmp_path / "data[1].jsonl").write_text("[3.0]\n[4.0]\n[5.0]\n")
    (tmp_path / "data1.jsonl").write_text("[9.0]\n")
    res = predict("--model_dir", HALF_PLUS_TWO, "--input", tmp_path / "a.jsonl", "--input", f"{tmp_path}/./a.jsonl",
                  "--input", f"{tmp_path}/*.jsonl", "--input", tmp_path / "data[1].jsonl", "--output_dir", tmp_path / "o")
    assert res.returncode == 0, res.stderr
    # a.jsonl once, then the glob's other matches by name: data1.jsonl and data[1].jsonl.
    assert results(tmp_path / "o") == [[2.5], [3.0], [6.5], [3.5], [4.0], [4.5]]
    res = predict("--model_dir", HALF_PLUS_TWO, "--input", tmp_path / "data[1].jsonl", "--output_dir", tmp_path / "d")
    assert res.returncode == 0, res.stderr
    assert results(tmp_path / "d") == [[3.5], [4.0], [4.5]]
    # Nothing is created for a job that cannot start.
    res = predict("--model_dir", tmp_path / "nothing", "--input", tmp_path / "a.jsonl", "--output_dir", tmp_path / "x")
    assert res.returncode != 0
    assert not (tmp_path / "x").exists()


def test_a_byte_order_mark_starting_a_file_is_skipped(tmp_path):
    """Editors on Windows start UTF-8 files with a byte order mark: it is no part of the first
    line. Elsewhere it is the line's own (bad JSON), and line numbers count as before."""
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"key": 1, "x": [1.0]}\r\n' + bom + b'{"key": 2, "x": [3.0]}\r\n')
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(bom + b'{"key": 3, "x": [5.0]}\n')
    out = tmp_path / "out"
    res = predict(
        "--model_dir", HALF_PLUS_TWO, "--input", tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz",
        "--data_format", "json", "--output_dir", out,
    )
    assert res.returncode == 0, res.stderr
    assert results(out) == [{"key": 1, "y": [2.5]}, {"key": 3, "y": [4.5]}]
    (err,) = errors(out)
    assert err["file"] == str(tmp_path / "a.jsonl") and err["line"] == 2, err


def test_instances_of_different_shapes_are_not_batched_together(tmp_path):
    t = tf()
    model = t.Module()
    model.f = t.function(
        lambda x: {"sum": t.reduce_sum(x, axis=1)}, input_signature=[t.TensorSpec([None, None], t.float32, name="x")]
    )
    t.saved_model.save(model, str(tmp_path / "sum" / "1"), signatures={"serving_default": model.f})
    (tmp_path / "rows.jsonl").write_text("[1, 2]\n[4, 5]\n[3]\n[6, 7, 8]\n[9, 10]\n")
    res = predict(
        "--model_dir", tmp_path / "sum", "--input", tmp_path / "rows.jsonl", "--output_dir", tmp_path / "out",
        "--batch_size", "4", "--report",
    )
    assert res.returncode == 0, res.stderr
    assert results(tmp_path / "out") == [3.0, 9.0, 3.0, 21.0, 19.0]
    # [1, 2] and [4, 5] share a batch; each change of shape starts a new one.
    assert json.loads(res.stdout)["batches"] == 4


def test_instance_k_of_file_f_goes_to_shard_f_plus_k_and_worker_i_owns_every_nth_shard(tmp_path):
    inputs = hpt_inputs(tmp_path)  # a.jsonl: keys 0..59 (file 0); b.jsonl: keys 60..99 (file 1)
    out = tmp_path / "out"
    res = predict(
        "--model_dir", HALF_PLUS_TWO, "--input", f"{inputs}/*.jsonl", "--output_dir", out,
        "--num_shards", "4", "--shard", "1/2",
    )
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.glob("prediction.results-*")) == [RESULTS.format(1, 4), RESULTS.format(3, 4)]
    for shard in (1, 3):
        keys = [line["key"] for line in results(out, shard, 4)]
        assert keys == [key for key in range(100) if (key if key < 60 else 1 + key - 60) % 4 == shard]


def test_a_rerun_with_another_shard_count_is_another_job(tmp_path):
    inputs = hpt_inputs(tmp_path)
    out = tmp_path / "out"
    args = ["--model_dir", HALF_PLUS_TWO, "--input", f"{inputs}/*.jsonl", "--output_dir", out]
    res = predict(*args, "--num_shards", "3")
    assert res.returncode == 0, res.stderr
    res = predict(*args, "--num_shards", "2")
    assert res.returncode != 0 and "different job" in res.stderr and "--overwrite" in res.stderr
    # The shards of other workers count too.
    res = predict(*args, "--num_shards", "3", "--shard", "1/3", "--key_field", "id")
    assert res.returncode != 0 and "different job" in res.stderr
    res = predict(*args, "--num_shards", "2", "--overwrite")
    assert res.returncode == 0, res.stderr
    # Only this job's outputs are left: nothing to mistake for a part of it.
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [RESULTS.format(s, 2) for s in range(2)] + [ERRORS.format(s, 2) for s in range(2)]
    )
    assert sorted(line["key"] for s in range(2) for line in results(out, s, 2)) == list(range(100))


def test_default_batch_size_and_pipeline_threads_keep_input_order(tmp_path):
    inputs = hpt_inputs(tmp_path, count=80)
    args = ["--model_dir", HALF_PLUS_TWO, "--input", f"{inputs}/*.jsonl"]
    res = predict(*args, "--output_dir", tmp_path / "default", "--report")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["batch_size"] == 32 and report["batches"] == 3  # 60 + 20 instances, across files
    assert "the runtime was busy" in res.stderr
    res = predict(
        *args, "--output_dir", tmp_path / "threads", "--batch_size", "3",
        "--num_decode_threads", "3", "--num_inference_threads", "2",
    )
    assert res.returncode == 0, res.stderr
    lines = results(tmp_path / "threads")
    assert [line["key"] for line in lines] == list(range(80))
    assert all(line["y"] == [line["key"] / 2 + 2] for line in lines)


def test_progress_bar_on_a_terminal_only(tmp_path):
    import pty

    inputs = hpt_inputs(tmp_path, count=80)
    args = [str(BIN), "predict", "--model_dir", str(HALF_PLUS_TWO), "--input", f"{inputs}/*.jsonl", "--batch_size", "8"]
    master, slave = pty.openpty()
    proc = subprocess.Popen([*args, "--output_dir", str(tmp_path / "tty")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert " instances (" in text and "/s), 0 errors ETA " in text, text
    # Not on a terminal: log lines only.
    res = predict(*args[2:], "--output_dir", tmp_path / "pipe")
    assert res.returncode == 0, res.stderr
    assert "ETA" not in res.stderr and "done: 80 instances" in res.stderr
