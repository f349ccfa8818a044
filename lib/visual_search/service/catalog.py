"""The catalog: every image's metadata, the query log and the click log, in one SQLite file.

Why SQLite: it is a real transactional database in the standard library, one file
that a student can open with ``sqlite3 catalog.sqlite3``. WAL mode lets searches read
while a writer commits, so the service never blocks a search on an upload.

The catalog is the **source of truth**. The vector index is a cache of the
``embedding`` column that can always be rebuilt from it (see ``core.reconcile``),
which is what makes a crash at any moment recoverable.

Tables (schema version ``SCHEMA_VERSION``, kept in SQLite's ``user_version``):

- ``images``: id, owner (NULL for the gallery), uploaded_at (Unix seconds),
  private, blocked, content_hash (SHA-256 of the decoded pixels, see ``content_hash``),
  model_version of its embedding, the embedding itself (float32 bytes), and for
  gallery images their Fashion-MNIST label and source ("train:123").
- ``queries``: query_id, time, user, model_version, shown (the ids in the order shown, JSON),
  experiment (JSON or NULL: what an online experiment did to this impression, e.g.
  ``{"experiment": "enc", "variant": "b"}``, an interleaving's teams, a RandPair swap;
  written by ``visual_search.online.experiment``, read by ``online.logs``). Added in
  schema version 2; a version-1 file gains the column when it is opened.
- ``clicks``: query_id, image_id, rank, time.
- ``meta``: key/value settings (the active model version, the gallery it was built from).

Each thread gets its own connection: sqlite3 connections must not be shared between
threads, and FastAPI runs plain ``def`` routes on a thread pool.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visual_search.errors import NotFoundError, ServiceError

#: Bumped when the tables change; a newer file is refused rather than misread.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a deleted id is never reused
    owner         TEXT,
    uploaded_at   REAL    NOT NULL,
    private       INTEGER NOT NULL DEFAULT 0 CHECK (private IN (0, 1)),
    blocked       INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
    content_hash  TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    embedding     BLOB    NOT NULL,
    label         INTEGER,
    source        TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_hash ON images (content_hash);
CREATE TABLE IF NOT EXISTS queries (
    query_id      TEXT PRIMARY KEY,
    time          REAL NOT NULL,
    user          TEXT,
    model_version TEXT NOT NULL,
    shown         TEXT NOT NULL,
    experiment    TEXT
);
CREATE TABLE IF NOT EXISTS clicks (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT    NOT NULL REFERENCES queries (query_id),
    image_id INTEGER NOT NULL,
    rank     INTEGER NOT NULL,
    time     REAL    NOT NULL
);
"""

_COLUMNS = "id, owner, uploaded_at, private, blocked, content_hash, model_version, label, source"


