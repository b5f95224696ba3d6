"""`oxserve show`, `oxserve run` and `oxserve serve`'s flag handling."""

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.tools import saved_model_cli

from conftest import BAD_MODEL, DEMO, DTYPES_MODEL, HALF_PLUS_THREE, HALF_PLUS_TWO, assert_failed_start, expected_outputs, run_cli

HPT = HALF_PLUS_TWO / "00000123"


def test_show_tag_sets():
    out = run_cli("show", "--dir", HPT)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "The given SavedModel contains the following tag-sets:\n'serve'\n"


def test_show_signature_keys():
    out = run_cli("show", "--dir", HPT, "--tag_set", "serve")
    assert out.returncode == 0, out.stderr
    assert 'SignatureDef key: "serving_default"' in out.stdout
    assert 'SignatureDef key: "regress_x2_to_y3"' in out.stdout


def test_show_one_signature():
    out = run_cli("show", "--dir", HPT, "--tag_set", "serve", "--signature_def", "serving_default")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "The given SavedModel SignatureDef contains the following input(s):\n"
        "  inputs['x'] tensor_info:\n"
        "      dtype: DT_FLOAT\n"
        "      shape: (-1, 1)\n"
        "      name: x:0\n"
        "The given SavedModel SignatureDef contains the following output(s):\n"
        "  outputs['y'] tensor_info:\n"
        "      dtype: DT_FLOAT\n"
        "      shape: (-1, 1)\n"
        "      name: y:0\n"
        "Method name is: tensorflow/serving/predict\n"
    )


def test_show_all():
    out = run_cli("show", "--dir", HPT, "--all")
    assert out.returncode == 0, out.stderr
    assert "MetaGraphDef with tag-set: 'serve' contains the following SignatureDefs:" in out.stdout
    assert "signature_def['classify_x_to_y']:" in out.stdout
    assert "shape: unknown_rank" in out.stdout
    assert "Method name is: tensorflow/serving/classify" in out.stdout


@pytest.fixture(scope="module")
def tagged_model(tmp_path_factory):
    """A TF1 SavedModel with several tag sets, tags out of order, and a 1-D, a scalar and an
    unknown shape (saved_model_cli prints them `(-1)`, `()` and `unknown_rank`)."""
    out = tmp_path_factory.mktemp("tagged") / "1"
    tf1 = tf.compat.v1
    with tf.Graph().as_default(), tf1.Session() as session:
        x = tf1.placeholder(tf.float32, [None], name="x")
        k = tf1.placeholder(tf.int64, [], name="k")
        u = tf1.placeholder(tf.string, None, name="u")
        info = tf1.saved_model.utils.build_tensor_info
        signature = tf1.saved_model.signature_def_utils.build_signature_def(
            inputs={"x": info(x), "k": info(k), "u": info(u)},
            outputs={"y": info(x * tf.cast(k, tf.float32))},
            method_name="tensorflow/serving/predict")
        builder = tf1.saved_model.Builder(str(out))
        builder.add_meta_graph_and_variables(session, ["serve", "gpu"], signature_def_map={"b": signature, "a": signature})
        builder.add_meta_graph(["train"], signature_def_map={"t": signature})
        builder.save()
    return out


