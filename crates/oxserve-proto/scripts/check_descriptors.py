#!/usr/bin/env python3
"""Compare oxserve's .proto definitions with upstream TensorFlow / TF Serving.

Loads the FileDescriptorSet that build.rs writes (oxserve_descriptor.bin) and,
for every message and enum it defines outside google.protobuf, looks up the
type of the same full name in the descriptors compiled into the installed
`tensorflow` and `tensorflow-serving-api` wheels. Reports, per type:
  - fields/values that differ (name, number, type, label, type name, oneof,
    proto3 optional, packed),
  - fields/values of ours that upstream lacks (an error),
  - upstream fields/values we leave out (informational; they are skipped as
    unknown fields when decoding).

Usage (from the workspace root, after `cargo build -p oxserve-proto`):
  .venv/bin/pip install --no-deps tensorflow-serving-api==2.21.0
  .venv/bin/python crates/oxserve-proto/scripts/check_descriptors.py [DESCRIPTOR_BIN]
(without an argument, the newest target/*/build/oxserve-proto-*/out/oxserve_descriptor.bin)
Exit status 1 if any mismatch was found.
"""
import glob
import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from google.protobuf import descriptor_pb2, descriptor_pool  # noqa: E402

UPSTREAM_MODULES = [
    "tensorflow.core.framework.types_pb2",
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.framework.tensor_shape_pb2",
    "tensorflow.core.framework.resource_handle_pb2",
    "tensorflow.core.protobuf.meta_graph_pb2",
    "tensorflow.core.protobuf.saved_model_pb2",
    "tensorflow.core.protobuf.config_pb2",
    "tensorflow.core.protobuf.error_codes_pb2",
    "tensorflow.core.example.example_pb2",
    "tensorflow.core.example.feature_pb2",
    "tensorflow_serving.apis.prediction_service_pb2",
    "tensorflow_serving.apis.model_service_pb2",
    "tensorflow_serving.apis.prediction_log_pb2",
    "tensorflow_serving.config.model_server_config_pb2",
    "tensorflow_serving.config.platform_config_pb2",
]
# Upstream types not in the wheels, checked by hand against upstream sources.
NOT_IN_WHEELS = {
    "tensorflow.serving.BatchingParameters",
    "tensorflow.serving.ModelWarmupOptions",
    "tensorflow.serving.MonitoringConfig",
    "tensorflow.serving.PrometheusConfig",
    "tensorflow.serving.SavedModelBundleSourceAdapterConfig",
    "tensorflow.serving.SessionBundleConfig",
    "tensorflow.serving.SSLConfig",
}


def field_key(f):
    return (
        f.name,
        f.number,
        f.type,
        f.label,
        f.type_name,
        f.HasField("oneof_index"),
        f.proto3_optional,
        f.options.packed if f.options.HasField("packed") else None,
    )


def main(path):
    for m in UPSTREAM_MODULES:
        importlib.import_module(m)
    upstream = descriptor_pool.Default()

    fds = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as fh:
        fds.ParseFromString(fh.read())

    errors = 0

    def check_enum(full, ours):
        nonlocal errors
        try:
            up = upstream.FindEnumTypeByName(full)
        except KeyError:
            print(f"?? {full}: not in the installed wheels")
            return
        upv = {v.name: v.number for v in up.values}
        for v in ours.value:
            if v.name not in upv:
                print(f"ERROR {full}.{v.name}: upstream has no such value")
                errors += 1
            elif upv[v.name] != v.number:
                print(f"ERROR {full}.{v.name}: ours {v.number}, upstream {upv[v.name]}")
                errors += 1
        missing = set(upv) - {v.name for v in ours.value}
        if missing:
            print(f"info  {full}: values left out: {sorted(missing)}")

    def check_msg(full, ours):
        nonlocal errors
        for e in ours.enum_type:
            check_enum(f"{full}.{e.name}", e)
        for n in ours.nested_type:
            check_msg(f"{full}.{n.name}", n)
        if full in NOT_IN_WHEELS:
            print(f"skip  {full}: not in the wheels (checked against upstream source)")
            return
        try:
            up = upstream.FindMessageTypeByName(full)
        except KeyError:
            print(f"?? {full}: not in the installed wheels")
            return
        upp = descriptor_pb2.DescriptorProto()
        up.CopyToProto(upp)
        upf = {f.name: f for f in upp.field}
        for f in ours.field:
            u = upf.get(f.name)
            if u is None:
                print(f"ERROR {full}.{f.name}: upstream has no such field")
                errors += 1
                continue
            if field_key(f) != field_key(u):
                print(f"ERROR {full}.{f.name}: ours {field_key(f)}, upstream {field_key(u)}")
                errors += 1
            elif f.HasField("oneof_index") and (
                ours.oneof_decl[f.oneof_index].name != upp.oneof_decl[u.oneof_index].name
            ):
                print(f"ERROR {full}.{f.name}: oneof name differs")
                errors += 1
        missing = set(upf) - {f.name for f in ours.field}
        if missing:
            print(f"info  {full}: fields left out: " + ", ".join(
                f"{n}={upf[n].number}" for n in sorted(missing)))

    for fd in fds.file:
        if fd.package == "google.protobuf":
            continue
        for e in fd.enum_type:
            check_enum(f"{fd.package}.{e.name}", e)
        for m in fd.message_type:
            check_msg(f"{fd.package}.{m.name}", m)
        for s in fd.service:
            full = f"{fd.package}.{s.name}"
            up = upstream.FindServiceByName(full)
            ours = [(m.name, m.input_type, m.output_type) for m in s.method]
            theirs = [(m.name, "." + m.input_type.full_name, "." + m.output_type.full_name)
                      for m in up.methods]
            if sorted(ours) != sorted(theirs):
                print(f"ERROR service {full}: ours {ours}, upstream {theirs}")
                errors += 1
    print("mismatches:", errors)
    return 1 if errors else 0


if __name__ == "__main__":
    paths = sys.argv[1:] or sorted(
        glob.glob("target/*/build/oxserve-proto-*/out/oxserve_descriptor.bin"),
        key=os.path.getmtime, reverse=True)
    if not paths:
        sys.exit("no oxserve_descriptor.bin given or found")
    sys.exit(main(paths[0]))
