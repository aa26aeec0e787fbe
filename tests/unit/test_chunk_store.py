"""ChunkStore: content addressing, atomic writes, distrust of the disk, size accounting, LRU pruning."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from greenferry.core.manifest import ChunkRef
from greenferry.daemon.transfer import ChunkCorruptError, ChunkMissingError, ChunkStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path / "chunks")


def test_put_and_get_by_hash_in_the_two_level_layout(store: ChunkStore) -> None:
    data = b"weights" * 1000
    digest = store.put(data)
    assert digest == sha(data)
    path = store.root / digest[:2] / digest[2:]
    assert path.read_bytes() == data
    assert store.path_of(digest) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert store.get(digest) == data
    assert store.get(digest, len(data)) == data
    assert store.has(digest)
    assert store.has(digest, len(data))
    assert not store.has(digest, len(data) + 1)
    assert store.shas() == [digest]


def test_put_verifies_the_claimed_hash_before_writing(store: ChunkStore) -> None:
    data = b"the real bytes"
    claimed = sha(b"other bytes")
    with pytest.raises(ChunkCorruptError, match=claimed):
        store.put(data, claimed)
    assert not store.has(claimed)
    assert not store.has(sha(data))
    assert store.shas() == []
    assert store.put(data, sha(data)) == sha(data)


def test_empty_and_oversized_chunks_are_refused(tmp_path: Path) -> None:
    small = ChunkStore(tmp_path / "small", max_chunk_bytes=100)
    with pytest.raises(ValueError, match="empty"):
        small.put(b"")
    with pytest.raises(ValueError, match="larger than this store takes"):
        small.put(b"x" * 101)
    small.put(b"x" * 100)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "0" * 63, "0" * 64 + "/x", ""])
def test_hashes_that_are_not_hex_digests_never_become_paths(store: ChunkStore, bad: str) -> None:
    with pytest.raises(ValueError, match="not a SHA-256"):
        store.path_of(bad)
    with pytest.raises(ValueError, match="not a SHA-256"):
        store.get(bad)
    with pytest.raises(ValueError, match="not a SHA-256"):
        store.has(bad)


def test_a_missing_chunk_raises_a_clear_error(store: ChunkStore) -> None:
    absent = sha(b"never stored")
    with pytest.raises(ChunkMissingError, match=absent):
        store.get(absent)


def test_missing_keeps_order_drops_duplicates_and_checks_sizes(store: ChunkStore) -> None:
    held = store.put(b"held")
    absent_a, absent_b = sha(b"a"), sha(b"b")
    refs = [
        ChunkRef(sha256=absent_b, size_bytes=1),
        ChunkRef(sha256=held, size_bytes=4),
        ChunkRef(sha256=absent_a, size_bytes=1),
        ChunkRef(sha256=absent_b, size_bytes=1),
    ]
    assert store.missing(refs) == [absent_b, absent_a]
    assert store.missing([held, absent_a]) == [absent_a]
    # A ref whose size disagrees with the file on disk counts as missing.
    assert store.missing([ChunkRef(sha256=held, size_bytes=5)]) == [held]


def test_a_truncated_chunk_is_not_trusted_and_is_removed_on_read(store: ChunkStore) -> None:
    data = os.urandom(5000)
    digest = store.put(data)
    store.path_of(digest).write_bytes(data[:100])
    assert not store.has(digest, len(data))
    assert store.missing([ChunkRef(sha256=digest, size_bytes=len(data))]) == [digest]
    with pytest.raises(ChunkCorruptError, match="100 bytes on disk, expected 5000"):
        store.get(digest, len(data))
    assert not store.path_of(digest).exists()
    with pytest.raises(ChunkMissingError):
        store.get(digest)


def test_a_flipped_byte_passes_the_size_check_but_not_the_read(store: ChunkStore) -> None:
    data = bytearray(os.urandom(5000))
    digest = store.put(bytes(data))
    data[1234] ^= 0xFF
    store.path_of(digest).write_bytes(bytes(data))
    assert store.has(digest, len(data))  # only the size is checked here: cheap
    with pytest.raises(ChunkCorruptError, match="hash to"):
        store.get(digest, len(data))
    assert not store.has(digest)  # removed: the next transfer sends it again
    assert store.put(bytes(data[:1234]) + bytes([data[1234] ^ 0xFF]) + bytes(data[1235:])) == digest
    assert store.get(digest) == store.path_of(digest).read_bytes()


def test_a_symlink_in_place_of_a_chunk_is_never_followed(store: ChunkStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a chunk")
    digest = sha(b"not a chunk")
    path = store.path_of(digest)
    path.parent.mkdir(parents=True)
    path.symlink_to(secret)
    assert not store.has(digest)
    with pytest.raises(ChunkCorruptError, match="not a readable file"):
        store.get(digest)
    assert secret.read_bytes() == b"not a chunk"
    assert not path.is_symlink()


def test_storing_an_intact_chunk_again_does_not_rewrite_it(store: ChunkStore) -> None:
    digest = store.put(b"frozen layer")
    path = store.path_of(digest)
    inode = path.stat().st_ino
    os.utime(path, (1_000_000, 1_000_000))
    assert store.put(b"frozen layer") == digest
    assert path.stat().st_ino == inode
    assert path.stat().st_mtime > 1_000_000  # touched: recently used


def test_a_damaged_copy_is_replaced_by_put(store: ChunkStore) -> None:
    digest = store.put(b"0123456789")
    store.path_of(digest).write_bytes(b"012")
    assert store.put(b"0123456789") == digest
    assert store.get(digest, 10) == b"0123456789"


def test_size_accounting_follows_puts_deletes_and_damage(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "c")
    assert store.size_bytes() == 0
    a = store.put(b"a" * 100)
    b = store.put(b"b" * 50)
    store.put(b"a" * 100)
    assert store.size_bytes() == 150
    assert store.delete(a)
    assert not store.delete(a)
    assert store.size_bytes() == 50
    store.path_of(b).write_bytes(b"x" * 50)
    with pytest.raises(ChunkCorruptError):
        store.get(b)
    assert store.size_bytes() == 0
    store.put(b"c" * 70)
    assert ChunkStore(tmp_path / "c").size_bytes() == 70  # a new instance counts what is on disk


def test_prune_evicts_least_recently_used_first_and_keeps_what_it_is_told(store: ChunkStore) -> None:
    digests = [store.put(bytes([n]) * 100) for n in range(5)]
    for age, digest in enumerate(digests):
        os.utime(store.path_of(digest), (1_000_000 + age, 1_000_000 + age))  # digests[0] is the oldest
    store.get(digests[1])  # reading makes it the most recently used
    result = store.prune(300, keep={digests[0]})
    assert result.chunks_removed == 2
    assert result.bytes_removed == 200
    assert result.size_bytes == 300
    assert set(store.shas()) == {digests[0], digests[1], digests[4]}
    assert store.size_bytes() == 300


def test_prune_stays_above_the_limit_rather_than_drop_kept_chunks(store: ChunkStore) -> None:
    digests = [store.put(bytes([n]) * 100) for n in range(3)]
    result = store.prune(0, keep=set(digests[:2]))
    assert result.size_bytes == 200
    assert sorted(store.shas()) == sorted(digests[:2])
    assert store.prune(10_000).chunks_removed == 0
    with pytest.raises(ValueError, match="max_bytes"):
        store.prune(-1)


def test_a_failed_write_leaves_neither_the_chunk_nor_a_temp_file(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        store.put(b"half written")
    monkeypatch.undo()
    assert not store.has(sha(b"half written"))
    assert list((store.root / ".tmp").iterdir()) == []


def test_stale_temp_files_are_removed_when_the_store_opens(tmp_path: Path) -> None:
    ChunkStore(tmp_path / "c")
    stale = tmp_path / "c" / ".tmp" / "dead.writer"
    fresh = tmp_path / "c" / ".tmp" / "live.writer"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old_s = time.time() - 2 * 3600
    os.utime(stale, (old_s, old_s))
    ChunkStore(tmp_path / "c")
    assert not stale.exists()
    assert fresh.exists()


def test_concurrent_puts_of_the_same_and_different_chunks(store: ChunkStore) -> None:
    blobs = [bytes([n % 7]) * (1000 + n % 7) for n in range(40)]
    errors: list[BaseException] = []
    assert store.size_bytes() == 0  # counted now, so the puts below update it incrementally

    def put(data: bytes) -> None:
        try:
            assert store.get(store.put(data)) == data
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=put, args=(blob,)) for blob in blobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.shas()) == 7
    assert store.size_bytes() == sum(1000 + n for n in range(7))