def content_hash(pixels: np.ndarray) -> str:
    """SHA-256 of decoded pixels (shape and dtype included), as 64 hex digits.

    Hashing the decoded pixels rather than the file means the same picture saved as
    PNG and as a re-encoded PNG (different bytes, same pixels) counts as one image.
    """
    pixels = np.ascontiguousarray(pixels)
    h = hashlib.sha256(f"{pixels.dtype.str} {list(pixels.shape)}\n".encode())
    h.update(pixels.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ImageRecord:
    """One row of ``images`` (``embedding`` only when it was asked for)."""

    id: int
    owner: str | None
    uploaded_at: float
    private: bool
    blocked: bool
    content_hash: str
    model_version: str
    label: int | None
    source: str
    embedding: np.ndarray | None = None

    def visible_to(self, user: str | None) -> bool:
        """Whether ``user`` may see this image: it is not blocked, and not private to someone else."""
        return not self.blocked and (not self.private or (user is not None and user == self.owner))


@dataclass(frozen=True)
class NewImage:
    """What ``Catalog.add`` stores for one image (``id`` None: the next free id)."""

    content_hash: str
    model_version: str
    embedding: np.ndarray
    source: str
    owner: str | None = None
    private: bool = False
    label: int | None = None
    id: int | None = None
    blocked: bool = False


def _record(row: Sequence, embedding: bytes | None = None) -> ImageRecord:
    vec = None if embedding is None else np.frombuffer(embedding, dtype=np.float32)
    return ImageRecord(int(row[0]), row[1], float(row[2]), bool(row[3]), bool(row[4]), row[5], row[6],
                       None if row[7] is None else int(row[7]), row[8], vec)


class Catalog:
    """The metadata store. Open it with the path of its SQLite file (created if missing).

    Raises:
        ServiceError: the file is not a catalog, or has a newer schema than this code knows.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Writers of this process queue on a lock rather than in SQLite's busy handler, which sleeps and
        # polls (milliseconds each time): eight threads logging queries at once otherwise wait on each other's sleeps.
        # Other processes (a second server, a script) are still kept out by SQLite's own lock and busy timeout.
        self._writer = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        try:
            conn = self._conn()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ServiceError(f"{self.path}: catalog schema version {version} is newer than this code's {SCHEMA_VERSION}")
            with conn:
                conn.executescript(_SCHEMA)
                # schema 1 lacked queries.experiment (CREATE ... IF NOT EXISTS keeps an old table as it is). Keyed on
                # the column, not the version: a crash between ALTER and the version bump, or two processes opening
                # one old file at once, must not fail the next open.
                if "experiment" not in {row[1] for row in conn.execute("PRAGMA table_info(queries)")}:
                    try:
                        conn.execute("ALTER TABLE queries ADD COLUMN experiment TEXT")
                    except sqlite3.OperationalError as err:
                        if "duplicate column" not in str(err):
                            raise
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as err:
            raise ServiceError(f"{self.path}: not a catalog database ({err})") from None

    # ------------------------------------------------------------ connections
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")  # readers never wait for the writer
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a commit survives a process crash
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _write(self, sql: str, args: Sequence = ()) -> sqlite3.Cursor:
        conn = self._conn()
        with self._writer, conn:  # one transaction; rolled back if it raises
            conn.execute("BEGIN IMMEDIATE")
            return conn.execute(sql, args)

    def close_thread(self) -> None:
        """Close the calling thread's connection (a background job's, when it ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with self._all_lock:
                self._all.remove(conn)
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        """Close every thread's connection."""
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    # ------------------------------------------------------------------- meta
    def get_meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    # ----------------------------------------------------------------- images
    def add(self, images: Iterable[NewImage]) -> list[int]:
        """Insert images in one transaction (all or none). Returns their ids."""
        conn = self._conn()
        now = time.time()
        ids = []
        with self._writer, conn:
            conn.execute("BEGIN IMMEDIATE")
            for im in images:
                vec = np.ascontiguousarray(im.embedding, dtype=np.float32)
                cur = conn.execute(
                    "INSERT INTO images (id, owner, uploaded_at, private, blocked, content_hash, model_version, embedding, label, source) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (im.id, im.owner, now, int(im.private), int(im.blocked), im.content_hash, im.model_version, vec.tobytes(), im.label, im.source),
                )
                ids.append(int(cur.lastrowid))
        return ids

    def get(self, image_id: int) -> ImageRecord | None:
        """The record of one image, or None if there is none."""
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM images WHERE id = ?", (int(image_id),)).fetchone()
        return None if row is None else _record(row)

    def records(self, ids: Sequence[int], embeddings: bool = False) -> dict[int, ImageRecord]:
        """Records of the given ids that exist (one query, one consistent snapshot)."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        cols = _COLUMNS + (", embedding" if embeddings else "")
        rows = self._conn().execute(f"SELECT {cols} FROM images WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)).fetchall()
        return {int(r[0]): _record(r[:9], r[9] if embeddings else None) for r in rows}

    def set_flags(self, image_id: int, private: bool | None = None, blocked: bool | None = None) -> ImageRecord:
        """Change ``private`` and/or ``blocked``; returns the new record.

        Raises:
            NotFoundError: no image has this id.
        """
        sets, args = [], []
        for name, value in (("private", private), ("blocked", blocked)):
            if value is not None:
                sets.append(f"{name} = ?")
                args.append(int(bool(value)))
        if sets:
            cur = self._write(f"UPDATE images SET {', '.join(sets)} WHERE id = ?", (*args, int(image_id)))
            if cur.rowcount == 0:
                raise NotFoundError(f"image {image_id}: no such image")
        record = self.get(image_id)
        if record is None:
            raise NotFoundError(f"image {image_id}: no such image")
        return record

    def delete(self, image_id: int) -> ImageRecord:
        """Delete one image's row; returns what it was.

        Raises:
            NotFoundError: no image has this id.
        """
        conn = self._conn()
        with self._writer, conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(f"SELECT {_COLUMNS} FROM images WHERE id = ?", (int(image_id),)).fetchone()
            if row is None:
                raise NotFoundError(f"image {image_id}: no such image")
            conn.execute("DELETE FROM images WHERE id = ?", (int(image_id),))
        return _record(row)

    def count_hash(self, digest: str) -> int:
        """How many images have this content hash (a stored file is shared by all of them)."""
        return self._conn().execute("SELECT COUNT(*) FROM images WHERE content_hash = ?", (digest,)).fetchone()[0]

    def ids(self) -> np.ndarray:
        """Every image id, ascending, int64."""
        rows = self._conn().execute("SELECT id FROM images ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def embeddings(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(ids, float32 [n, D], model versions)`` of all images (or of ``ids``), ascending by id."""
        if ids is None:
            rows = self._conn().execute("SELECT id, embedding, model_version FROM images ORDER BY id").fetchall()
        else:
            rows = self._conn().execute(
                "SELECT id, embedding, model_version FROM images WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
                (json.dumps([int(i) for i in ids]),),
            ).fetchall()
        if not rows:
            return np.empty(0, np.int64), np.empty((0, 0), np.float32), []
        ids_out = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        return ids_out, vecs, [r[2] for r in rows]

    def hashes(self) -> list[tuple[int, str]]:
        """``(id, content_hash)`` of every image, ascending by id (what a re-embedding job reads)."""
        return [(int(r[0]), r[1]) for r in self._conn().execute("SELECT id, content_hash FROM images ORDER BY id")]

    def rows_not_from(self, model_version: str) -> list[tuple[int, str]]:
        """``(id, content_hash)`` of images whose embedding comes from another model."""
        rows = self._conn().execute("SELECT id, content_hash FROM images WHERE model_version != ? ORDER BY id", (model_version,))
        return [(int(r[0]), r[1]) for r in rows]

    def set_embeddings(self, ids: Sequence[int], vectors: np.ndarray, model_version: str) -> None:
        """Replace the embeddings of ``ids`` with ``vectors`` from ``model_version``, in one transaction."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        conn = self._conn()
        with self._writer, conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE images SET embedding = ?, model_version = ? WHERE id = ?",
                             ((vectors[i].tobytes(), model_version, int(image_id)) for i, image_id in enumerate(ids)))

    def random_visible(self, rng: np.random.Generator) -> ImageRecord | None:
        """A random image that is neither private nor blocked (None if there is none)."""
        conn = self._conn()
        lo, hi = conn.execute("SELECT MIN(id), MAX(id) FROM images").fetchone()
        if lo is None:
            return None
        for _ in range(20):  # ids have gaps after deletes: probe a few times, then fall back to a scan
            row = conn.execute(f"SELECT {_COLUMNS} FROM images WHERE id >= ? AND private = 0 AND blocked = 0 ORDER BY id LIMIT 1",
                               (int(rng.integers(lo, hi + 1)),)).fetchone()
            if row is not None:
                return _record(row)
        row = conn.execute(f"SELECT {_COLUMNS} FROM images WHERE private = 0 AND blocked = 0 ORDER BY id LIMIT 1").fetchone()
        return None if row is None else _record(row)

    # ------------------------------------------------------------------- logs
    def log_query(self, query_id: str, user: str | None, model_version: str, shown: Sequence[int],
                  experiment: dict | None = None) -> None:
        """Record what one search showed, in order, and what an experiment did to it (JSON-able, or None)."""
        if experiment is not None and not isinstance(experiment, dict):
            raise ServiceError(f"experiment {experiment!r}: expected a JSON object (a dict) or None")
        try:
            extra = None if experiment is None else json.dumps(experiment, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ServiceError(f"experiment {experiment!r}: not a JSON object ({err})") from None
        self._write("INSERT INTO queries (query_id, time, user, model_version, shown, experiment) VALUES (?, ?, ?, ?, ?, ?)",
                    (query_id, time.time(), user, model_version, json.dumps([int(i) for i in shown]), extra))

    def log_click(self, query_id: str, image_id: int, rank: int) -> None:
        """Record a click, after checking that the image was shown at that rank for that query.

        Raises:
            ServiceError: an unknown query id, or an image that was not shown at ``rank`` for it.
        """
        row = self._conn().execute("SELECT shown FROM queries WHERE query_id = ?", (query_id,)).fetchone()
        if row is None:
            raise ServiceError(f"query_id {query_id!r}: no such query")
        shown = json.loads(row[0])
        if image_id not in shown:
            raise ServiceError(f"image_id {image_id}: was not shown for query {query_id!r}")
        if not 1 <= rank <= len(shown) or shown[rank - 1] != image_id:
            raise ServiceError(f"rank {rank}: image {image_id} was shown at rank {shown.index(image_id) + 1} for query {query_id!r}, not {rank}")
        self._write("INSERT INTO clicks (query_id, image_id, rank, time) VALUES (?, ?, ?, ?)", (query_id, int(image_id), int(rank), time.time()))

    def counts(self) -> dict[str, int]:
        """``{"images", "searches", "clicks"}``: rows in each table."""
        conn = self._conn()
        return {name: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for name, table in (("images", "images"), ("searches", "queries"), ("clicks", "clicks"))}


__all__ = ["SCHEMA_VERSION", "Catalog", "ImageRecord", "NewImage", "NotFoundError", "content_hash"]
