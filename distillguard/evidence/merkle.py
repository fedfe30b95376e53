"""RFC 6962 Merkle tree hash over SHA-256: leaf/node hashing, inclusion proofs, RFC 9162 verification.

The tree is exactly the Certificate Transparency one: a leaf hash is
``SHA-256(0x00 || data)``, an interior node ``SHA-256(0x01 || left || right)``,
and a list of ``n > 1`` leaves splits at the largest power of two ``k < n``.
Building bottom-up while carrying an unpaired last node up unchanged gives the
same tree, which is what :class:`MerkleTree` does; each level is kept as one
``bytes`` blob of 32-byte hashes so a few million leaves stay compact.

An inclusion proof (audit path, RFC 6962 §2.1.1) binds a leaf to a root only
together with the tree size: the root alone does not pin the size (the proof of
leaf 0 in a tree of 4 also verifies as "leaf 0 of 3"), so a verifier must take
the size from the signed manifest, as :func:`verify_inclusion` lets it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

from distillguard.core.errors import DistillguardError

HASH_SIZE: Final = 32
LEAF_PREFIX: Final = b"\x00"
NODE_PREFIX: Final = b"\x01"
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


class InvalidProofError(DistillguardError):
    """An inclusion proof that does not lead from its leaf to the expected root; says why."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def leaf_hashes(leaves: Iterable[bytes]) -> bytes:
    """Leaf hashes of ``leaves``, concatenated (32 bytes each), in order."""
    sha = hashlib.sha256
    return b"".join([sha(LEAF_PREFIX + leaf).digest() for leaf in leaves])


def _parent_level(level: bytes) -> bytes:
    count = len(level) // HASH_SIZE
    sha = hashlib.sha256
    pair = 2 * HASH_SIZE
    parents = [
        sha(NODE_PREFIX + level[start : start + pair]).digest()
        for start in range(0, (count - 1) * HASH_SIZE, pair)
    ]
    if count % 2:  # RFC 6962's split leaves an unpaired last node to be hashed one level higher
        parents.append(level[(count - 1) * HASH_SIZE :])
    return b"".join(parents)


class MerkleTree:
    """An immutable RFC 6962 tree over given leaf hashes, able to produce audit paths."""

    def __init__(self, hashes: bytes) -> None:
        if len(hashes) % HASH_SIZE:
            raise ValueError(
                f"leaf hashes must be a multiple of {HASH_SIZE} bytes, got {len(hashes)}"
            )
        self._levels: list[bytes] = [bytes(hashes)]
        while len(self._levels[-1]) > HASH_SIZE:
            self._levels.append(_parent_level(self._levels[-1]))

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MerkleTree:
        """Build the tree over the leaf *data* (hashed here with the 0x00 prefix)."""
        return cls(leaf_hashes(leaves))

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0]) // HASH_SIZE

    @property
    def root(self) -> bytes:
        """The Merkle tree hash (MTH); SHA-256 of the empty string for an empty tree."""
        if self.size == 0:
            return EMPTY_ROOT
        return self._levels[-1]

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        self._check_index(index)
        return self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE]

    def inclusion_proof(self, index: int) -> list[bytes]:
        """The RFC 6962 audit path ``PATH(index, D[n])``, nearest the leaf first."""
        self._check_index(index)
        path: list[bytes] = []
        position = index
        for level in self._levels[:-1]:
            sibling = position ^ 1
            if sibling * HASH_SIZE < len(level):  # an unpaired last node has no sibling here
                path.append(level[sibling * HASH_SIZE : (sibling + 1) * HASH_SIZE])
            position >>= 1
        return path

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise IndexError(f"leaf index {index} outside a tree of {self.size} leaves")


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """MTH of the leaf data ``leaves``."""
    return MerkleTree.from_leaves(leaves).root


def root_from_inclusion_proof(
    leaf_index: int, tree_size: int, leaf: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root that ``proof`` leads to from leaf hash ``leaf`` (RFC 9162 §2.1.3.2).

    Raises :class:`InvalidProofError` when the proof cannot belong to a tree of
    ``tree_size`` leaves at ``leaf_index`` (wrong length, wrong hash sizes).
    """
    if tree_size < 1 or not 0 <= leaf_index < tree_size:
        raise InvalidProofError(f"leaf index {leaf_index} is outside a tree of {tree_size} leaves")
    if len(leaf) != HASH_SIZE:
        raise InvalidProofError(f"leaf hash has {len(leaf)} bytes, expected {HASH_SIZE}")
    fn, sn = leaf_index, tree_size - 1
    result = leaf
    for position, sibling in enumerate(proof):
        if len(sibling) != HASH_SIZE:
            raise InvalidProofError(
                f"audit path entry {position} has {len(sibling)} bytes, expected {HASH_SIZE}"
            )
        if sn == 0:
            raise InvalidProofError(
                f"audit path is too long: {len(proof)} entries, the position needs {position}"
            )
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProofError(
            f"audit path is too short for leaf {leaf_index} of {tree_size}: {len(proof)} entries"
        )
    return result


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``proof`` shows leaf hash ``leaf`` at ``leaf_index`` in the tree with ``root``.

    Raises :class:`InvalidProofError` saying what failed; returns ``None`` on success.
    """
    if len(root) != HASH_SIZE:
        raise InvalidProofError(f"root has {len(root)} bytes, expected {HASH_SIZE}")
    computed = root_from_inclusion_proof(leaf_index, tree_size, leaf, proof)
    if computed != root:
        raise InvalidProofError(
            f"audit path leads to root {computed.hex()}, not the expected {root.hex()}"
        )
