#!/usr/bin/env python3
"""Export oxserve's demo models as TF Serving-style SavedModels, plus golden outputs.

Run with the project venv (created by scripts/setup):

    .venv/bin/python examples/export_demo_models.py --out demo_models

Writes, deterministically (fixed seeds, random-initialised weights, no downloads):

    <out>/planet/1/                   Planet CNN: image float32[N,128,128,3] -> weather[N,4], ground[N,13]
    <out>/jpeg_classifier/1/          JPEG bytes string[N] -> classes string[N,5], scores float32[N,5]
    <out>/inputs/planet_batch.npy     float32 [3,128,128,3], values in [0,1)
    <out>/inputs/planet_request.json  TF Serving REST :predict body (row format, 1 instance)
    <out>/inputs/jpeg_classifier_request.json  REST :predict body ({"b64": ...} instances)
    <out>/inputs/jpeg_*.jpg           3 small JPEGs (different sizes, one grayscale; sorted = batch order)
    <out>/expected_outputs.json       inputs and TensorFlow's own outputs (the exported
                                      SavedModel reloaded with tf.saved_model.load)

Models are exported with keras.export.ExportArchive (never tf.saved_model.save on a
Keras 3 model: that SavedModel loads through the C API but fails at run time with
"Could not find variable").
"""

import argparse
import base64
import io
import json
import os
import shutil
import sys
import time

# CPU only, quiet, deterministic, and the kernels oxserve runs by default (TensorFlow's own, not
# oneDNN's), so that expected_outputs.json holds its numbers. Must be set before TensorFlow is
# imported.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

SEED = 20240601
VERSION = "1"

PLANET_SIZE = 128
PLANET_WEATHER = 4
PLANET_GROUND = 13
# Label names of the Kaggle "Planet: Understanding the Amazon from Space" dataset,
# for documentation and clients; the heads themselves return probabilities only.
PLANET_WEATHER_LABELS = ["clear", "partly_cloudy", "cloudy", "haze"]
PLANET_GROUND_LABELS = [
    "primary", "agriculture", "road", "water", "cultivation", "habitation",
    "bare_ground", "selective_logging", "artisinal_mine", "blooming",
    "slash_burn", "blow_down", "conventional_mine",
]

JPEG_SIZE = 64
JPEG_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
TOP_K = 5


# --------------------------------------------------------------------------- models

def build_planet_model():
    """Small conv net, ~30 MFLOP per 128x128 image: about 1 ms per image on 2 cores.

    Flatten (not global pooling) before the dense layers and a wider initialisation of
    the heads keep the random-weight outputs clearly input-dependent, so a golden test
    notices a wrong or mangled input.
    """
    image = keras.Input(shape=(PLANET_SIZE, PLANET_SIZE, 3), dtype="float32", name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(image)  # 64x64
    for filters in (32, 64, 64):
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)  # 4x4x64
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    head_init = keras.initializers.RandomNormal(stddev=1.0)
    weather = keras.layers.Dense(
        PLANET_WEATHER, activation="softmax", kernel_initializer=head_init, name="weather")(x)
    ground = keras.layers.Dense(
        PLANET_GROUND, activation="sigmoid", kernel_initializer=head_init, name="ground")(x)
    return keras.Model(inputs=image, outputs=[weather, ground], name="planet")


def build_jpeg_cnn():
    """Tiny classifier over normalised 64x64x3 images, returns class probabilities."""
    image = keras.Input(shape=(JPEG_SIZE, JPEG_SIZE, 3), dtype="float32", name="image")
    x = image
    for filters in (16, 32, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)  # -> 8x8x32
    x = keras.layers.Flatten()(x)
    probs = keras.layers.Dense(
        len(JPEG_CLASSES), activation="softmax",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.2), name="probs")(x)
    return keras.Model(inputs=image, outputs=probs, name="jpeg_cnn")


# --------------------------------------------------------------------------- export

