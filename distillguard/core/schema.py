"""The data contract (shared/spec/data-contract.md v1) as Arrow schemas and enumerations."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import pyarrow as pa

CONTRACT_VERSION: Final = "v1"

TS_TYPE: Final = pa.timestamp("ms", tz="UTC")

#: Required exchange columns, in contract order, with the type they are normalised to.
EXCHANGE_REQUIRED: Final[tuple[pa.Field, ...]] = (
    pa.field("ts", TS_TYPE, nullable=False),
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("account_id", pa.string(), nullable=False),
    pa.field("client_ip", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("input_tokens", pa.int64(), nullable=False),
    pa.field("output_tokens", pa.int64(), nullable=False),
)

#: Optional exchange columns the contract names; absent ones are filled with nulls.
EXCHANGE_OPTIONAL: Final[tuple[pa.Field, ...]] = (
    pa.field("api_key_id", pa.string()),
    pa.field("end_user_id", pa.string()),
    pa.field("user_agent", pa.string()),
    pa.field("system_prompt_sha256", pa.string()),
    pa.field("messages_count", pa.int64()),
    pa.field("tools_count", pa.int64()),
    pa.field("thinking", pa.bool_()),
    pa.field("status", pa.int64()),
    pa.field("latency_ms", pa.int64()),
)

EXCHANGE_SCHEMA: Final = pa.schema(EXCHANGE_REQUIRED + EXCHANGE_OPTIONAL)
EXCHANGE_COLUMNS: Final = tuple(f.name for f in EXCHANGE_SCHEMA)
EXCHANGE_REQUIRED_COLUMNS: Final = tuple(f.name for f in EXCHANGE_REQUIRED)

ACCOUNT_SCHEMA: Final = pa.schema(
    [
        pa.field("account_id", pa.string(), nullable=False),
        pa.field("created_at", TS_TYPE),
        pa.field("email_domain", pa.string()),
        pa.field("payment_fingerprint", pa.string()),
        pa.field("signup_ip", pa.string()),
        pa.field("country", pa.string()),
        pa.field("verification", pa.string()),
        pa.field("tier", pa.string()),
    ]
)
ACCOUNT_COLUMNS: Final = tuple(f.name for f in ACCOUNT_SCHEMA)

IP_INTEL_SCHEMA: Final = pa.schema(
    [
        pa.field("cidr", pa.string(), nullable=False),
        pa.field("asn", pa.int64()),
        pa.field("asn_org", pa.string()),
        pa.field("kind", pa.string(), nullable=False),
    ]
)

LABELS_SCHEMA: Final = pa.schema(
    [
        pa.field("account_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("campaign", pa.string()),
        pa.field("persona", pa.string()),
    ]
)


class NetworkKind(StrEnum):
    """What the provider knows about an IP network (``ip_intel.csv`` ``kind``)."""

    RESIDENTIAL = "residential"
    MOBILE = "mobile"
    BUSINESS = "business"
    EDUCATION = "education"
    DATACENTER = "datacenter"
    VPN = "vpn"
    PROXY = "proxy"
    TOR = "tor"
    UNKNOWN = "unknown"  # outside every ip_intel row; never written in ip_intel.csv itself


NETWORK_KINDS_IN_INTEL: Final = tuple(k.value for k in NetworkKind if k is not NetworkKind.UNKNOWN)


class Verification(StrEnum):
    """Strongest identity check an account passed, weakest first."""

    NONE = "none"
    EMAIL = "email"
    PHONE = "phone"
    CARD = "card"
    KYC = "kyc"


VERIFICATION_LEVELS: Final = tuple(v.value for v in Verification)

LABEL_VALUES: Final = ("benign", "attack")
