#!/usr/bin/env python3
"""Checks a provenance statement with the in-toto attestation framework's own Python bindings:
the statement must parse and validate as an in-toto v1 Statement, and its predicate must parse
strictly (unknown fields refused) as a SLSA v1 Provenance. Prints the subject digest on success."""
import json
import sys

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement, statement_pb2

doc = json.load(open(sys.argv[1]))
if doc.get("_type") != "https://in-toto.io/Statement/v1":
    sys.exit(f"_type is {doc.get('_type')!r}, not an in-toto v1 Statement")
pb = json_format.ParseDict(doc, statement_pb2.Statement())
statement.Statement.copy_from_pb(pb).validate()
if doc["predicateType"] != "https://slsa.dev/provenance/v1":
    sys.exit(f"predicateType is {doc['predicateType']!r}, not SLSA provenance v1")
prov = json_format.ParseDict(doc["predicate"], provenance_pb2.Provenance())
if not prov.build_definition.build_type or not prov.run_details.builder.id:
    sys.exit("SLSA provenance v1 needs buildDefinition.buildType and runDetails.builder.id")
print(doc["subject"][0]["digest"]["sha256"])
