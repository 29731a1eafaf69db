"""The artifact store on real files: what verifies, what does not, and what a crash or a second writer leaves.

No Spark: artifacts here are a few bytes written by the test or by real Python processes started by it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from jobs import artifacts


def write_two_files(folder: Path) -> None:
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "card.json").write_text('{"name": "test"}\n')


def leftovers(parent: Path) -> list[str]:
    """Dotted temporaries in `parent` (lock files of pointers are meant to stay)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def python(script: str, crash_at: str | None = None, **kwargs) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "MODALRANK_CRASH_AT"}
    if crash_at:
        env["MODALRANK_CRASH_AT"] = crash_at
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_an_atomic_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "reports" / "train.json"
    artifacts.write_json(target, {"a": 1})
    artifacts.write_json(target, {"a": 2, "b": [1, 2]})
    assert json.loads(target.read_text()) == {"a": 2, "b": [1, 2]}
    artifacts.write_text(tmp_path / "reports" / "train.md", "# Train\n")
    assert (tmp_path / "reports" / "train.md").read_text() == "# Train\n"
    assert leftovers(tmp_path / "reports") == []


def test_a_built_artifact_has_a_manifest_of_every_file_and_verifies(tmp_path):
    import hashlib

    folder = artifacts.build_artifact(tmp_path / "ranker-1", write_two_files, {"kind": "test"})
    assert artifacts.verify(folder) == []
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["meta"] == {"kind": "test"}
    assert manifest["written_by"]["pid"] == os.getpid()
    weights = bytes(range(256)) * 4
    assert manifest["files"] == {
        "card.json": {"sha256": hashlib.sha256(b'{"name": "test"}\n').hexdigest(), "size": 17},
        "weights.bin": {"sha256": hashlib.sha256(weights).hexdigest(), "size": len(weights)},
    }
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "manifest.json", "weights.bin"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda f: (f / "manifest.json").unlink(), "no manifest.json"),
        (lambda f: (f / "weights.bin").unlink(), "weights.bin is missing"),
        (lambda f: (f / "extra.bin").write_bytes(b"foreign"), "extra.bin is not in the manifest"),
        (lambda f: (f / "weights.bin").write_bytes(b"short"), "weights.bin has 5 bytes, the manifest says 1024"),
        (lambda f: (f / "manifest.json").write_text("{not json"), "unreadable manifest.json"),
    ],
    ids=["partial", "missing-file", "foreign-file", "truncated", "garbled-manifest"],
)
def test_a_damaged_artifact_is_detected_and_rebuilt_in_a_fresh_folder(tmp_path, damage, problem):
    folder = artifacts.build_artifact(tmp_path / "ranker-1", write_two_files)
    damage(folder)
    problems = artifacts.verify(folder)
    assert any(problem in p for p in problems), problems
    assert not artifacts.is_verified(folder)
    with pytest.raises(artifacts.ArtifactError, match="does not verify"):
        artifacts.require_verified(folder)

    artifacts.build_artifact(folder, write_two_files)
    assert artifacts.verify(folder) == []
    assert not (folder / "extra.bin").exists()
    assert leftovers(tmp_path) == []  # the damaged folder was moved aside and removed


def test_one_changed_byte_fails_the_checksum(tmp_path):
    folder = artifacts.build_artifact(tmp_path / "ranker-1", write_two_files)
    data = bytearray((folder / "weights.bin").read_bytes())
    data[500] ^= 0x01  # same size: only the sha256 can tell
    (folder / "weights.bin").write_bytes(bytes(data))
    assert artifacts.verify(folder) == ["weights.bin does not match its sha256 in the manifest"]


def test_a_verified_artifact_already_in_place_is_kept(tmp_path):
    folder = artifacts.build_artifact(tmp_path / "ranker-1", write_two_files)
    before = (folder / "manifest.json").read_text()
    artifacts.build_artifact(folder, lambda temporary: (temporary / "other.bin").write_bytes(b"x"))
    assert (folder / "manifest.json").read_text() == before and not (folder / "other.bin").exists()
    assert leftovers(tmp_path) == []


BUILD = """
import sys
from pathlib import Path
from jobs import artifacts

def write(folder):
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "card.json").write_text('{"name": "test"}\\n')

artifacts.build_artifact(Path(sys.argv[1]), write, crash_prefix="test.build")
print("built", flush=True)
"""


@pytest.mark.parametrize("point", ["test.build.files_written", "test.build.manifest_written"])
def test_a_writer_killed_mid_build_leaves_no_artifact_and_the_next_build_clears_its_temporary(tmp_path, point):
    target = tmp_path / "ranker-1"
    killed = python(BUILD.replace("sys.argv[1]", repr(str(target))), crash_at=point)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not target.exists()  # nothing at the artifact's name: a reader or a reuse check finds no artifact
    assert len(leftovers(tmp_path)) == 1  # the dead writer's temporary folder

    artifacts.build_artifact(target, write_two_files)
    assert artifacts.verify(target) == []
    assert leftovers(tmp_path) == []


RACING_BUILD = """
import sys, time
from pathlib import Path
from jobs import artifacts, config

target, barrier, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
config.configure_logging()

def write(folder):
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "card.json").write_text('{"name": "test"}\\n')
    # Both writers have a complete temporary folder before either publishes: the rename race is certain.
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.01)

artifacts.build_artifact(target, write)
print("done", flush=True)
"""


def test_two_processes_building_the_same_artifact_leave_one_verified_artifact(tmp_path):
    target, barrier = tmp_path / "models" / "ranker-1", tmp_path / "barrier"
    barrier.mkdir()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", RACING_BUILD, str(target), str(barrier), name],
            env=os.environ | {"PYTHONPATH": str(REPO_ROOT)},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("a", "b")
    ]
    outputs = [writer.communicate(timeout=120) for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], outputs
    assert artifacts.verify(target) == []
    logs = "".join(err for _, err in outputs)
    assert logs.count(f"artifact {target} written") == 1, logs
    assert logs.count("verifies: keeping that one") == 1, logs
    assert leftovers(target.parent) == []


def test_a_pointer_moves_only_when_the_comparison_allows_it(tmp_path):
    pointer = tmp_path / "ranker" / "current.json"
    newer = lambda now: now is None or now["ds"] <= ds  # noqa: E731

    for ds, written in [("2026-11-20", True), ("2026-11-25", True), ("2026-11-21", False), ("2026-11-25", True)]:
        assert artifacts.update_pointer(pointer, {"ds": ds}, replaces=newer) is written
    assert json.loads(pointer.read_text()) == {"ds": "2026-11-25"}
    assert leftovers(pointer.parent) == []
