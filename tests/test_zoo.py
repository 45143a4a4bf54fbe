"""The RobustBench zoo as users meet it: ids, the zoo root, missing and wrong files, the
download path (against a local fake of Google Drive), `gacd zoo`, `gacd evaluate` and
`gacd distill` with a `robustbench:` model. Checkpoints are written by RobustBench's own
modules (robustbench_reference.py); nothing is downloaded from the internet."""

from __future__ import annotations

import argparse
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

import gacd
from format_writers import write_cifar10
from gacd.cli import main
from gacd.data import read_dataset
from gacd.engine.export import load_model_meta
from gacd.errors import ConfigError
from gacd.models import zoo_download
from gacd.models.zoo import (
    ENV_ROOT,
    ZooError,
    build_zoo_model,
    checkpoint_path,
    find_entry,
    load_zoo_state,
    read_checkpoint,
    resolve_zoo_root,
    zoo_entries,
)
from gacd.models.zoo_table import ENTRIES
from gacd.training import load_teacher
from robustbench_reference import reference_model, save_robustbench_file, write_zoo_entry

R18 = "robustbench:cifar10/Linf/Sehwag2021Proxy_R18"  # ResNet-18: a quick real-size entry
WANG = "robustbench:cifar10/Linf/Wang2023Better_WRN-28-10"


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ROOT, raising=False)


