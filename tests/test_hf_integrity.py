"""HF import integrity (ipo_jax/checkpoint/manifest.py): damaged weights found by their SHA-256
(manifest, HF cache blob name, hub download record), the SHA256SUMS an export writes; and the
convert / serve checks that run before a model is loaded (output path, full disk, address)."""

import hashlib
import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors import SafetensorError
from safetensors.numpy import load_file

from ipo_jax.checkpoint import load_hf, save_hf
from ipo_jax.checkpoint.manifest import MANIFEST_NAME, IntegrityError, ManifestError, read_manifest
from ipo_jax.cli import main


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny HF export (with the SHA256SUMS save_hf writes), built once; tests copy it."""
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config

    return save_hf(init_decoder(preset_config("tiny-qwen3"), seed=0), tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture
def model_dir(exported, tmp_path):
    return Path(shutil.copytree(exported, tmp_path / "model"))


def _data_offset(weights: Path) -> int:
    """Where the tensor bytes start: after the 8-byte header length and the JSON header."""
    with open(weights, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def flip_bytes(weights: Path, count: int = 64) -> None:
    at = _data_offset(weights) + 1024
    with open(weights, "r+b") as f:
        f.seek(at)
        data = f.read(count)
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in data))


def write_nans(weights: Path) -> None:
    """16 bytes of float32 NaN over the start of the first tensor's data."""
    with open(weights, "r+b") as f:
        f.seek(_data_offset(weights))
        f.write(np.full(4, np.nan, np.float32).tobytes())


def as_hf_cache(src: Path, root: Path) -> Path:
    """`src` laid out as the HF hub cache does: snapshots/<rev>/<file> -> ../../blobs/<digest>
    (sha256 for the large LFS files, the git blob sha1 for small ones)."""
    repo = root / "models--someone--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.name == MANIFEST_NAME:
            continue
        data = f.read_bytes()
        blob = (hashlib.sha256(data).hexdigest() if f.suffix == ".safetensors"
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob))
    return snapshot


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out, captured.err
    return lines[0]


# ------------------------------------------------------------------------------ the export's manifest


