#!/usr/bin/env python3
"""Run the exported demo models through the TensorFlow C API (ctypes), as oxserve does.

    .venv/bin/python examples/check_c_api.py [demo_models]

Never imports tensorflow: dlopens libtensorflow_framework.so.2 + libtensorflow_cc.so.2 from
.oxserve/tf-lib-dir (written by scripts/setup) or the venv's tensorflow package, loads each
SavedModel with TF_LoadSessionFromSavedModel, feeds the inputs recorded in
expected_outputs.json and compares with TensorFlow Python's outputs (expected: bit-identical).
Also a compact reference for TF_TString handling (TF_STRING tensors are arrays of 24-byte
TF_TString structs: TF_StringInit + TF_StringCopy to write, TF_StringGetDataPointer/Size to read).
"""
import base64, ctypes as C, importlib.util, json, os, sys
import numpy as np

# The kernels oxserve runs by default, as expected_outputs.json was made with; read at load.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
_lib_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".oxserve", "tf-lib-dir")
if os.path.exists(_lib_file):
    d = open(_lib_file).read().strip()
else:
    d = importlib.util.find_spec("tensorflow").submodule_search_locations[0]
C.CDLL(os.path.join(d, "libtensorflow_framework.so.2"), mode=C.RTLD_GLOBAL)
tf = C.CDLL(os.path.join(d, "libtensorflow_cc.so.2"), mode=C.RTLD_GLOBAL)
P = C.c_void_p
for n, r, a in [("TF_NewStatus",P,[]),("TF_GetCode",C.c_int,[P]),("TF_Message",C.c_char_p,[P]),
    ("TF_NewGraph",P,[]),("TF_NewSessionOptions",P,[]),
    ("TF_LoadSessionFromSavedModel",P,[P,P,C.c_char_p,C.POINTER(C.c_char_p),C.c_int,P,P,P]),
    ("TF_GraphOperationByName",P,[P,C.c_char_p]),
    ("TF_AllocateTensor",P,[C.c_int,C.POINTER(C.c_int64),C.c_int,C.c_size_t]),
    ("TF_TensorData",P,[P]),("TF_TensorByteSize",C.c_size_t,[P]),("TF_NumDims",C.c_int,[P]),("TF_Dim",C.c_int64,[P,C.c_int]),
    ("TF_StringInit",None,[P]),("TF_StringCopy",None,[P,C.c_char_p,C.c_size_t]),
    ("TF_StringGetDataPointer",P,[P]),("TF_StringGetSize",C.c_size_t,[P]),
    ("TF_SessionRun",None,[P,P,P,P,C.c_int,P,P,C.c_int,P,C.c_int,P,P])]:
    f = getattr(tf, n); f.restype = r; f.argtypes = a
class Output(C.Structure): _fields_ = [("oper", P), ("index", C.c_int)]
def check(s):
    if tf.TF_GetCode(s):
        sys.exit("TF error: " + tf.TF_Message(s).decode())
def run(path, feed_name, tensor, fetch_names):
    s = tf.TF_NewStatus(); g = tf.TF_NewGraph()
    tags = (C.c_char_p * 1)(b"serve")
    sess = tf.TF_LoadSessionFromSavedModel(tf.TF_NewSessionOptions(), None, path.encode(), tags, 1, g, None, s); check(s)
    def out(name):
        op, idx = name.rsplit(":", 1); o = tf.TF_GraphOperationByName(g, op.encode()); assert o, name
        return Output(o, int(idx))
    ins = (Output * 1)(out(feed_name)); vals = (P * 1)(tensor)
    outs = (Output * len(fetch_names))(*[out(n) for n in fetch_names]); ovals = (P * len(fetch_names))()
    tf.TF_SessionRun(sess, None, ins, vals, 1, outs, ovals, len(fetch_names), None, 0, None, s); check(s)
    return list(ovals)
def shape(t): return [tf.TF_Dim(t, i) for i in range(tf.TF_NumDims(t))]
def floats(t): return np.frombuffer(C.string_at(tf.TF_TensorData(t), tf.TF_TensorByteSize(t)), np.float32).reshape(shape(t))
def strings(t):
    n = int(np.prod(shape(t))); base = tf.TF_TensorData(t)
    return np.array([C.string_at(tf.TF_StringGetDataPointer(base + 24 * i), tf.TF_StringGetSize(base + 24 * i)).decode() for i in range(n)]).reshape(shape(t))
out = sys.argv[1] if len(sys.argv) > 1 else "demo_models"
exp = json.load(open(os.path.join(out, "expected_outputs.json")))["models"]
# Tensor names as `saved_model_cli show --all` lists them: output tensors are numbered in
# sorted alias order (ground=:0, weather=:1; classes=:0, scores=:1), not in the order the
# serving function returned them.
# planet
x = np.load(os.path.join(out, "inputs/planet_batch.npy"))
dims = (C.c_int64 * 4)(*x.shape); t = tf.TF_AllocateTensor(1, dims, 4, x.nbytes)
C.memmove(tf.TF_TensorData(t), x.ctypes.data, x.nbytes)
g, w = run(os.path.join(out, "planet/1"), "serving_default_image:0", t, ["StatefulPartitionedCall:0", "StatefulPartitionedCall:1"])
for name, v in [("ground", floats(g)), ("weather", floats(w))]:
    e = np.array(exp["planet"]["outputs"][name]["value"], np.float32)
    print("planet", name, v.shape, "bit-identical" if np.array_equal(v, e) else f"max diff {np.abs(v-e).max()}")
# jpeg
blobs = [base64.b64decode(b) for b in exp["jpeg_classifier"]["inputs"]["image_bytes"]["b64"]]
dims = (C.c_int64 * 1)(len(blobs)); t = tf.TF_AllocateTensor(7, dims, 1, 24 * len(blobs)); base = tf.TF_TensorData(t)
for i, b in enumerate(blobs): tf.TF_StringInit(base + 24 * i); tf.TF_StringCopy(base + 24 * i, b, len(b))
c, sc = run(os.path.join(out, "jpeg_classifier/1"), "serving_default_image_bytes:0", t, ["StatefulPartitionedCall:0", "StatefulPartitionedCall:1"])
print("jpeg classes", strings(c).tolist() == exp["jpeg_classifier"]["outputs"]["classes"]["value"], strings(c)[0])
e = np.array(exp["jpeg_classifier"]["outputs"]["scores"]["value"], np.float32)
same = np.array_equal(floats(sc), e)
print("jpeg scores", "bit-identical" if same else f"max diff {np.abs(floats(sc) - e).max()}")
ok = same and strings(c).tolist() == exp["jpeg_classifier"]["outputs"]["classes"]["value"]
for name in ("ground", "weather"):
    ok = ok and np.array_equal(floats({"ground": g, "weather": w}[name]),
                               np.array(exp["planet"]["outputs"][name]["value"], np.float32))
print("C API outputs match TensorFlow Python:", "yes" if ok else "NO")
sys.exit(0 if ok else 1)
