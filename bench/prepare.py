#!/usr/bin/env python3
"""Prepares the benchmark's models and request files in bench/out/ (run with bench/.venv).

- models/resnet50/1: keras.applications.ResNet50(weights=None) (random weights: nothing is
  downloaded), exported with Keras 3's model.export();
- inputs/<scenario>.json: the TF Serving REST body ({"instances": [...]}) a Python client sends
  (json.dumps of ndarray.tolist());
- inputs/<scenario>.npy: the same input as float32, for the gRPC client and the raw runtime;
- predict/: the input files of the `predict` scenario (`oxserve predict` over files vs the raw
  runtime at the same batch size): Planet float images as JSON lines and as a TFRecord of
  tf.Examples, JPEGs for demo_models/jpeg_classifier as JSON lines of {"b64": ...} and as plain and
  gzipped TFRecords of the raw JPEG bytes, and the raw runtime's batch as .npy. Written once (kept
  while predict/manifest.json says they were made with the same parameters): run.py reads each file
  several times over (through symbolic links) for as long as a measurement lasts;
- scenarios.json: per scenario, the model's base path, version dir, input alias and files.
"""

import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED = 20251121


def input_alias(version_dir):
    import tensorflow as tf

    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    _, kwargs = fn.structured_input_signature
    (name, _), = kwargs.items()
    return name


def export_resnet50(base):
    version = base / "1"
    if (version / "saved_model.pb").exists():
        return version
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.applications.ResNet50(weights=None)
    tmp = base / "1.tmp"
    model.export(str(tmp))
    tmp.rename(version)
    return version


def write_inputs(out, name, alias, array):
    array = np.ascontiguousarray(array, dtype=np.float32)
    np.save(out / f"{name}.npy", array)
    (out / f"{name}.json").write_text(json.dumps({"instances": array.tolist()}))
    return {"alias": alias, "npy": str(out / f"{name}.npy"), "json": str(out / f"{name}.json"),
            "shape": list(array.shape)}


# The predict scenario's inputs: small files, each read several times over by run.py.
PREDICT_BATCH = 32  # `oxserve predict --batch_size`'s default
PREDICT_PARAMS = {"version": 1, "seed": SEED, "batch": PREDICT_BATCH, "planet_images": 64,
                  "planet_json_lines": 64, "planet_records": 256, "jpegs": 1024,
                  "jpeg_sizes": [[240, 320], [256, 256], [320, 240], [224, 224]], "jpeg_quality": 90}