def saved_model_cli_show(directory, tag_set=None, signature_def=None, all=False):
    """What TensorFlow's saved_model_cli prints, less the lists of ops and of concrete functions
    (which oxserve does not print)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        if all:
            saved_model_cli._show_all(str(directory))
        elif tag_set is None:
            saved_model_cli._show_tag_sets(str(directory))
        elif signature_def is None:
            saved_model_cli._show_signature_def_map_keys(str(directory), tag_set)
        else:
            saved_model_cli._show_inputs_outputs(str(directory), tag_set, signature_def)
    text = printed.getvalue()
    text = text.split("\nConcrete Functions:")[0]
    return "".join(line for line in text.splitlines(keepends=True) if "contains the following ops:" not in line)


def test_show_prints_what_saved_model_cli_prints(tagged_model):
    models = [tagged_model, HALF_PLUS_THREE / "00000123", DTYPES_MODEL / "1", DEMO / "planet" / "1"]
    for model in models:
        for tag_set, signature_def, all in [(None, None, False), ("serve", None, False), (None, None, True)]:
            if model == tagged_model and tag_set == "serve":
                tag_set = "gpu,serve"
            args = ["--tag_set", tag_set] if tag_set else []
            out = run_cli("show", "--dir", model, *args, *(["--all"] if all else []))
            assert out.returncode == 0, out.stderr
            assert out.stdout == saved_model_cli_show(model, tag_set, signature_def, all), (model, tag_set, all)
    for signature_def in ("identity_float32", "add_sub", "to_complex"):
        out = run_cli("show", "--dir", DTYPES_MODEL / "1", "--tag_set", "serve", "--signature_def", signature_def)
        assert out.stdout == saved_model_cli_show(DTYPES_MODEL / "1", "serve", signature_def)
    # A signature without a tag set lists the tag sets, as there.
    out = run_cli("show", "--dir", tagged_model, "--signature_def", "a")
    assert out.stdout == saved_model_cli_show(tagged_model) == (
        "The given SavedModel contains the following tag-sets:\n'gpu, serve'\n'train'\n")


def test_show_reads_the_saved_model_without_the_runtime():
    env = dict(os.environ, OXSERVE_TENSORFLOW_LIB_DIR="/nonexistent/tf")
    out = run_cli("show", "--dir", HPT, "--all", env=env)
    assert out.returncode == 0, out.stderr
    assert "signature_def['serving_default']:" in out.stdout


def test_show_errors():
    out = run_cli("show", "--dir", "/nonexistent")
    assert out.returncode != 0 and "SavedModel file does not exist" in out.stderr
    out = run_cli("show", "--dir", HPT, "--tag_set", "gpu")
    assert out.returncode != 0 and "could not be found" in out.stderr
    out = run_cli("show", "--dir", HPT, "--tag_set", "serve", "--signature_def", "nope")
    assert out.returncode != 0 and "nope" in out.stderr


def test_run_with_input_exprs():
    out = run_cli("run", "--dir", HPT, "--tag_set", "serve", "--signature_def", "serving_default",
                  "--input_exprs", "x=[[1],[2],[5]]")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Result for output key y:\n")
    assert json.loads(out.stdout.split("\n", 1)[1]) == [[2.5], [3.0], [4.5]]


def test_run_takes_any_alias_a_repeated_tag_and_an_output_that_is_an_input(tmp_path, serve):
    """What saved_model_cli takes: aliases with ':' and spaces, a meta graph stored with a tag
    twice, and a signature that passes an input through as an output (TensorFlow refuses to fetch
    a fed tensor; the value fed is the answer, as Python's Session gives it)."""
    out = tmp_path / "odd" / "1"
    tf1 = tf.compat.v1
    with tf.Graph().as_default(), tf1.Session() as session:
        x = tf1.placeholder(tf.float32, [None], name="x")
        z = tf1.placeholder(tf.float32, [None], name="z")
        info = tf1.saved_model.utils.build_tensor_info
        signature = tf1.saved_model.signature_def_utils.build_signature_def(
            inputs={"in:put": info(x), "my input": info(z)},
            outputs={"sum": info(x + z), "echo": info(x)},
            method_name="tensorflow/serving/predict")
        builder = tf1.saved_model.Builder(str(out))
        builder.add_meta_graph_and_variables(session, ["serve", "serve"], signature_def_map={"serving_default": signature})
        builder.save()
    shown = run_cli("show", "--dir", out, "--tag_set", "serve", "--signature_def", "serving_default")
    assert shown.returncode == 0, shown.stderr
    assert "inputs['my input']" in shown.stdout
    ran = run_cli("run", "--dir", out, "--tag_set", "serve,serve", "--signature_def", "serving_default",
                  "--input_exprs", "in:put=[1.0, 2.0];my input=[10.0, 20.0]")
    assert ran.returncode == 0, ran.stderr
    assert "Result for output key echo:\n[1.0, 2.0]\n" in ran.stdout
    assert "Result for output key sum:\n[11.0, 22.0]\n" in ran.stdout
    server = serve("odd", out.parent)
    answer = server.post("/v1/models/odd:predict", {"instances": [{"in:put": 3.0, "my input": 4.0}]})
    assert answer.json() == {"predictions": [{"echo": 3.0, "sum": 7.0}]}, answer.text


def test_run_with_input_examples():
    out = run_cli("run", "--dir", HPT, "--signature_def", "regress_x_to_y",
                  "--input_examples", 'inputs=[{"x": [1.0]}, {"x": [3.0]}]')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.split("\n", 1)[1]) == [[2.5], [3.5]]


