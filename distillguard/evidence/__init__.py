"""Evidence: campaigns, their exchanges and verdicts in → signed, hash-committed case files and proofs out."""

from distillguard.evidence.canonical import RECORD_FIELDS, RECORD_SCHEME, canonical_json
from distillguard.evidence.casefile import (
    CaseManifest,
    InclusionProof,
    VerifyReport,
    check_proof,
    disclose,
    prove,
    read_manifest,
    verify_case,
    verify_disclosure,
    verify_proof,
    write_case,
)
from distillguard.evidence.merkle import InvalidProofError, MerkleTree
from distillguard.evidence.signing import (
    generate_signing_key,
    key_fingerprint,
    load_signing_key,
    write_signing_key,
)

__all__ = [
    "RECORD_FIELDS",
    "RECORD_SCHEME",
    "CaseManifest",
    "InclusionProof",
    "InvalidProofError",
    "MerkleTree",
    "VerifyReport",
    "canonical_json",
    "check_proof",
    "disclose",
    "generate_signing_key",
    "key_fingerprint",
    "load_signing_key",
    "prove",
    "read_manifest",
    "verify_case",
    "verify_disclosure",
    "verify_proof",
    "write_case",
    "write_signing_key",
]
