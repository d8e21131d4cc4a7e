"""Integrity of model files: SHA-256 manifests and the digests the Hugging Face hub records.

A manifest is the `sha256sum` text format, one file a line: ``<64 hex digits>  <name>`` (GNU; a
``*`` before the name, binary mode, is accepted), or the BSD tag form ``SHA256 (<name>) = <hex>``
(``shasum -a 256 --tag``). Names are relative to the manifest's directory, so
``cd DIR && sha256sum -c SHA256SUMS`` checks a directory by hand. `save_hf` writes one, named
`MANIFEST_NAME`, listing every file it exports.

Where a weight file's expected digest comes from (every source found is checked):
  - a manifest given explicitly (``convert --verify FILE``), or `MANIFEST_NAME` inside the model
    directory: it must list every weight file;
  - the Hugging Face cache: ``snapshots/<rev>/model.safetensors`` is a symlink to
    ``../../blobs/<sha256 of the file>`` (large files are stored under their SHA-256);
  - a ``huggingface-cli download --local-dir`` directory: ``.cache/huggingface/download/<name>.metadata``
    records the file's etag, its SHA-256 for large (LFS) files.
A file with no source is loaded unverified (the caller says so in one line).

`BackgroundVerifier` hashes the files in a thread while the caller reads the same files, so the
hash costs no second pass over the disk where the page cache holds the model, and wall time is
the longer of the two rather than their sum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import threading
from pathlib import Path

MANIFEST_NAME = "SHA256SUMS"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_GNU_LINE = re.compile(r"(?P<digest>[0-9a-fA-F]{64}) [ *](?P<name>.+)")
_BSD_LINE = re.compile(r"SHA256 \((?P<name>.+)\) = (?P<digest>[0-9a-fA-F]{64})")
_CHUNK = 8 << 20  # large reads: hashlib drops the GIL for them, so the hashing thread runs beside the loader


class IntegrityError(ValueError):
    """A model file's SHA-256 is not the one recorded for it."""


class ManifestError(ValueError):
    """A manifest cannot be read, or does not describe the files it should."""


@dataclasses.dataclass(frozen=True)
class Expected:
    """A digest a file should have, and where that expectation comes from (shown on a mismatch)."""

    digest: str
    source: str
    remedy: str = ""


def sha256_file(path: str | Path, stop: threading.Event | None = None) -> str:
    """The hex SHA-256 of a file, read in large chunks; "" when `stop` is set before the end."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            if stop is not None and stop.is_set():
                return ""
    return digest.hexdigest()


def read_manifest(path: str | Path) -> dict[str, str]:
    """{name relative to the manifest's directory: lower-case hex digest}; ManifestError names
    the file and line of anything else."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a SHA-256 manifest (not UTF-8 text)") from None
    except IsADirectoryError:
        raise ManifestError(f"{path} is a directory; expected a SHA-256 manifest file (sha256sum format)") from None
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} does not exist") from None
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _GNU_LINE.fullmatch(line) or _BSD_LINE.fullmatch(line)
        if match is None:
            raise ManifestError(f"{path}:{number}: expected '<64 hex digits>  <file name>' (sha256sum format), "
                                f"got {line[:80]!r}")
        name = os.path.normpath(match["name"])
        digest = match["digest"].lower()
        if entries.get(name, digest) != digest:
            raise ManifestError(f"{path}:{number}: {name} is listed twice with different digests")
        entries[name] = digest
    if not entries:
        raise ManifestError(f"{path}: an empty manifest; expected '<64 hex digits>  <file name>' lines")
    return entries


def write_manifest(directory: str | Path, names: list[str] | None = None) -> Path:
    """Write `MANIFEST_NAME` in `directory` listing `names` (default: every file in it, sorted)."""
    directory = Path(directory)
    if names is None:
        names = sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                       if p.is_file() and p.name != MANIFEST_NAME)
    lines = [f"{sha256_file(directory / name)}  {name}\n" for name in names]
    path = directory / MANIFEST_NAME
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _entry_for(manifest: dict[str, str], manifest_dir: Path, file: Path) -> str | None:
    """The manifest's digest for `file`: by its path relative to the manifest, else by its name
    where only one entry has that name (a manifest written elsewhere, e.g. `sha256sum dir/*`)."""
    try:
        relative = os.path.normpath(os.path.relpath(file, manifest_dir))
    except ValueError:  # another drive
        relative = None
    if relative in manifest:
        return manifest[relative]
    same_name = [digest for name, digest in manifest.items() if Path(name).name == file.name]
    return same_name[0] if len(same_name) == 1 else None