@pytest.fixture(scope="module")
def r18_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A zoo root holding a random Sehwag2021Proxy_R18 checkpoint, and the module it is of."""
    root = tmp_path_factory.mktemp("zoo")
    return root, write_zoo_entry(root, R18, seed=7)


@pytest.fixture(scope="module")
def tiny_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar") / "cifar10"
    write_cifar10(root, n_per_batch=2, n_test=6, seed=3)
    return root


# ------------------------------------------------------------------------------ ids, root


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("cifar10/Linf/Wang2023Better_WRN-28-10", "not a RobustBench id"),
        ("robustbench:cifar10/Wang2023Better_WRN-28-10", "expected robustbench:<dataset>"),
        ("robustbench:imagenet/Linf/Salman2020Do_R18", "unknown dataset 'imagenet'"),
        ("robustbench:cifar10/linf/Wang2023Better_WRN-28-10", "unknown threat model 'linf'"),
        ("robustbench:cifar100/L2/Wang2023Better_WRN-28-10", "unknown threat model 'L2'"),
        ("robustbench:cifar10/Linf/Wang2023Better_WRN-28-1", "did you mean"),
        ("robustbench:cifar10/Linf/Debenedetti2022Light_XCiT-S12", "not implemented in gacd"),
    ],
)
def test_bad_ids_name_the_problem(bad: str, says: str) -> None:
    with pytest.raises(ZooError) as err:
        find_entry(bad)
    assert says in str(err.value)
    if says == "did you mean":
        assert "Wang2023Better_WRN-28-10" in str(err.value)


def test_every_table_id_resolves_to_its_entry() -> None:
    ids = [e.id for e in ENTRIES]
    assert len(set(ids)) == len(ids)
    for entry in ENTRIES:
        assert find_entry(entry.id) is entry
    assert len(zoo_entries("cifar100")) == sum(e.dataset == "cifar100" for e in ENTRIES)
    assert {e.threat for e in zoo_entries("cifar10", "L2")} == {"L2"}


def test_zoo_root_argument_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ZooError, match="GACD_ZOO") as err:
        resolve_zoo_root(None)
    assert "zoo_root" in str(err.value) and "--zoo-root" in str(err.value)
    monkeypatch.setenv(ENV_ROOT, "/from/env")
    assert resolve_zoo_root(None) == Path("/from/env")
    assert resolve_zoo_root("/from/arg") == Path("/from/arg")
    entry = find_entry(WANG)
    assert checkpoint_path(entry, "/z") == Path("/z/cifar10/Linf/Wang2023Better_WRN-28-10.pt")


def test_missing_checkpoint_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(ZooError) as err:
        gacd.load_model(WANG, zoo_root=tmp_path)
    text = str(err.value)
    assert str(tmp_path / "cifar10" / "Linf" / "Wang2023Better_WRN-28-10.pt") in text
    assert "https://drive.google.com/uc?id=1-6MYKJdECDVGaWjj6GgqvaT95BGKhUvI" in text
    assert "--download" in text and "load_model('Wang2023Better_WRN-28-10'" in text
    assert not (tmp_path / "cifar10").exists()  # nothing created offline


# ------------------------------------------------------------------------- wrong files


def _load_into_entry(zoo_id: str, path: Path) -> torch.nn.Module:
    entry = find_entry(zoo_id)
    model = build_zoo_model(entry)
    load_zoo_state(model, read_checkpoint(path), entry, path)
    return model


def test_another_architecture_is_refused_by_name(tmp_path: Path) -> None:
    r18 = reference_model("cifar10", "Linf", "Sehwag2021Proxy_R18")
    path = save_robustbench_file(r18, tmp_path / "r18.pt")
    with pytest.raises(ZooError) as err:
        _load_into_entry(WANG, path)
    text = str(err.value)
    assert WANG in text and "WRN-28-10 (DeepMind, SiLU)" in text
    assert "missing: " in text and "unexpected: " in text and "Nothing was loaded" in text


def test_wrong_class_count_names_the_shapes_and_loads_nothing(tmp_path: Path) -> None:
    model = reference_model("cifar100", "Linf", "Addepalli2022Efficient_RN18")
    path = save_robustbench_file(model, tmp_path / "c100.pt", "bare")
    entry = find_entry("robustbench:cifar10/Linf/Addepalli2022Efficient_RN18")
    ours = build_zoo_model(entry)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(ZooError) as err:
        load_zoo_state(ours, read_checkpoint(path), entry, path)
    assert "wrong shape: linear.weight (100, 512) (expected (10, 512))" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_an_extra_key_is_not_ignored(tmp_path: Path, r18_zoo) -> None:
    state = read_checkpoint(checkpoint_path(find_entry(R18), r18_zoo[0]))
    state["projection.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pt"
    torch.save(state, path)
    with pytest.raises(ZooError, match=r"unexpected: projection\.weight"):
        _load_into_entry(R18, path)


def test_old_files_without_batchnorm_counters_load(tmp_path: Path, r18_zoo) -> None:
    root, theirs = r18_zoo
    state = read_checkpoint(checkpoint_path(find_entry(R18), root))
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in state.items() if "num_batches_tracked" not in k}, path)
    ours = _load_into_entry(R18, path).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-4)


def test_files_that_are_not_plain_weights(tmp_path: Path, r18_zoo) -> None:
    state = read_checkpoint(checkpoint_path(find_entry(R18), r18_zoo[0]))
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(ZooError, match="weights_only=True") as err:
        read_checkpoint(pickled)
    assert "If you trust the file" in str(err.value)
    truncated = tmp_path / "truncated.pt"
    whole = checkpoint_path(find_entry(R18), r18_zoo[0]).read_bytes()
    truncated.write_bytes(whole[:4096])
    with pytest.raises(ZooError, match="truncated"):
        read_checkpoint(truncated)
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ZooError, match="holds no state dict"):
        read_checkpoint(listing)


# ------------------------------------------------------------------ download (local fake)


class _FakeDrive:
    """Google Drive's answers, as a local HTTP server: the virus-scan warning page with its
    confirmation form, then the file; or a quota page; or bytes that are no checkpoint."""

    def __init__(self, payload: bytes, mode: str = "warning") -> None:
        self.payload, self.mode, self.requests = payload, mode, []
        drive = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                drive.requests.append((url.path, query))
                if drive.mode == "quota":
                    return self._send(
                        b"<html><head><title>Google Drive - Quota exceeded</title></head>"
                        b"<body>Too many users have viewed or downloaded this file.</body>"
                        b"</html>",
                        "text/html; charset=utf-8",
                    )
                if url.path == "/download" and drive.mode == "warning":
                    page = (
                        "<html><head><title>Google Drive - Virus scan warning</title></head>"
                        '<body><form id="download-form" action="/confirmed" method="get">'
                        f'<input type="hidden" name="id" value="{query["id"]}">'
                        '<input type="hidden" name="export" value="download">'
                        '<input type="hidden" name="confirm" value="t">'
                        '<input type="hidden" name="uuid" value="abc-123">'
                        '<input type="submit" value="Download anyway"></form></body></html>'
                    )
                    return self._send(page.encode(), "text/html; charset=utf-8")
                self._send(drive.payload, "application/octet-stream")

            def _send(self, body: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def fake_drive(monkeypatch: pytest.MonkeyPatch, r18_zoo) -> Iterator[_FakeDrive]:
    payload = checkpoint_path(find_entry(R18), r18_zoo[0]).read_bytes()
    drive = _FakeDrive(payload)
    monkeypatch.setattr(
        zoo_download, "DOWNLOAD_URL", drive.url + "/download?id={id}&export=download&confirm=t"
    )
    thread = threading.Thread(target=drive.server.serve_forever, daemon=True)
    thread.start()
    yield drive
    drive.server.shutdown()
    drive.server.server_close()


def test_download_follows_the_warning_form_and_loads(
    fake_drive: _FakeDrive, r18_zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = gacd.load_model(R18, zoo_root=tmp_path, download=True)
    dest = tmp_path / "cifar10" / "Linf" / "Sehwag2021Proxy_R18.pt"
    assert dest.is_file() and not list(dest.parent.glob(".*part"))
    out = capsys.readouterr().out
    assert f"to {dest}" in out and f"saved {R18} to {dest}" in out
    first, second = fake_drive.requests
    asked = {"id": find_entry(R18).gdrive_id, "export": "download", "confirm": "t"}
    assert first == ("/download", asked)
    assert second[0] == "/confirmed" and second[1]["uuid"] == "abc-123"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), r18_zoo[1](x), rtol=0, atol=1e-4)
    gacd.load_model(R18, zoo_root=tmp_path, download=True)  # present: not fetched again
    assert len(fake_drive.requests) == 2


@pytest.mark.parametrize(("mode", "says"), [("quota", "Quota exceeded"), ("junk", "not a torch")])
def test_failed_download_leaves_no_file(
    fake_drive: _FakeDrive, tmp_path: Path, mode: str, says: str
) -> None:
    fake_drive.mode = mode
    if mode == "junk":
        fake_drive.payload = b"<!doctype html> sorry"
    with pytest.raises(ZooError, match=says):
        gacd.load_model(R18, zoo_root=tmp_path, download=True)
    folder = tmp_path / "cifar10" / "Linf"
    assert not list(folder.iterdir())  # neither the file nor a partial one


def test_cli_zoo_download_and_check(fake_drive: _FakeDrive, tmp_path: Path, capsys) -> None:
    assert main(["zoo", R18, "--download", "--zoo-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(present)" in out and "loaded: every key of the file fits ResNet-18" in out
    assert main(["zoo", R18, "--check", "--zoo-root", str(tmp_path)]) == 0


# ------------------------------------------------------------------------------ commands


def test_cli_zoo_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(WANG + " "))
    assert line.split()[-4:] == ["SiLU)", "92.44", "67.31", "8/255"]
    assert sum(ln.startswith("robustbench:") for ln in out.splitlines()) == len(ENTRIES)
    assert main(["zoo", "--dataset", "cifar100", "--markdown"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| robustbench")]
    assert rows and all("robustbench:cifar100/" in r for r in rows)
    assert len(rows) == len(zoo_entries("cifar100"))
    assert main(["zoo", "--dataset", "imagenet"]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err


def test_cli_zoo_describes_an_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", WANG, "--zoo-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(checkpoint_path(find_entry(WANG), tmp_path)) + " (missing)" in out
    assert "clean 92.44%, AutoAttack 67.31%" in out and "'dm_wrn'" in out
    assert main(["zoo", WANG, "--check", "--zoo-root", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def _natural_accuracy(model: torch.nn.Module, root: Path) -> float:
    test = read_dataset("cifar10", root).test
    x = torch.from_numpy(np.asarray(test.images)).float() / 255.0
    with torch.no_grad():
        pred = model(x).argmax(1)
    return 100.0 * (pred == torch.from_numpy(np.asarray(test.labels))).float().mean().item()


def test_gacd_evaluate_a_robustbench_id(
    r18_zoo, tiny_cifar10: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, theirs = r18_zoo
    data = ["--data-root", str(tiny_cifar10), "--device", "cpu"]
    args = ["evaluate", R18, *data, "--attacks", "natural,pgd2", "--out", str(tmp_path / "flag")]
    assert main([*args, "--zoo-root", str(root)]) == 0
    payload = json.loads((tmp_path / "flag" / "evaluation.json").read_text())
    assert payload["model"] == R18 and payload["dataset"] == "cifar10"
    assert payload["samples"] == 6
    assert payload["accuracy"]["natural"] == pytest.approx(_natural_accuracy(theirs, tiny_cifar10))
    monkeypatch.setenv(ENV_ROOT, str(root))  # the same through the environment
    args[-1] = str(tmp_path / "env")
    assert main(args) == 0
    again = json.loads((tmp_path / "env" / "evaluation.json").read_text())
    assert again["accuracy"] == payload["accuracy"]


def test_gacd_evaluate_missing_checkpoint(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", WANG, "--zoo-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Wang2023Better_WRN-28-10.pt" in err and "--download" in err


def test_distill_from_a_robustbench_teacher(r18_zoo, tiny_cifar10: Path, tmp_path: Path) -> None:
    root = r18_zoo[0]
    data = [f"data.root={tiny_cifar10}", "data.name=cifar10", "data.val_fraction=0.0"]
    quick = ["data.batch_size=5", "optim.epochs=1", "attack.steps=1", "eval.val_attack_steps=0"]
    run = [f"zoo_root={root}", f"out={tmp_path / 'ard'}", "device=cpu", "progress=false"]
    args = ["distill", "--teacher", R18, "--method", "ard", "--student", "resnet20"]
    assert main([*args, *run, *data, *quick]) == 0
    meta = load_model_meta(tmp_path / "ard" / "model_last.pt")
    assert meta["teacher"] == R18 and meta["method"] == "ard"


def test_teacher_of_another_label_set_is_refused(
    r18_zoo, tiny_cifar10: Path, tmp_path: Path
) -> None:
    raw = read_dataset("cifar10", tiny_cifar10)
    teacher = load_teacher(R18, raw, torch.device("cpu"), zoo_root=str(r18_zoo[0]))
    assert teacher.spec["arch"] == "resnet18" and teacher.spec["num_classes"] == 10
    c100 = "robustbench:cifar100/Linf/Addepalli2022Efficient_RN18"
    write_zoo_entry(tmp_path, c100)
    with pytest.raises(ConfigError, match="100 classes"):
        load_teacher(c100, raw, torch.device("cpu"), zoo_root=str(tmp_path))


def test_analyze_accepts_a_robustbench_teacher(
    r18_zoo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gacd.commands.analysis_inputs import check_models

    student = tmp_path / "student.pt"
    gacd.export_model(build_zoo_model(find_entry(R18)), student, meta={"dataset": "cifar10"})
    with pytest.raises(ZooError, match="GACD_ZOO"):  # analyze reads the zoo from $GACD_ZOO
        check_models(R18, [("s", str(student))])
    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "empty"))
    with pytest.raises(ZooError, match=r"Sehwag2021Proxy_R18\.pt"):
        check_models(R18, [("s", str(student))])
    monkeypatch.setenv(ENV_ROOT, str(r18_zoo[0]))
    assert check_models(R18, [("s", str(student))]) == {"teacher": R18, "s": str(student)}