def test_run_with_npy_inputs_and_outdir(tmp_path):
    model = expected_outputs()["models"]["planet"]
    out = run_cli("run", "--dir", DEMO / "planet" / "1", "--signature_def", "serving_default",
                  "--inputs", f"image={DEMO / 'inputs' / 'planet_batch.npy'}", "--outdir", tmp_path)
    assert out.returncode == 0, out.stderr
    for alias in ("weather", "ground"):
        saved = np.load(tmp_path / f"{alias}.npy")
        assert saved.dtype == np.float32
        assert np.max(np.abs(saved - np.asarray(model["outputs"][alias]["value"]))) <= 1e-5
    again = run_cli("run", "--dir", DEMO / "planet" / "1", "--inputs",
                    f"image={DEMO / 'inputs' / 'planet_batch.npy'}", "--outdir", tmp_path)
    assert again.returncode != 0 and "--overwrite" in again.stderr


def test_run_with_float16_npy(tmp_path):
    x = np.array([[0.1, -2.5], [65504.0, 6e-8]], dtype=np.float16)
    np.save(tmp_path / "x.npy", x)
    out = run_cli("run", "--dir", DTYPES_MODEL / "1", "--signature_def", "identity_float16",
                  "--inputs", f"x={tmp_path / 'x.npy'}", "--outdir", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    y = np.load(tmp_path / "out" / "y.npy")
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, x)


def test_run_with_npz_member(tmp_path):
    np.savez(tmp_path / "in.npz", a=np.array([[4.0]], dtype=np.float32))
    out = run_cli("run", "--dir", HPT, "--inputs", f"x={tmp_path / 'in.npz'}[a]")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.split("\n", 1)[1]) == [[4.0]]


def test_run_with_b64_bytes_in_input_exprs():
    model = expected_outputs()["models"]["jpeg_classifier"]
    image = model["inputs"]["image_bytes"]["b64"][0]
    out = run_cli("run", "--dir", DEMO / "jpeg_classifier" / "1", "--input_exprs", f'image_bytes=[{{"b64": "{image}"}}]')
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Result for output key classes:" and lines[2] == "Result for output key scores:"
    classes, scores = json.loads(lines[1]), json.loads(lines[3])
    assert classes == model["outputs"]["classes"]["value"][:1]
    assert np.max(np.abs(np.subtract(scores, model["outputs"]["scores"]["value"][:1]))) <= 1e-5


def test_run_with_an_npz_of_one_array_and_several_assignments(tmp_path):
    np.savez(tmp_path / "one.npz", a=np.array([[4.0]], dtype=np.float32))
    out = run_cli("run", "--dir", HPT, "--inputs", f"x={tmp_path / 'one.npz'}")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.split("\n", 1)[1]) == [[4.0]]
    np.savez(tmp_path / "two.npz", a=np.array([[4.0]], dtype=np.float32), b=np.array([[1.0]], dtype=np.float32))
    out = run_cli("run", "--dir", HPT, "--inputs", f"x={tmp_path / 'two.npz'}")
    assert out.returncode != 0 and "name one as" in out.stderr
    # `;` separates assignments: the second one is seen (and refused as a repeat).
    out = run_cli("run", "--dir", HPT, "--input_exprs", "x=[[1]];x=[[2]]")
    assert out.returncode != 0 and "input x is given more than once" in out.stderr


