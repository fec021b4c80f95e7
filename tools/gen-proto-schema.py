#!/usr/bin/env python3
"""Builds src/api/proto_schema.json from upstream Kubernetes `generated.proto` files.

The API server decodes protobuf request bodies with a table-driven reader
(src/api/protobuf.rs). This script extracts that table: for every message, its
fields as [number, jsonName, "opt"|"omit"|"rep"|"map", type] where type is a
scalar name, a fully qualified message name, or "K,V" for maps. "omit" marks a
scalar that Go declares as a plain value with `omitempty`: protobuf always
carries it, JSON leaves it out when zero, so the decoder drops its zero value
(pointer fields such as `replicas: 0` keep theirs). "inline" marks an embedded
struct (`VolumeSource` in `Volume`, `ProbeHandler` in `Probe`) whose fields JSON puts
in the parent. Both come from the Go
struct tags in the packages' `*.go` files beside each `generated.proto`, as does the
JSON name where it differs from the protobuf one (`uID` is `uid` in
BoundObjectReference).

Usage, with checkouts of k8s.io/api and k8s.io/apimachinery at the release the
server reports in /version (v0.33.x for Kubernetes 1.33):

    git -C api archive v0.33.9 | tar -x -C /tmp/k8s-api
    git -C apimachinery archive v0.33.9 | tar -x -C /tmp/k8s-apimachinery
    tools/gen-proto-schema.py /tmp/k8s-api /tmp/k8s-apimachinery > src/api/proto_schema.json
"""

import json
import re
import sys
from pathlib import Path

# The API groups the server serves, plus the apimachinery packages they use.
API_PACKAGES = [
    "core/v1", "apps/v1", "batch/v1", "coordination/v1", "storage/v1",
    "networking/v1", "policy/v1", "autoscaling/v1", "discovery/v1",
    "authentication/v1", "authentication/v1beta1", "authorization/v1", "rbac/v1",
]
MACHINERY_PACKAGES = [
    "pkg/apis/meta/v1", "pkg/runtime", "pkg/util/intstr", "pkg/api/resource",
]
SCALARS = {
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
    "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes",
}
FIELD = re.compile(r"^\s*(optional|repeated)\s+([\w.]+)\s+(\w+)\s*=\s*(\d+)")
MAP = re.compile(r"^\s*map<\s*([\w.]+)\s*,\s*([\w.]+)\s*>\s+(\w+)\s*=\s*(\d+)")
MESSAGE = re.compile(r"^message\s+(\w+)\s*\{")
STRUCT = re.compile(r"^type\s+(\w+)\s+struct\s*\{")
GO_INLINE = re.compile(r'^\s*[\w.]+\s+`json:",inline"\s+protobuf:"\w+,\d+,opt,name=(\w+)')
GO_FIELD = re.compile(r'^\s*\w+\s+(\S+)\s+`json:"[^",]*,omitempty"\s+protobuf:"\w+,\d+,opt,name=(\w+)')
GO_NAMES = re.compile(r'`json:"([^",]*)[^"]*"\s+protobuf:"[^"]*\bname=(\w+)')


def go_tags(directory):
    """(struct, protobuf field name) pairs of non-pointer scalar fields tagged omitempty, and
    of embedded structs whose fields JSON inlines into the parent (`json:",inline"`); and the
    JSON names of fields whose protobuf name differs, keyed by such pairs."""
    found, inline, renamed = set(), set(), {}
    for go in sorted(directory.glob("*.go")):
        if go.name.endswith("_test.go"):
            continue
        struct = None
        for line in go.read_text().splitlines():
            if m := STRUCT.match(line):
                struct = m.group(1)
            elif line.startswith("}"):
                struct = None
            elif struct and (m := GO_INLINE.match(line)):
                inline.add((struct, m.group(1)))
            elif struct and (m := GO_FIELD.match(line)):
                go_type, name = m.groups()
                if not go_type.startswith(("*", "[", "map[")):
                    found.add((struct, name))
            if struct and (m := GO_NAMES.search(line)) and m.group(1) not in ("", "-", m.group(2)):
                renamed[(struct, m.group(2))] = m.group(1)
    return found, inline, renamed


def qualify(ty, package):
    if ty in SCALARS:
        return ty
    if ty.startswith("."):
        return ty[1:]
    return f"{package}.{ty}"


def parse(path, out):
    omit, inline, renamed = go_tags(path.parent)
    package, message = None, None
    for line in path.read_text().splitlines():
        line = line.split("//", 1)[0]
        if m := re.match(r"^package\s+([\w.]+);", line):
            package = m.group(1)
        elif m := MESSAGE.match(line):
            message = f"{package}.{m.group(1)}"
            out[message] = []
        elif line.strip() == "}":
            message = None
        elif message and (m := MAP.match(line)):
            k, v, name, num = m.groups()
            name = renamed.get((message.rsplit(".", 1)[1], name), name)
            out[message].append([int(num), name, "map", f"{qualify(k, package)},{qualify(v, package)}"])
        elif message and (m := FIELD.match(line)):
            label, ty, name, num = m.groups()
            if label == "repeated":
                kind = "rep"
            elif ty in SCALARS and (message.rsplit(".", 1)[1], name) in omit:
                kind = "omit"
            elif (message.rsplit(".", 1)[1], name) in inline:
                kind = "inline"
            else:
                kind = "opt"
            name = renamed.get((message.rsplit(".", 1)[1], name), name)
            out[message].append([int(num), name, kind, qualify(ty, package)])


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    api, machinery = Path(sys.argv[1]), Path(sys.argv[2])
    out = {}
    for pkg in API_PACKAGES:
        parse(api / pkg / "generated.proto", out)
    for pkg in MACHINERY_PACKAGES:
        parse(machinery / pkg / "generated.proto", out)
    json.dump(out, sys.stdout, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
