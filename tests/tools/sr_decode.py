#!/usr/bin/env python3
"""Decodes Kafka record values in Confluent's Schema Registry wire format with confluent-kafka's own
deserializers, so that what the gateway writes is checked by an implementation it does not share code
with. tests/common/registry.rs runs it with the Python of the virtualenv scripts/install-test-tools.sh
makes.

Input, on stdin: one JSON object a line, {"value_hex": "...", "topic": "t"}. With a topic, the
deserializer names the subject as a consumer would (TopicNameStrategy, "<topic>-value") and the registry
is asked for the schema id within that subject; without one, the id alone is looked up.

Output, on stdout: one JSON line per input line, {"schema_id": N, "value": ...} or {"error": "..."}.
Values are made JSON-safe: datetimes as RFC 3339, Decimal as a string, bytes as base64, UUIDs as
strings, non-finite floats as "NaN"/"Infinity"/"-Infinity", protobuf messages through MessageToDict with
the .proto field names (so, as in protobuf's JSON mapping, 64-bit integers are strings and proto3 fields
at their default value are left out). Protobuf answers also carry "message_indexes", as read from the
record.

Arguments:
  --registry URL [--user U --password P]
  --format avro|protobuf|json
  --proto FILE --message NAME   (protobuf: the message class is generated from FILE with protoc)
  --schema FILE                 (json, optional: a reader schema; without it the writer's schema is
                                 taken from the registry, and the value is validated against it)
"""

import argparse
import atexit
import base64
import datetime
import decimal
import importlib
import importlib.resources
import io
import json
import math
import os
import shutil
import sys
import tempfile
import uuid

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.common.serde import SchemaId
from confluent_kafka.serialization import MessageField, SerializationContext


def jsonable(v):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, datetime.datetime):
        s = v.isoformat()
        return s[:-6] + "Z" if s.endswith("+00:00") else s
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        # Fixed-point notation: "100", not "1E+2".
        return format(v, "f")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, uuid.UUID):
        return str(v)
    return str(v)


def protoc(args):
    from grpc_tools import protoc as grpc_protoc

    # protoc's own copy of the well-known types (google/protobuf/*.proto) ships with grpc_tools.
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    code = grpc_protoc.main(["protoc", "-I" + include] + args)
    if code != 0:
        sys.exit("sr_decode: protoc failed (exit %d) on %s" % (code, " ".join(args)))


def message_class(proto_path, name):
    """Generates the _pb2 modules of `proto_path` and the local files it imports, imports them, and
    returns the class of message `name` (with or without its package)."""
    from google.protobuf import descriptor_pb2

    proto_path = os.path.abspath(proto_path)
    root, rel = os.path.dirname(proto_path), os.path.basename(proto_path)
    out = tempfile.mkdtemp(prefix="sr_decode_")
    atexit.register(shutil.rmtree, out, True)

    # A descriptor set with its imports names every file the generated code will import.
    descriptor_set = os.path.join(out, "set.pb")
    protoc(["-I" + root, "--descriptor_set_out=" + descriptor_set, "--include_imports", rel])
    files = descriptor_pb2.FileDescriptorSet()
    with open(descriptor_set, "rb") as f:
        files.ParseFromString(f.read())
    local = [f.name for f in files.file if not f.name.startswith("google/protobuf/")]
    protoc(["-I" + root, "--python_out=" + out] + local)

    sys.path.insert(0, out)
    module = importlib.import_module(rel[: -len(".proto")].replace("-", "_").replace("/", ".") + "_pb2")
    package = module.DESCRIPTOR.package
    if package and name.startswith(package + "."):
        name = name[len(package) + 1 :]
    cls = module
    for part in name.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            sys.exit("sr_decode: no message %s in %s" % (name, proto_path))
    return cls


def main():
    p = argparse.ArgumentParser(description="Decode Confluent-framed record values (JSON lines in and out).")
    p.add_argument("--registry", required=True)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--format", required=True, choices=["avro", "protobuf", "json"])
    p.add_argument("--proto")
    p.add_argument("--message")
    p.add_argument("--schema")
    args = p.parse_args()

    conf = {"url": args.registry, "timeout": 10, "max.retries": 0}
    if args.user is not None:
        conf["basic.auth.user.info"] = "%s:%s" % (args.user, args.password or "")
    client = SchemaRegistryClient(conf)

    # Without a topic there is no subject: look the schema up by its id alone.
    by_id = {"subject.name.strategy": lambda ctx, record_name: None}
    schema_type = {"avro": "AVRO", "protobuf": "PROTOBUF", "json": "JSON"}[args.format]
    expected_indexes = None

    if args.format == "avro":
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        def make(conf):
            return AvroDeserializer(client, conf=conf)

        def to_json(v):
            return jsonable(v)

    elif args.format == "protobuf":
        from confluent_kafka.schema_registry.common.protobuf import _create_index_array
        from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
        from google.protobuf.json_format import MessageToDict

        if not args.proto or not args.message:
            sys.exit("sr_decode: --format protobuf needs --proto FILE and --message NAME")
        cls = message_class(args.proto, args.message)
        # The deserializer parses every record as `cls` whatever its message indexes name; they are
        # compared here, against confluent-kafka's own index array for `cls`.
        expected_indexes = _create_index_array(cls.DESCRIPTOR)

        def make(conf):
            return ProtobufDeserializer(cls, conf, client)

        def to_json(v):
            return jsonable(MessageToDict(v, preserving_proto_field_name=True))

    else:
        from confluent_kafka.schema_registry.json_schema import JSONDeserializer

        schema_str = None
        if args.schema:
            with open(args.schema) as f:
                schema_str = f.read()

        def make(conf):
            return JSONDeserializer(schema_str, schema_registry_client=client, conf=conf)

        def to_json(v):
            return jsonable(v)

    deserializers = {}

    def deserializer(with_topic):
        if with_topic not in deserializers:
            deserializers[with_topic] = make({} if with_topic else dict(by_id))
        return deserializers[with_topic]

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            data = bytes.fromhex(item["value_hex"])
            topic = item.get("topic")
            ctx = SerializationContext(topic or "", MessageField.VALUE)
            value = deserializer(bool(topic))(data, ctx)
            framing = SchemaId(schema_type)
            framing.from_bytes(io.BytesIO(data))
            answer = {"schema_id": framing.id}
            if framing.guid is not None:
                answer["schema_guid"] = str(framing.guid)
            if schema_type == "PROTOBUF":
                answer["message_indexes"] = framing.message_indexes
                if framing.message_indexes != expected_indexes:
                    raise ValueError(
                        "message indexes %s name another message than %s (%s)"
                        % (framing.message_indexes, args.message, expected_indexes)
                    )
            answer["value"] = to_json(value)
        except Exception as e:  # one answer per line, whatever went wrong
            answer = {"error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