def results(stdout):
    """`Result for output key <alias>:` followed by the value's JSON line, for every output."""
    lines = stdout.splitlines()
    found = {}
    for header, value in zip(lines, lines[1:]):
        if header.startswith("Result for output key "):
            found[header.removeprefix("Result for output key ").rstrip(":")] = json.loads(value)
    return found


def test_run_feeds_several_inputs_from_any_flags(tmp_path):
    sig = ("--dir", DTYPES_MODEL / "1", "--signature_def", "add_sub")
    out = run_cli("run", *sig, "--input_exprs", "a=[1, 2];b=[0.5, 4]")
    assert out.returncode == 0, out.stderr
    assert results(out.stdout) == {"diff": [0.5, -2.0], "sum": [1.5, 6.0]}
    np.save(tmp_path / "a.npy", np.array([3.0], dtype=np.float32))
    out = run_cli("run", *sig, "--inputs", f"a={tmp_path / 'a.npy'}", "--input_exprs", "b=[1]")
    assert out.returncode == 0, out.stderr
    assert results(out.stdout) == {"diff": [2.0], "sum": [4.0]}
    out = run_cli("run", *sig, "--input_exprs", "a=[1];c=[2]")
    assert out.returncode != 0
    assert '"c" is not a valid input key. Please choose from "a", "b"' in out.stderr, out.stderr


def test_run_leaves_out_inputs_with_defaults_and_names_the_others():
    """As saved_model_cli, only the inputs given are fed: a TF2 function's default argument
    fills its input (as TF Serving fills it), and TensorFlow names a placeholder left empty."""
    tf2 = HALF_PLUS_TWO.parent / "saved_model_half_plus_two_tf2_cpu" / "00000123"
    out = run_cli("run", "--dir", tf2)
    assert out.returncode == 0, out.stderr
    assert results(out.stdout) == {"y": [2.0]}
    out = run_cli("run", "--dir", DTYPES_MODEL / "1", "--signature_def", "add_sub", "--input_exprs", "a=[1]")
    assert out.returncode != 0
    assert "You must feed a value for placeholder tensor" in out.stderr, out.stderr


def test_run_prints_what_json_cannot_hold(tmp_path):
    out = run_cli("run", "--dir", DTYPES_MODEL / "1", "--signature_def", "identity_float32",
                  "--input_exprs", "x=[NaN, Infinity, -1.5]")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == "[NaN, Infinity, -1.5]"
    out = run_cli("run", "--dir", DTYPES_MODEL / "1", "--signature_def", "to_complex",
                  "--input_exprs", "x=[1, 2.5]", "--outdir", tmp_path)
    assert out.returncode == 0, out.stderr
    assert results(out.stdout) == {"y": [[1.0, -1.0], [2.5, -2.5]]}
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.complex64 and y.tolist() == [1 - 1j, 2.5 - 2.5j]


def test_run_reads_and_writes_complex_bfloat16_and_fortran_arrays(tmp_path):
    z = np.array([[1 + 2j, -0.5j]], dtype=np.complex128)
    np.save(tmp_path / "z.npy", z)
    out = run_cli("run", "--dir", DTYPES_MODEL / "1", "--signature_def", "identity_complex128",
                  "--inputs", f"x={tmp_path / 'z.npy'}", "--outdir", tmp_path / "z")
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "z" / "y.npy"), z)
    # numpy has no bfloat16: written as float32, which holds every value exactly.
    out = run_cli("run", "--dir", DTYPES_MODEL / "1", "--signature_def", "identity_bfloat16",
                  "--input_exprs", "x=[1.5, -3.015625]", "--outdir", tmp_path / "bf")
    assert out.returncode == 0, out.stderr
    y = np.load(tmp_path / "bf" / "y.npy")
    assert y.dtype == np.float32 and y.tolist() == [1.5, -3.015625]
    transposed = np.arange(6, dtype=np.float32).reshape(3, 2).T
    np.save(tmp_path / "t.npy", transposed)
    out = run_cli("run", "--dir", DTYPES_MODEL / "1", "--signature_def", "identity_float32",
                  "--inputs", f"x={tmp_path / 't.npy'}")
    assert out.returncode == 0, out.stderr
    assert results(out.stdout) == {"y": transposed.tolist()}