def export_planet(model, path):
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image):
        weather, ground = model(image, training=False)
        # A dict return value gives the signature outputs these aliases
        # (model.export() would name them output_0 / output_1).
        return {"weather": weather, "ground": ground}

    archive.add_endpoint(
        "serving_default",
        serve,
        input_signature=[
            tf.TensorSpec([None, PLANET_SIZE, PLANET_SIZE, 3], tf.float32, name="image")
        ],
    )
    archive.write_out(path, verbose=False)


def export_jpeg_classifier(model, path):
    archive = keras.export.ExportArchive()
    archive.track(model)

    def decode_one(jpeg):
        img = tf.io.decode_jpeg(jpeg, channels=3)  # uint8 [h, w, 3]
        img = tf.image.resize(img, [JPEG_SIZE, JPEG_SIZE], method="bilinear")  # float32
        return img / 127.5 - 1.0  # [-1, 1]

    def serve(image_bytes):
        images = tf.map_fn(
            decode_one,
            image_bytes,
            fn_output_signature=tf.TensorSpec([JPEG_SIZE, JPEG_SIZE, 3], tf.float32),
        )
        probs = model(images, training=False)
        scores, indices = tf.math.top_k(probs, k=TOP_K)
        classes = tf.gather(tf.constant(JPEG_CLASSES, dtype=tf.string), indices)
        return {"classes": classes, "scores": scores}

    archive.add_endpoint(
        "serving_default",
        serve,
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
    )
    archive.write_out(path, verbose=False)


# --------------------------------------------------------------------------- inputs

def make_planet_batch(rng):
    """3 images with values in [0, 1): uniform noise at three brightness levels."""
    scale = np.array([0.3, 0.65, 1.0], dtype=np.float32).reshape(3, 1, 1, 1)
    return rng.random((3, PLANET_SIZE, PLANET_SIZE, 3), dtype=np.float32) * scale


def make_jpegs(rng):
    """Three deterministic JPEGs: gradients + seeded noise, different sizes, one grayscale."""
    out = []

    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 255 // (w + h - 2)], -1)
    rgb = np.clip(rgb + rng.integers(-20, 21, rgb.shape), 0, 255).astype(np.uint8)
    out.append(("jpeg_0_gradient_64x48.jpg", Image.fromarray(rgb, "RGB")))

    h, w = 120, 96
    noise = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    blocks = np.kron(noise, np.ones((8, 8, 1), dtype=np.uint8))
    out.append(("jpeg_1_blocks_96x120.jpg", Image.fromarray(blocks, "RGB")))

    h, w = 40, 40
    yy, xx = np.mgrid[0:h, 0:w]
    rings = (127.5 + 127.5 * np.cos(np.hypot(yy - h / 2, xx - w / 2) / 3.0)).astype(np.uint8)
    out.append(("jpeg_2_rings_gray_40x40.jpg", Image.fromarray(rings, "L")))

    result = []
    for name, img in out:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        result.append((name, buf.getvalue()))
    return result


# --------------------------------------------------------------------------- helpers

def tensor_json(value):
    """A numpy array / tf tensor -> {"dtype", "shape", "value"} with nested lists.

    Floats are float32 values widened exactly to Python floats, so np.float32(v)
    recovers the bit pattern TensorFlow produced. Strings are decoded as UTF-8.
    """
    arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    if arr.dtype == object:
        dtype = "string"
        lst = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(arr).tolist()
    else:
        dtype = arr.dtype.name
        lst = arr.tolist()
    return {"dtype": dtype, "shape": list(arr.shape), "value": lst}


def describe_signature(path):
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    _, in_specs = fn.structured_input_signature
    ins = ", ".join(
        f"{k}:{s.dtype.name}{list(s.shape.as_list())}" for k, s in sorted(in_specs.items())
    )
    outs = ", ".join(
        f"{k}:{s.dtype.name}{list(s.shape.as_list())}"
        for k, s in sorted(fn.structured_outputs.items())
    )
    return loaded, fn, f"serving_default(predict) inputs {{{ins}}} -> outputs {{{outs}}}"