def make_jpegs(count, sizes, quality, seed):
    """`count` distinct photo-sized JPEGs (smooth colour gradients plus noise, so that they
    compress like pictures rather than like noise or flat colour)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.random(3) * 6.28
        freq = 0.01 + rng.random(3) * 0.05
        rgb = np.stack([127 + 100 * np.sin(freq[c] * (xx + yy * (c + 1) * 0.5) + phase[c]) for c in range(3)], -1)
        rgb += rng.normal(0, 12, rgb.shape)
        pixels = np.clip(rgb, 0, 255).astype(np.uint8)
        out.append(tf.io.encode_jpeg(pixels, quality=quality).numpy())
    return out


def write_predict_inputs(out, planet_version, jpeg_version):
    """The predict scenario's files in out/predict/ (reused when already made alike)."""
    p = PREDICT_PARAMS
    directory = out / "predict"
    manifest_path = directory / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("params") == p and all(pathlib.Path(f["file"]).exists() for f in manifest["formats"]):
            return manifest
    import base64

    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED + 6)
    planet_alias = input_alias(planet_version)
    images = rng.random((p["planet_images"], 128, 128, 3), dtype=np.float32)
    raw_npy = directory / f"planet_b{p['batch']}.npy"
    np.save(raw_npy, np.ascontiguousarray(images[:p["batch"]]))

    def count_lines(path, n, line_of):
        with open(path, "w") as f:
            for i in range(n):
                f.write(line_of(i))
                f.write("\n")

    planet_json = directory / "planet.jsonl"
    # What a Python client writes: json.dumps of ndarray.tolist() (17 significant digits).
    count_lines(planet_json, p["planet_json_lines"],
                lambda i: json.dumps(images[i % len(images)].tolist()))
    planet_records = directory / "planet_examples.tfrecord"
    with tf.io.TFRecordWriter(str(planet_records)) as writer:
        for i in range(p["planet_records"]):
            feature = {planet_alias: tf.train.Feature(float_list=tf.train.FloatList(
                value=images[i % len(images)].ravel()))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())

    jpegs = make_jpegs(p["jpegs"], p["jpeg_sizes"], p["jpeg_quality"], SEED + 7)
    jpeg_json = directory / "jpegs.jsonl"
    count_lines(jpeg_json, len(jpegs),
                lambda i: json.dumps({"b64": base64.b64encode(jpegs[i]).decode("ascii")}))
    jpeg_records = directory / "jpegs.tfrecord"
    jpeg_gzip = directory / "jpegs.tfrecord.gz"
    for path, options in ((jpeg_records, None), (jpeg_gzip, "GZIP")):
        with tf.io.TFRecordWriter(str(path), options) as writer:
            for data in jpegs:
                writer.write(data)

    planet = {"model": "planet", "model_dir": str(planet_version),
              "raw": {"alias": planet_alias, "npy": str(raw_npy)}}
    jpeg = {"model": "jpeg_classifier", "model_dir": str(jpeg_version), "raw": None}
    mean_jpeg = sum(map(len, jpegs)) / len(jpegs) / 1024
    formats = [
        {**planet, "name": "planet-json", "data_format": "json", "file": str(planet_json),
         "instances": p["planet_json_lines"],
         "description": "Planet, JSON lines of 128x128x3 floats (json.dumps of float32 lists, "
                        f"{planet_json.stat().st_size / p['planet_json_lines'] / 1e6:.2f} MB a line)"},
        {**planet, "name": "planet-tfrecord", "data_format": "tf-record", "file": str(planet_records),
         "instances": p["planet_records"],
         "description": "Planet, TFRecord of tf.Examples (a float_list feature named after the input)"},
        {**jpeg, "name": "jpeg-json", "data_format": "json", "file": str(jpeg_json), "instances": len(jpegs),
         "description": f"jpeg_classifier, JSON lines of {{\"b64\": JPEG}} ({mean_jpeg:.0f} KiB JPEGs, "
                        "224-320 px, decoded and resized in the graph)"},
        {**jpeg, "name": "jpeg-tfrecord", "data_format": "tf-record", "file": str(jpeg_records),
         "instances": len(jpegs), "description": "jpeg_classifier, TFRecord of the raw JPEG bytes"},
        {**jpeg, "name": "jpeg-tfrecord-gzip", "data_format": "tf-record-gzip", "file": str(jpeg_gzip),
         "instances": len(jpegs), "description": "jpeg_classifier, gzipped TFRecord of the raw JPEG bytes"},
    ]
    manifest = {"params": p, "batch_size": p["batch"], "formats": formats}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)

    scenarios = {}
    hp2_base = ROOT / "tests" / "fixtures" / "tf-serving-testdata" / "saved_model_half_plus_two_cpu"
    hp2_version = hp2_base / "00000123"
    scenarios["half_plus_two"] = {
        "model": "half_plus_two", "base": str(hp2_base), "version_dir": str(hp2_version),
        "input": write_inputs(inputs, "half_plus_two", "x", np.array([1.0, 2.0, 5.0])),
        "description": "TF Serving's half_plus_two, 3 scalars per request: pure serving overhead",
    }

    planet_base = ROOT / "demo_models" / "planet"
    if not (planet_base / "1" / "saved_model.pb").exists():
        sys.exit("demo_models/planet is missing: run scripts/setup first")
    image = np.load(ROOT / "demo_models" / "inputs" / "planet_batch.npy")[:1]
    scenarios["planet"] = {
        "model": "planet", "base": str(planet_base), "version_dir": str(planet_base / "1"),
        "input": write_inputs(inputs, "planet", input_alias(planet_base / "1"), image),
        "description": "the Planet CNN, one 128x128x3 float image per request (~1 MB of JSON)",
    }

    resnet_base = out / "models" / "resnet50"
    resnet_base.mkdir(parents=True, exist_ok=True)
    resnet_version = export_resnet50(resnet_base)
    picture = rng.random((1, 224, 224, 3), dtype=np.float32) * 255.0
    scenarios["resnet50"] = {
        "model": "resnet50", "base": str(resnet_base), "version_dir": str(resnet_version),
        "input": write_inputs(inputs, "resnet50", input_alias(resnet_version), picture),
        "description": "Keras ResNet50 (random weights, model.export()), one 224x224x3 image per request (~3 MB of JSON)",
    }
    predict = write_predict_inputs(out, planet_base / "1", ROOT / "demo_models" / "jpeg_classifier" / "1")
    scenarios["predict"] = {
        "model": "planet, jpeg_classifier", "batch_size": predict["batch_size"], "formats": predict["formats"],
        "description": f"`oxserve predict` over files against the raw runtime at the same batch size "
                       f"({predict['batch_size']})",
    }
    (out / "scenarios.json").write_text(json.dumps(scenarios, indent=2))
    print(json.dumps({k: v["input"]["alias"] for k, v in scenarios.items() if "input" in v}))


if __name__ == "__main__":
    main()
