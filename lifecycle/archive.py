"""The account backup archive: its format, what it holds, and how it is read and checked.

An archive is a plain (uncompressed) tar, so `tar tvf` lists it and `tar xOf ... manifest.json`
prints its manifest:

    manifest.json                      first: what the rest is, and how to check it
    schema/<table>.copy.gz             each table of the account's schema, PostgreSQL COPY text
    public/<table>.copy.gz             the account's public rows (its Account row, its users,
                                       AccountLLM, AccountTool, ... found by introspection)
    uploads/<token>/<name>             the account's uploaded files, as stored

Each data member is gzip (level 1: the format everyone reads, and fast enough that compression
is not what bounds a backup; zstd is not installed here) of COPY's text format, one line per
row, which `zcat` shows and any PostgreSQL loads with COPY FROM. The manifest says the format
version, the schema's migration state (its django_migrations rows), each member's row count,
size and sha256, the sequences' values, and the fingerprints of the encryption keys
(core.crypto.key_fingerprints), never a key. It carries its own sha256 too, so a flipped byte
anywhere is found before anything is restored from it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from django.apps import apps
from django.conf import settings
from django.db import models

FORMAT = "palaver-account-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
COMPRESS_LEVEL = 1
CHUNK = 1 << 20

Source = str | os.PathLike[str] | BinaryIO | IO[bytes]


class ArchiveError(Exception):
    """An archive that cannot be restored here; the message says why."""


class CorruptArchive(ArchiveError):
    """Not a Palaver backup, or bytes changed since it was made (a checksum fails)."""


class NewerFormat(ArchiveError):
    """Made by a newer Palaver, in an archive format this code cannot read."""


class NewerMigrations(ArchiveError):
    """The account's schema was at migrations this code does not have."""


class OtherKeySet(ArchiveError):
    """Its secrets were encrypted with keys that are not in SECRET_ENCRYPTION_KEYS here."""


class RestoreRefused(ArchiveError):
    """The archive is fine, but restoring it as asked would break something (a name or an
    email already taken, an account that exists, ...)."""


# Public models that reference an account but are not its data: sign-ins end with a restore,
# the admin log is the operators', and the backup registry lists archives (it cannot be inside
# one). Every other public model with a foreign key to the account, or to one of its rows, is
# backed up: tests/test_lifecycle_backup.py fails when a new one is neither.
EXCLUDED_PUBLIC_MODELS = {
    "accounts.session": "sessions are sign-ins, not data: a restored account signs in again",
    "admin.logentry": "the operators' audit log",
}
EXCLUDED_PUBLIC_APPS = {"lifecycle": "the backup registry lists archives; it is not in them"}


@dataclass(frozen=True)
class OwnedModel:
    """A public model whose rows belong to the account: the Account itself (`via` None) or a
    model reached by a foreign key `via` to another owned model."""

    model: type[models.Model]
    via: models.ForeignKey[Any, Any] | None

    @property
    def table(self) -> str:
        return str(self.model._meta.db_table)

    @property
    def label(self) -> str:
        return str(self.model._meta.label_lower)


def _account_model() -> type[models.Model]:
    return apps.get_model(settings.TENANT_MODEL)


def _public_app_labels() -> set[str]:
    """Apps whose tables live in the public schema: every installed app but the account apps."""
    tenant = {app.rsplit(".", 1)[-1] for app in settings.TENANT_APPS}
    return {config.label for config in apps.get_app_configs() if config.label not in tenant}


def excluded_reason(model: type[models.Model]) -> str | None:
    label = model._meta.label_lower
    if label in EXCLUDED_PUBLIC_MODELS:
        return EXCLUDED_PUBLIC_MODELS[label]
    return EXCLUDED_PUBLIC_APPS.get(model._meta.app_label)


def owned_public_models() -> list[OwnedModel]:
    """The public models whose rows belong to one account, parents before children, found by
    walking the model graph from the Account (so a new public model with a foreign key to the
    account, or to its users, is backed up without anyone listing it)."""
    account = _account_model()
    public = _public_app_labels()
    candidates = [
        model
        for model in apps.get_models(include_auto_created=True)
        if model._meta.app_label in public
        and not model._meta.proxy
        and model._meta.managed
        and model is not account
        and excluded_reason(model) is None
    ]
    owned: list[OwnedModel] = [OwnedModel(account, None)]
    found = {account}
    progress = True
    while progress:
        progress = False
        for model in candidates:
            if model in found:
                continue
            links = [
                field
                for field in model._meta.concrete_fields
                if isinstance(field, models.ForeignKey) and field.related_model in found
            ]
            if links:
                # A link straight to the account is the clearest path to it.
                links.sort(key=lambda field: field.related_model is not account)
                owned.append(OwnedModel(model, links[0]))
                found.add(model)
                progress = True
    return owned