def test_export_writes_a_manifest_of_every_file_that_sha256sum_accepts(exported):
    files = sorted(p.name for p in exported.iterdir() if p.name != MANIFEST_NAME)
    entries = read_manifest(exported / MANIFEST_NAME)
    assert sorted(entries) == files and "model.safetensors" in files
    assert all(entries[name] == _sha256(exported / name) for name in files)
    if shutil.which("sha256sum"):  # the standard tool reads it as it is
        result = subprocess.run(["sha256sum", "--check", "--strict", MANIFEST_NAME], cwd=exported, capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.count(": OK") == len(files), result.stdout + result.stderr


def test_a_sharded_export_lists_each_shard_and_reimports_verified(exported, tmp_path, caplog):
    model = load_hf(exported)
    out = save_hf(model, tmp_path / "sharded", max_shard_size="100KB")
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and set(shards) <= set(read_manifest(out / MANIFEST_NAME))
    flip_bytes(out / shards[-1])
    with pytest.raises(IntegrityError, match=shards[-1]):
        load_hf(out)


# ------------------------------------------------------------------------------ import


def test_flipped_bytes_are_found_by_the_directory_manifest(model_dir):
    expected = _sha256(model_dir / "model.safetensors")
    flip_bytes(model_dir / "model.safetensors", 64)
    actual = _sha256(model_dir / "model.safetensors")
    with pytest.raises(IntegrityError) as caught:
        load_hf(model_dir)
    message = str(caught.value)
    assert str(model_dir / "model.safetensors") in message and expected in message and actual in message


def test_nan_bytes_in_an_hf_cache_snapshot_are_found_by_the_blob_name(model_dir, tmp_path, capsys):
    snapshot = as_hf_cache(model_dir, tmp_path / "hub")
    blob = Path(os.path.realpath(snapshot / "model.safetensors")).name
    load_hf(snapshot)  # intact: verified against its blob name, loads
    write_nans(snapshot / "model.safetensors")
    out = tmp_path / "out"
    assert main(["convert", "--from", "hf", "--to", "orbax", str(snapshot), str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"model.safetensors: sha256 is {_sha256(snapshot / 'model.safetensors')}, expected {blob}" in line
    assert "Hugging Face cache blob name" in line and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_without_the_check_the_damage_would_load(model_dir, caplog):
    """The damage the check finds is real: unverified, the NaN bytes load as the model's values."""
    (model_dir / MANIFEST_NAME).unlink()
    write_nans(model_dir / "model.safetensors")
    first = next(iter(load_file(model_dir / "model.safetensors").values()))
    assert np.isnan(first.reshape(-1)[:4].astype(np.float32)).all()
    with caplog.at_level(logging.WARNING, logger="ipo_jax.checkpoint"):
        load_hf(model_dir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "model.safetensors not verified" in warnings[0] and str(model_dir) in warnings[0]


def test_a_verified_import_says_nothing(model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="ipo_jax.checkpoint"):
        load_hf(model_dir)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_hub_local_dir_download_record_is_checked(model_dir):
    (model_dir / MANIFEST_NAME).unlink()
    record = model_dir / ".cache" / "huggingface" / "download" / "model.safetensors.metadata"
    record.parent.mkdir(parents=True)
    record.write_text(f"{'1' * 40}\n{_sha256(model_dir / 'model.safetensors')}\n1700000000.0\n")
    load_hf(model_dir)
    flip_bytes(model_dir / "model.safetensors")
    with pytest.raises(IntegrityError, match="download record"):
        load_hf(model_dir)


def test_convert_verify_accepts_a_manifest_from_elsewhere_in_either_format(model_dir, tmp_path, capsys):
    manifest = model_dir / MANIFEST_NAME
    moved = tmp_path / "sums.txt"
    manifest.rename(moved)  # names relative to another directory: matched by file name
    assert main(["convert", "--from", "hf", "--to", "orbax", "--verify", str(moved), str(model_dir), str(tmp_path / "a")]) == 0
    bsd = tmp_path / "sums.bsd"  # `shasum -a 256 --tag` / `openssl dgst -sha256` form
    bsd.write_text(f"SHA256 (model.safetensors) = {_sha256(model_dir / 'model.safetensors').upper()}\n")
    assert main(["convert", "--from", "hf", "--to", "hf", "--verify", str(bsd), str(model_dir), str(tmp_path / "b")]) == 0
    assert read_manifest(tmp_path / "b" / MANIFEST_NAME)["model.safetensors"] == _sha256(model_dir / "model.safetensors")
    capsys.readouterr()
    flip_bytes(model_dir / "model.safetensors")
    assert main(["convert", "--from", "hf", "--to", "orbax", "--verify", str(moved), str(model_dir), str(tmp_path / "c")]) == 2
    line = _one_error_line(capsys)
    assert f"expected {read_manifest(moved)['model.safetensors']} (from manifest {moved})" in line
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("text, fragment", [
    ("not a digest line\n", "sums.txt:1: expected '<64 hex digits>  <file name>'"),
    (f"{'a' * 64}  config.json\n", "has no entry for model.safetensors"),
    ("", "an empty manifest"),
    (f"{'a' * 64}  x\n{'b' * 64}  x\n", "sums.txt:2: x is listed twice"),
])
def test_a_manifest_that_does_not_fit_is_refused(model_dir, tmp_path, text, fragment):
    (tmp_path / "sums.txt").write_text(text)
    with pytest.raises(ManifestError, match=fragment.replace("(", r"\(")):
        load_hf(model_dir, verify=tmp_path / "sums.txt")


def test_the_hashing_runs_beside_the_load_and_is_cancelled_with_it(model_dir, monkeypatch):
    """A load that fails (here: the device refuses the first tensor) stops the hashing thread, which
    reading 1 byte at a time would otherwise still be running."""
    import threading

    from ipo_jax.checkpoint import hf, manifest

    monkeypatch.setattr(manifest, "_CHUNK", 1)

    def fail(*args, **kwargs):
        raise RuntimeError("device gone")

    monkeypatch.setattr(hf.jax, "make_array_from_callback", fail)
    with pytest.raises(RuntimeError, match="device gone"):
        load_hf(model_dir)
    assert not [t for t in threading.enumerate() if t.name == "sha256-verify"]


# ------------------------------------------------------------------------------ convert: checked before loading


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model is an error: what a test then sees was found before the load."""
    from ipo_jax import checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(checkpoint, "load_hf", refuse)
    monkeypatch.setattr(checkpoint, "load_orbax", refuse)


def _loop(tmp: Path) -> str:
    (tmp / "loop").symlink_to("loop")
    return str(tmp / "loop")


def _non_empty(tmp: Path) -> str:
    (tmp / "busy").mkdir()
    (tmp / "busy" / "keep.txt").write_text("keep")
    return str(tmp / "busy")


@pytest.mark.parametrize("make_target, fragment", [
    (_loop, "a symbolic link loop"),
    (lambda t: _loop(t) + "/sub", "a symbolic link loop"),
    (_non_empty, "exists and is not empty; pass --overwrite"),
], ids=["loop", "under-a-loop", "non-empty"])
def test_convert_output_problems_are_found_before_the_model_loads(model_dir, tmp_path, capsys, no_loading, make_target, fragment):
    target = make_target(tmp_path)
    before = _tree(tmp_path)
    assert main(["convert", "--from", "hf", "--to", "hf", str(model_dir), target]) == 2
    assert fragment in _one_error_line(capsys)
    assert _tree(tmp_path) == before


def test_convert_through_a_symlink_writes_the_real_directory(model_dir, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    assert main(["convert", "--from", "hf", "--to", "hf", str(model_dir), str(tmp_path / "link")]) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "model", "real"]  # no temporaries


def test_convert_to_hf_on_a_full_disk_is_one_line_and_leaves_nothing(model_dir, tmp_path, capsys, monkeypatch):
    """The disk fills while safetensors writes a shard: its error (the text safetensors 0.8 gives
    on ENOSPC, checked on a 64 KiB tmpfs) becomes exit 2 naming the file, temporaries removed."""
    from ipo_jax.checkpoint import hf

    def fill_the_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 4096)  # part of the shard got written
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(hf, "save_file", fill_the_disk)
    before = _tree(tmp_path)
    out = tmp_path / "out"
    assert main(["convert", "--from", "hf", "--to", "hf", str(model_dir), str(out)]) == 2
    assert _one_error_line(capsys) == f"ipo-jax convert: error: cannot write {out / 'model.safetensors'}: No space left on device"
    assert _tree(tmp_path) == before


def test_convert_verify_applies_to_hf_sources_only(tmp_path, capsys, no_loading):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "sums").write_text(f"{'a' * 64}  model.safetensors\n")
    assert main(["convert", "--from", "orbax", "--to", "hf", "--verify", str(tmp_path / "sums"), str(tmp_path / "ckpt"),
                 str(tmp_path / "out")]) == 2
    assert "--verify checks HF safetensors files" in _one_error_line(capsys)


# ------------------------------------------------------------------------------ serve: the address before the model


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def _serve(*args: str) -> list[str]:
    from ipo_jax.data.tokenizer import packaged_qwen3_tokenizer_dir

    return ["serve", "--model", "preset:tiny-qwen3", "--tokenizer", str(packaged_qwen3_tokenizer_dir()), *args]


def test_serve_address_problems_are_found_before_the_model_loads(busy_port, capsys, monkeypatch):
    from ipo_jax import serve

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the address was checked")

    monkeypatch.setattr(serve, "load_served_model", refuse)
    for args, fragment in [
        (("--port", str(busy_port)), f"cannot listen on 127.0.0.1:{busy_port}: Address already in use"),
        (("--host", "nonexistent.invalid", "--port", "0"), "--host 'nonexistent.invalid': cannot resolve it"),
        (("--host", "192.0.2.1", "--port", "0"), "not an address of this machine"),  # TEST-NET-1, never local
        (("--port", "70000"), "--port 70000: expected 0..65535"),
        (("--port", "0", "--chunk-tokens", "0"), "--chunk-tokens is 0; expected an integer >= 1"),
        (("--port", "0", "--admit-tokens", "-1"), "--admit-tokens is -1; expected an integer >= 1"),
    ]:
        assert main(_serve(*args)) == 2
        line = _one_error_line(capsys)
        assert line.startswith("ipo-jax serve: error: ") and fragment in line, line


def test_serve_refuses_connections_until_the_model_is_loaded(monkeypatch):
    """Bound early but listening only once loaded: a client is refused, not left hanging."""
    from ipo_jax import serve

    seen = {}

    def load(*args, **kwargs):
        address = seen["sock"].getsockname()[:2]
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect(address)
        raise KeyboardInterrupt  # stop here, as Ctrl-C during the load would

    real_bind = serve.bind

    def bind(*args, **kwargs):
        seen["sock"] = real_bind(*args, **kwargs)
        return seen["sock"]

    monkeypatch.setattr(serve, "load_served_model", load)
    monkeypatch.setattr(serve, "bind", bind)
    assert main(_serve("--port", "0")) == 130
    assert seen["sock"].fileno() == -1  # closed on the way out