def test_run_checks_every_output_file_before_writing_any(tmp_path):
    (tmp_path / "sum.npy").write_bytes(b"keep")
    out = run_cli("run", "--dir", DTYPES_MODEL / "1", "--signature_def", "add_sub",
                  "--input_exprs", "a=[1];b=[2]", "--outdir", tmp_path)
    assert out.returncode != 0 and "--overwrite" in out.stderr
    assert not (tmp_path / "diff.npy").exists()
    assert (tmp_path / "sum.npy").read_bytes() == b"keep"


def test_run_overwrite_replaces_outputs(tmp_path):
    out = run_cli("run", "--dir", HPT, "--input_exprs", "x=[[1]]", "--outdir", tmp_path)
    assert out.returncode == 0, out.stderr
    out = run_cli("run", "--dir", HPT, "--input_exprs", "x=[[3]]", "--outdir", tmp_path, "--overwrite")
    assert out.returncode == 0, out.stderr
    assert np.load(tmp_path / "y.npy").tolist() == [[3.5]]


def test_run_names_the_directory_of_a_model_that_does_not_load_once(tmp_path):
    version = tmp_path / "1"
    shutil.copytree(HPT, version)
    pb = version / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:100])
    out = run_cli("run", "--dir", version, "--input_exprs", "x=[[1]]")
    assert out.returncode == 1, out.stderr
    assert out.stderr.count(str(version)) == 1, out.stderr


def test_run_errors():
    out = run_cli("run", "--dir", HPT, "--input_exprs", "x=[[1],[2]")
    assert out.returncode != 0 and "x" in out.stderr
    out = run_cli("run", "--dir", HPT, "--inputs", "x=/nonexistent.npy")
    assert out.returncode != 0 and "/nonexistent.npy" in out.stderr
    out = run_cli("run", "--dir", HPT, "--input_exprs", "y=[[1]]")
    assert out.returncode != 0 and "y" in out.stderr
    out = run_cli("run", "--dir", HPT, "--input_exprs", 'x=["a"]')
    assert out.returncode != 0 and "float" in out.stderr
    out = run_cli("run", "--dir", HPT, "--signature_def", "nope", "--input_exprs", "x=[[1]]")
    assert out.returncode != 0
    assert 'Could not find signature "nope". Please choose from: classify_x_to_y, regress_x2_to_y3,' in out.stderr
    out = run_cli("run", "--dir", HPT, "--tag_set", "gpu", "--input_exprs", "x=[[1]]")
    assert out.returncode != 0
    assert "tag-set 'gpu' could not be found in SavedModel; available tag-sets: 'serve'" in out.stderr
    # A value is one JSON value, not text spliced into a request.
    out = run_cli("run", "--dir", HPT, "--input_exprs", 'x=[[1]], "y": [[2]]')
    assert out.returncode != 0 and "offset: 5" in out.stderr, out.stderr