def _hub_expectations(file: Path, model_dir: Path) -> list[Expected]:
    found = []
    if file.is_symlink():  # the HF cache: snapshots/<rev>/<name> -> ../../blobs/<sha256>
        blob = Path(os.path.realpath(file))
        if blob.parent.name == "blobs" and _HEX64.fullmatch(blob.name):
            found.append(Expected(blob.name, f"the Hugging Face cache blob name ({blob})",
                                  "the cached copy is damaged: delete the blob and download the model again"))
    relative = file.relative_to(model_dir) if file.is_relative_to(model_dir) else Path(file.name)
    metadata = model_dir / ".cache" / "huggingface" / "download" / f"{relative}.metadata"
    try:  # huggingface_hub's local-dir record: commit hash, etag, timestamp, one a line
        lines = metadata.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    if len(lines) >= 2 and _HEX64.fullmatch(lines[1].strip()):
        found.append(Expected(lines[1].strip(), f"the download record {metadata}",
                              f"download the file again, or remove {metadata} if you changed it on purpose"))
    return found


def expected_digests(files: list[Path], model_dir: Path, manifest: str | Path | None = None
                     ) -> tuple[dict[Path, list[Expected]], list[Path]]:
    """({file: the digests it should have}, the files nothing vouches for).

    `manifest` (or `MANIFEST_NAME` in `model_dir`) must list every file: ManifestError otherwise."""
    model_dir = Path(model_dir)
    manifests = []
    if manifest is not None:
        manifests.append((Path(manifest), "--verify"))
    if (model_dir / MANIFEST_NAME).is_file() and (manifest is None or Path(manifest).resolve() != (model_dir / MANIFEST_NAME).resolve()):
        manifests.append((model_dir / MANIFEST_NAME, "the model directory's own manifest"))
    loaded = [(path, read_manifest(path), how) for path, how in manifests]
    checks: dict[Path, list[Expected]] = {}
    unverified = []
    for file in files:
        found = []
        for path, entries, how in loaded:
            digest = _entry_for(entries, path.parent, file)
            if digest is None:
                raise ManifestError(f"manifest {path} ({how}) has no entry for {file.name}; it does not describe {model_dir}")
            found.append(Expected(digest, f"manifest {path}",
                                  "the file is damaged or not the one the manifest describes"))
        found += _hub_expectations(file, model_dir)
        if found:
            checks[file] = found
        else:
            unverified.append(file)
    return checks, unverified


def check_digest(file: Path, actual: str, expected: list[Expected]) -> None:
    for e in expected:
        if actual != e.digest:
            raise IntegrityError(f"{file}: sha256 is {actual}, expected {e.digest} (from {e.source}); {e.remedy}")


class BackgroundVerifier:
    """Hash `checks`' files in a thread; `failure()` polls, `wait()` joins and raises IntegrityError."""

    def __init__(self, checks: dict[Path, list[Expected]]):
        self._checks = checks
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.hashed_bytes = 0
        self._thread = threading.Thread(target=self._run, name="sha256-verify", daemon=True)
        if checks:
            self._thread.start()

    def _run(self) -> None:
        try:
            for file, expected in self._checks.items():
                actual = sha256_file(file, self._stop)
                if self._stop.is_set():
                    return
                self.hashed_bytes += file.stat().st_size
                check_digest(file, actual, expected)
        except BaseException as e:  # noqa: BLE001 -- handed to the caller's thread by wait()
            self._error = e

    def failure(self) -> BaseException | None:
        """The error found so far (a mismatch, or an OSError reading a file), else None."""
        return self._error

    def wait(self) -> None:
        if self._thread.is_alive():
            self._thread.join()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