def catalog_references() -> dict[type[models.Model], list[tuple[type[models.Model], Any]]]:
    """Public models that are not the account's but that its rows point at (the LLM and tool
    catalogs, permission groups...), each with the (model, foreign key) pairs pointing at it,
    from its public rows and from its schema's tables. Their ids are this database's: another
    database may number the same catalog entry differently, so archives name them by a
    natural key as well (catalog_key)."""
    owned = {item.model for item in owned_public_models()}
    public = _public_app_labels()
    tenant = {app.rsplit(".", 1)[-1] for app in settings.TENANT_APPS}
    found: dict[type[models.Model], list[tuple[type[models.Model], Any]]] = {}
    for model in apps.get_models(include_auto_created=True):
        if model not in owned and model._meta.app_label not in tenant:
            continue
        for field in model._meta.concrete_fields:
            target = getattr(field, "related_model", None)
            if (
                isinstance(field, models.ForeignKey)
                and target is not None
                and target not in owned
                and target._meta.app_label in public
            ):
                found.setdefault(target, []).append((model, field))
    return found


def catalog_key(model: type[models.Model]) -> str | None:
    """The column of a catalog model's natural key: its one unique field besides the primary
    key (LLM.name, Tool.slug, Group.name); None when it has none."""
    for field in model._meta.concrete_fields:
        if field.unique and not field.primary_key:
            return str(field.column)
    return None


def account_filter_path(owned: OwnedModel, by_model: dict[Any, OwnedModel]) -> str:
    """The ORM lookup from `owned`'s model to the account id (`account`, `user__account`...)."""
    parts: list[str] = []
    current = owned
    while current.via is not None:
        parts.append(current.via.name)
        current = by_model[current.via.related_model]
    return "__".join([*parts, "pk"]) if parts else "pk"


# --- writing -------------------------------------------------------------------------------------


@dataclass
class Member:
    name: str
    path: Path
    bytes: int
    sha256: str
    rows: int | None = None


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what goes through to `target`."""

    def __init__(self, target: BinaryIO) -> None:
        self._target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
        self._target.write(view)
        self.size += len(view)
        return len(view)


class MemberWriter:
    """One gzip data member being written to the spool: `write` COPY's bytes, rows counted as
    lines (COPY's text format escapes newlines inside values)."""

    def __init__(self, spool: Path, name: str) -> None:
        self.name = name
        self.path = spool / name.replace("/", "__")
        self._raw = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._hashing = _HashingFile(self._raw)
        # gzip.GzipFile writes a header with mtime; 0 keeps archives of the same data identical.
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", compresslevel=COMPRESS_LEVEL, fileobj=self._hashing, mtime=0
        )
        self.rows = 0

    def write(self, data: bytes | memoryview) -> None:
        self.rows += bytes(data).count(b"\n") if isinstance(data, memoryview) else data.count(b"\n")
        self._gzip.write(data)

    def close(self) -> Member:
        self._gzip.close()
        self._raw.close()
        return Member(
            self.name, self.path, self._hashing.size, self._hashing.hash.hexdigest(), self.rows
        )


class Spool:
    """Members are written to a temporary directory first: a tar header needs the member's size,
    and the manifest, which goes first, needs every member's checksum."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="palaver-backup-"))
        self.members: list[Member] = []

    def data_member(self, name: str) -> MemberWriter:
        return MemberWriter(self.dir, name)

    def add(self, member: Member) -> None:
        self.members.append(member)

    def raw_member(self, name: str, source: IO[bytes]) -> Member:
        path = self.dir / f"raw-{len(self.members)}"
        digest = hashlib.sha256()
        size = 0
        with open(path, "wb") as out:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        member = Member(name, path, size, digest.hexdigest())
        self.members.append(member)
        return member

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def seal_manifest(manifest: dict[str, Any]) -> bytes:
    """The manifest's bytes, with `checksum`: the sha256 of its canonical JSON without it."""
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    sealed = {**body, "checksum": hashlib.sha256(canonical).hexdigest()}
    return json.dumps(sealed, indent=1, sort_keys=True).encode() + b"\n"