def fresh_dir(path):
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)


def write_json(path, obj, indent=None):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="demo_models", help="output directory (default: demo_models/)")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    t_start = time.perf_counter()

    tf.config.set_visible_devices([], "GPU")
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(SEED)

    inputs_dir = os.path.join(out, "inputs")
    os.makedirs(inputs_dir, exist_ok=True)
    # Written last: its presence (and mtime) marks a complete export for scripts/setup.
    expected_path = os.path.join(out, "expected_outputs.json")
    if os.path.exists(expected_path):
        os.remove(expected_path)
    expected = {
        "format": "oxserve expected_outputs v1",
        "generator": "examples/export_demo_models.py",
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "seed": SEED,
        "models": {},
    }

    # ---- planet
    t0 = time.perf_counter()
    planet = build_planet_model()
    planet_path = os.path.join(out, "planet", VERSION)
    fresh_dir(planet_path)
    export_planet(planet, planet_path)
    _, fn, summary = describe_signature(planet_path)

    rng = np.random.default_rng(SEED)
    batch = make_planet_batch(rng)
    np.save(os.path.join(inputs_dir, "planet_batch.npy"), batch)
    result = fn(image=tf.constant(batch))
    expected["models"]["planet"] = {
        "model_path": "planet/" + VERSION,
        "signature_name": "serving_default",
        "method_name": "tensorflow/serving/predict",
        "labels": {"weather": PLANET_WEATHER_LABELS, "ground": PLANET_GROUND_LABELS},
        "input_files": {"image": "inputs/planet_batch.npy"},
        "inputs": {"image": tensor_json(batch)},
        "outputs": {k: tensor_json(v) for k, v in sorted(result.items())},
    }
    write_json(
        os.path.join(inputs_dir, "planet_request.json"),
        {"signature_name": "serving_default", "instances": batch[:1].tolist()},
    )
    print(f"planet: {summary} [{time.perf_counter() - t0:.1f}s] -> {planet_path}", flush=True)

    # ---- jpeg_classifier
    t0 = time.perf_counter()
    cnn = build_jpeg_cnn()
    jpeg_path = os.path.join(out, "jpeg_classifier", VERSION)
    fresh_dir(jpeg_path)
    export_jpeg_classifier(cnn, jpeg_path)
    _, fn, summary = describe_signature(jpeg_path)

    jpegs = make_jpegs(rng)
    for name, data in jpegs:
        with open(os.path.join(inputs_dir, name), "wb") as f:
            f.write(data)
    result = fn(image_bytes=tf.constant([d for _, d in jpegs], dtype=tf.string))
    b64 = [base64.b64encode(d).decode("ascii") for _, d in jpegs]
    expected["models"]["jpeg_classifier"] = {
        "model_path": "jpeg_classifier/" + VERSION,
        "signature_name": "serving_default",
        "method_name": "tensorflow/serving/predict",
        "labels": {"classes": JPEG_CLASSES},
        "input_files": {"image_bytes": ["inputs/" + n for n, _ in jpegs]},
        "inputs": {"image_bytes": {"dtype": "string", "shape": [len(jpegs)], "b64": b64}},
        "outputs": {k: tensor_json(v) for k, v in sorted(result.items())},
    }
    write_json(
        os.path.join(inputs_dir, "jpeg_classifier_request.json"),
        {"signature_name": "serving_default", "instances": [{"b64": s} for s in b64]},
    )
    print(f"jpeg_classifier: {summary} [{time.perf_counter() - t0:.1f}s] -> {jpeg_path}", flush=True)

    write_json(expected_path, expected)
    print(f"wrote {expected_path} in {time.perf_counter() - t_start:.1f}s total", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
