"""RFC 6962 Merkle tree: Certificate Transparency vectors, a recursive reference, and tampering properties."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.evidence.merkle import (
    EMPTY_ROOT,
    InvalidProofError,
    MerkleTree,
    leaf_hash,
    merkle_root,
    node_hash,
    root_from_inclusion_proof,
    verify_inclusion,
)

# Vectors from the Certificate Transparency test data (transparency-dev/merkle testonly + proof tests).
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
# (leaf index, tree size, audit path) — the vectors number leaves from 1; these are 0-based.
INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, written recursively exactly as the RFC states it."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:])).digest()


def reference_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(m, D[n]), recursively."""
    if len(leaves) <= 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*reference_path(m, leaves[:k]), reference_mth(leaves[k:])]
    return [*reference_path(m - k, leaves[k:]), reference_mth(leaves[:k])]


@pytest.mark.parametrize("size", range(len(ROOTS)))
def test_roots_match_certificate_transparency_vectors(size: int) -> None:
    assert merkle_root(LEAVES[:size]) == ROOTS[size]


def test_empty_tree_root_is_hash_of_nothing() -> None:
    assert MerkleTree(b"").root == EMPTY_ROOT == ROOTS[0]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_vectors(index: int, size: int, path: list[str]) -> None:
    tree = MerkleTree.from_leaves(LEAVES[:size])
    expected = [bytes.fromhex(h) for h in path]
    assert tree.inclusion_proof(index) == expected
    verify_inclusion(index, size, leaf_hash(LEAVES[index]), expected, ROOTS[size])


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_corrupted_inclusion_vectors_fail(index: int, size: int, path: list[str]) -> None:
    proof = [bytes.fromhex(h) for h in path]
    leaf, root = leaf_hash(LEAVES[index]), ROOTS[size]
    probes = [
        (index - 1, size, leaf, proof, root),
        (index + 1, size, leaf, proof, root),
        (index ^ 2, size, leaf, proof, root),
        (index, size * 2, leaf, proof, root),
        (index, size // 2, leaf, proof, root),
        (index, size, b"WrongLeaf", proof, root),
        (index, size, leaf, proof, EMPTY_ROOT),
        (index, size, leaf, proof, SOME_HASH),
        (index, size, leaf, [*proof, b""], root),
        (index, size, leaf, [*proof, root], root),
        (index, size, leaf, [b"", *proof], root),
        (index, size, leaf, [root, *proof], root),
        (index, size, leaf, proof[:-1], root),
        (index, size, leaf, [proof[0], SOME_HASH, *proof[1:]], root),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        probes.append((index, size, leaf, flipped, root))
    for probe in probes:
        with pytest.raises(InvalidProofError):
            verify_inclusion(*probe)


def test_single_leaf_tree_has_empty_path() -> None:
    leaf = leaf_hash(b"data")
    verify_inclusion(0, 1, leaf, [], leaf)
    with pytest.raises(InvalidProofError):
        verify_inclusion(0, 1, b"", [], leaf)
    with pytest.raises(InvalidProofError):
        verify_inclusion(0, 1, leaf, [], b"")


def test_root_alone_does_not_pin_tree_size() -> None:
    # Why the manifest's signed tree size must be checked: RFC 9162 verification
    # accepts leaf 0's proof from a tree of 4 as a proof in a tree of 3.
    tree = MerkleTree.from_leaves(LEAVES[:4])
    path = tree.inclusion_proof(0)
    assert root_from_inclusion_proof(0, 3, tree.leaf(0), path) == tree.root


# Distinct leaves: two equal leaves may legitimately swap places in a proof.
leaf_lists = st.lists(st.binary(max_size=12), min_size=1, max_size=70, unique=True)


@settings(max_examples=60, deadline=None)
@given(leaves=leaf_lists)
def test_tree_equals_recursive_reference_and_every_proof_verifies(leaves: list[bytes]) -> None:
    tree = MerkleTree.from_leaves(leaves)
    assert tree.root == reference_mth(leaves)
    for index in range(len(leaves)):
        path = tree.inclusion_proof(index)
        assert path == reference_path(index, leaves)
        verify_inclusion(index, len(leaves), leaf_hash(leaves[index]), path, tree.root)


@settings(max_examples=150, deadline=None)
@given(leaves=leaf_lists, data=st.data())
def test_any_bit_flip_or_wrong_position_fails(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree.from_leaves(leaves)
    size = len(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    leaf, path, root = tree.leaf(index), tree.inclusion_proof(index), tree.root
    target = data.draw(
        st.sampled_from(["leaf", "root", "path", "index"] if path else ["leaf", "root", "index"])
    )
    bit = data.draw(st.integers(0, 255), label="bit")

    def flip(value: bytes) -> bytes:
        mutable = bytearray(value)
        mutable[bit // 8] ^= 1 << (bit % 8)
        return bytes(mutable)

    if target == "leaf":
        leaf = flip(leaf)
    elif target == "root":
        root = flip(root)
    elif target == "path":
        entry = data.draw(st.integers(0, len(path) - 1), label="entry")
        path = [flip(p) if i == entry else p for i, p in enumerate(path)]
    else:
        other = data.draw(
            st.integers(-2, size + 2).filter(lambda i: i != index), label="other index"
        )
        index = other
    with pytest.raises(InvalidProofError):
        verify_inclusion(index, size, leaf, path, root)


def test_node_hash_is_domain_separated_from_leaf_hash() -> None:
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(left, right) != leaf_hash(left + right)