def write_tar(output: BinaryIO, manifest: dict[str, Any], members: list[Member]) -> None:
    with tarfile.open(fileobj=output, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        data = seal_manifest(manifest)
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        info.mode = 0o600
        tar.addfile(info, io.BytesIO(data))
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.size = member.bytes
            info.mode = 0o600
            with open(member.path, "rb") as handle:
                tar.addfile(info, handle)


# --- reading -------------------------------------------------------------------------------------


def _open_source(source: Source) -> tuple[BinaryIO, bool]:
    """A binary file for `source`, and whether this module opened it (and must close it)."""
    if isinstance(source, str | os.PathLike):
        try:
            return open(source, "rb"), True
        except OSError as exc:
            raise ArchiveError(f"Cannot read {os.fspath(source)}: {exc.strerror}.") from None
    return source, False  # type: ignore[return-value]


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except ValueError:
        raise CorruptArchive("The archive is corrupt: its manifest is not JSON.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptArchive("This is not a Palaver account backup (its manifest says otherwise).")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise CorruptArchive("The archive is corrupt: its manifest has no format version.")
    if version > FORMAT_VERSION:
        raise NewerFormat(
            f"The archive is in format version {version}, made by a newer Palaver; this one "
            f"reads up to version {FORMAT_VERSION}. Restore it with a newer Palaver."
        )
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    if manifest.get("checksum") != hashlib.sha256(canonical).hexdigest():
        raise CorruptArchive("The archive is corrupt: its manifest's checksum does not match.")
    return manifest


class ArchiveReader:
    """Reads an archive front to back (a pipe or a storage's stream will do): the manifest,
    then each member, each checked against the manifest as it is read."""

    def __init__(self, source: Source) -> None:
        self._file, self._owned = _open_source(source)
        try:
            self._tar = tarfile.open(fileobj=self._file, mode="r|")  # noqa: SIM115
            first = self._tar.next()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            self.close()
            raise CorruptArchive(f"The archive is corrupt: not a readable tar ({exc}).") from None
        if first is None or first.name != MANIFEST or not first.isfile():
            self.close()
            raise CorruptArchive(f"The archive is corrupt: its first member is not {MANIFEST}.")
        handle = self._tar.extractfile(first)
        assert handle is not None
        try:
            self.manifest = _parse_manifest(handle.read())
        except BaseException:
            self.close()
            raise
        self._expected = {entry["member"]: entry for entry in self._entries()}

    def _entries(self) -> Iterator[dict[str, Any]]:
        yield from self.manifest.get("tables", [])
        yield from self.manifest.get("uploads", [])

    def members(self) -> Iterator[tuple[dict[str, Any], IO[bytes]]]:
        """Each member's manifest entry and a file that reads its bytes (decompressed for data
        members); the checksum is checked once the file has been read to its end."""
        seen: set[str] = set()
        while True:
            try:
                info = self._tar.next()
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise CorruptArchive(f"The archive is corrupt: {exc}.") from None
            if info is None:
                break
            entry = self._expected.get(info.name)
            if entry is None or not info.isfile():
                raise CorruptArchive(
                    f"The archive is corrupt: it holds {info.name!r}, which its manifest does "
                    "not list."
                )
            if info.size != entry["bytes"]:
                raise CorruptArchive(
                    f"The archive is corrupt: {info.name} is {info.size} bytes, its manifest "
                    f"says {entry['bytes']}."
                )
            handle = self._tar.extractfile(info)
            assert handle is not None
            checked = _CheckedReader(handle, entry)
            if entry["member"].endswith(".gz"):
                yield entry, _GunzipReader(checked, entry["member"])  # type: ignore[misc]
            else:
                yield entry, checked  # type: ignore[misc]
            checked.finish()
            seen.add(info.name)
        missing = [name for name in self._expected if name not in seen]
        if missing:
            raise CorruptArchive(
                f"The archive is corrupt: it lacks {missing[0]}"
                + (f" and {len(missing) - 1} more members" if len(missing) > 1 else "")
                + " (cut short?)."
            )

    def close(self) -> None:
        if self._owned:
            self._file.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _CheckedReader(io.RawIOBase):
    def __init__(self, handle: IO[bytes], entry: dict[str, Any]) -> None:
        self._handle = handle
        self._entry = entry
        self._hash = hashlib.sha256()
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._handle.read(len(buffer))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CorruptArchive(
                f"The archive is corrupt: {self._entry['member']} is cut short ({exc})."
            ) from None
        self._hash.update(data)
        buffer[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        if self._done:
            return
        while self.read(CHUNK):
            pass
        self._done = True
        if self._hash.hexdigest() != self._entry["sha256"]:
            raise CorruptArchive(
                f"The archive is corrupt: {self._entry['member']} does not match its checksum."
            )


class _GunzipReader(io.RawIOBase):
    def __init__(self, raw: _CheckedReader, name: str) -> None:
        self._raw = raw
        self._name = name
        self._gzip = gzip.GzipFile(fileobj=io.BufferedReader(raw, CHUNK), mode="rb")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._gzip.read(size)
        except (OSError, EOFError, zlib.error) as exc:
            # Decompression failing means a changed byte; the checksum would say so too, later.
            raise CorruptArchive(f"The archive is corrupt: {self._name} ({exc}).") from None

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def read_manifest(source: Source) -> dict[str, Any]:
    """The archive's manifest, checked (its own checksum, its format version). Reads only the
    first member; the data members are checked when restored."""
    reader = ArchiveReader(source)
    reader.close()
    return reader.manifest