def test_run_casts_and_checks_shapes_as_saved_model_cli(tmp_path):
    """saved_model_cli feeds arrays through session.run: a float64 array feeds a float32 input
    (np.asarray to the input's dtype), and a shape the input cannot take is refused by name."""
    np.save(tmp_path / "f64.npy", np.array([[1.0], [5.0]], dtype=np.float64))
    np.save(tmp_path / "i64.npy", np.array([[3]], dtype=np.int64))
    out = run_cli("run", "--dir", HPT, "--inputs", f"x={tmp_path / 'f64.npy'}", "--outdir", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    y = np.load(tmp_path / "out" / "y.npy")
    assert y.dtype == np.float32 and y.tolist() == [[2.5], [4.5]]
    out = run_cli("run", "--dir", HPT, "--inputs", f"x={tmp_path / 'i64.npy'}")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.split("\n", 1)[1]) == [[3.5]]
    # x is (None, 1): any batch, one value each.
    np.save(tmp_path / "wide.npy", np.zeros((2, 3), dtype=np.float32))
    out = run_cli("run", "--dir", HPT, "--inputs", f"x={tmp_path / 'wide.npy'}")
    assert out.returncode != 0
    assert (
        f"Cannot feed value of shape (2, 3) from {tmp_path / 'wide.npy'} for input x, which has shape (None, 1)"
        in out.stderr
    ), out.stderr
    out = run_cli("run", "--dir", HPT, "--input_exprs", "x=[1, 2]")
    assert out.returncode != 0 and "shape (2,) from --input_exprs for input x" in out.stderr, out.stderr
    np.save(tmp_path / "words.npy", np.array([[b"a"]]))
    out = run_cli("run", "--dir", HPT, "--inputs", f"x={tmp_path / 'words.npy'}")
    assert out.returncode != 0
    assert f"cannot feed the string value from {tmp_path / 'words.npy'} to input x, which takes float" in out.stderr


def test_run_file_errors_name_the_file(tmp_path):
    (tmp_path / "garbage.npy").write_bytes(b"this is no numpy file")
    (tmp_path / "garbage.npz").write_bytes(b"nor a zip")
    (tmp_path / "dir.npy").mkdir()
    np.save(tmp_path / "cut.npy", np.zeros((100,), dtype=np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-10])
    for name in ("missing.npy", "garbage.npy", "garbage.npz", "garbage.npz[a]", "dir.npy", "cut.npy"):
        path = tmp_path / name
        out = run_cli("run", "--dir", HPT, "--inputs", f"x={path}")
        assert out.returncode != 0
        assert str(path).split("[")[0] in out.stderr, (name, out.stderr)
        assert "panicked" not in out.stderr


def test_serve_rejects_unknown_flags_and_bad_values_with_tf_servings_status():
    # tensorflow_model_server returns -1 (255) from main when its flags do not parse.
    out = run_cli("serve", "--model_base_path", HALF_PLUS_TWO, "--no_such_flag=1")
    assert out.returncode == 255, out.stderr
    assert "--no_such_flag" in out.stderr
    out = run_cli("serve", "--model_base_path", HALF_PLUS_TWO, "--port=abc")
    assert out.returncode == 255, out.stderr
    assert "'abc'" in out.stderr and "--port" in out.stderr
    # Help is no error, and the other tools keep the usual usage status.
    assert run_cli("serve", "--help").returncode == 0
    assert run_cli("show", "--no_such_flag").returncode == 2


def test_serve_version():
    out = run_cli("serve", "--version")
    assert out.returncode == 0, out.stderr
    assert "TensorFlow Library: 2.21.0" in out.stdout


def test_serve_fails_clearly_on_a_bad_model():
    # As TF Serving, a model that fails its initial load stops start-up once retries run out.
    out = run_cli("serve", "--rest_api_port=0", "--max_num_load_retries=0", "--model_base_path", BAD_MODEL)
    assert_failed_start(out)
    assert "bad_half_plus_two" in out.stderr or "00000123" in out.stderr


def test_missing_tensorflow_library_says_what_to_run():
    env = dict(os.environ, OXSERVE_TENSORFLOW_LIB_DIR="/nonexistent/tf")
    out = run_cli("serve", "--model_base_path", HALF_PLUS_TWO, env=env)
    assert_failed_start(out)
    assert "scripts/setup" in out.stderr
