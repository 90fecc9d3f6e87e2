"""Knowledge distillation from a teacher net (``trainer.distill``): the term, and runs that use it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra_utils import compose_config
from torch import nn

from qnnrun.checkpoint import file_sha256
from qnnrun.data import DataInfo
from qnnrun.distill import Distillation, distillation
from qnnrun.engine import train
from qnnrun.errors import QnnrunError


class _Fixed(nn.Module):
    """A 'teacher' whose logits are given."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_the_term_is_weight_t_squared_kl_of_softened_distributions_and_only_the_student_learns() -> None:
    teacher_logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    student = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 0.0]], requires_grad=True)
    distill = Distillation(_Fixed(teacher_logits), weight=0.5, temperature=2.0)
    term = distill(torch.zeros(2, 1, 8, 8), student)
    p = torch.softmax(teacher_logits / 2.0, dim=1)
    q = torch.softmax(student.detach() / 2.0, dim=1)
    by_hand = 0.5 * 4.0 * (p * (p.log() - q.log())).sum(1).mean()
    assert term.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert distill.last.item() == pytest.approx(by_hand.item() / 0.5, rel=1e-6)
    term.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert Distillation(_Fixed(teacher_logits), 1.0, 3.0)(torch.zeros(2), teacher_logits.clone()).item() == \
        pytest.approx(0.0, abs=1e-7)


def test_the_teacher_runs_in_eval_mode_without_gradients_and_is_left_unchanged() -> None:
    """A teacher handed over in training mode (BatchNorm, Dropout) is evaluated: its running
    statistics do not move, dropout is off (the same logits twice), and no gradient reaches it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    before = {key: value.clone() for key, value in net.state_dict().items()}
    distill = Distillation(net, weight=1.0, temperature=2.0)
    images, student = torch.randn(6, 4), torch.randn(6, 3, requires_grad=True)
    first = distill(images, student)
    first.backward()
    assert not net.training and all(not m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters()) and student.grad is not None
    assert distill(images, student).item() == first.item()
    assert all(torch.equal(before[key], value) for key, value in net.state_dict().items())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("teacher")
    train(compose_config(["method=fp", "trainer.epochs=2"], data_dir=root / "data"), root / "fp")
    return root / "fp"


@pytest.mark.parametrize("method", ["ste", "lsq", "bnn"])
def test_a_distilled_run_records_the_teacher_and_the_term(teacher: Path, tmp_path: Path, method: str) -> None:
    overrides = [f"method={method}", "bits=2", "trainer.epochs=2", f"init_from={teacher}",
                 f"trainer.distill.teacher={teacher}", "trainer.distill.weight=0.7"]
    summary = train(compose_config(overrides, data_dir=teacher.parent / "data"), tmp_path / "run")
    assert summary["distill"] == {"teacher": str(teacher), "teacher_sha256": file_sha256(teacher / "last.ckpt"),
                                  "weight": 0.7, "temperature": 4.0}
    history = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)["history"]
    assert all(entry["train_distill"] > 0 for entry in history)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["distill"]["weight"] == 0.7


def test_a_resume_refuses_a_teacher_file_that_changed(teacher: Path, tmp_path: Path) -> None:
    """The teacher is named by a path; a resume whose file holds other weights (a teacher retrained
    in place, a run folder still training) would distil from another net: refused, nothing changed."""
    shutil.copytree(teacher, tmp_path / "teacher")
    overrides = ["bits=2", "trainer.epochs=1", f"trainer.distill.teacher={tmp_path / 'teacher'}"]
    train(compose_config(overrides, data_dir=teacher.parent / "data"), tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    original = (tmp_path / "teacher" / "last.ckpt").read_bytes()
    changed = torch.load(tmp_path / "teacher" / "last.ckpt", weights_only=True)
    changed["model"]["classifier.weight"] += 0.01
    torch.save(changed, tmp_path / "teacher" / "last.ckpt")
    extend = [*overrides[:1], "trainer.epochs=2", overrides[2], "resume=true", "extend=true"]
    with pytest.raises(QnnrunError, match=r"^trainer.distill.teacher=\S+ is not the file this run started with "
                                          r"\(SHA-256 [0-9a-f]{12}\.\.\. then, [0-9a-f]{12}\.\.\. now\)"):
        train(compose_config(extend, data_dir=teacher.parent / "data"), tmp_path / "run")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
    (tmp_path / "teacher" / "last.ckpt").write_bytes(original)
    assert train(compose_config(extend, data_dir=teacher.parent / "data"), tmp_path / "run")["epochs"] == 2


def test_a_teacher_for_other_data_is_refused(teacher: Path) -> None:
    cfg = compose_config([f"trainer.distill.teacher={teacher}"])
    cifar = DataInfo("cifar10", 3, 32, 10, 50000, 10000)
    with pytest.raises(QnnrunError, match=r"trained on digits \(channels, size, classes \(1, 8, 10\)\); this run's"):
        distillation(cfg, cifar, torch.device("cpu"))
    assert distillation(compose_config([]), cifar, torch.device("cpu")) is None


def test_a_teacher_for_other_data_of_the_same_shape_is_named_in_a_warning(teacher: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config([f"trainer.distill.teacher={teacher}"])
    with caplog.at_level("WARNING", logger="qnnrun"):
        assert distillation(cfg, DataInfo("digits", 1, 8, 10, 1437, 360), torch.device("cpu")) is not None
        assert "was trained on" not in caplog.text
        assert distillation(cfg, DataInfo("other8x8", 1, 8, 10, 1437, 360), torch.device("cpu")) is not None
    assert "was trained on digits, this run trains on other8x8" in caplog.text


def test_the_teacher_takes_the_students_compile_and_memory_format(teacher: Path) -> None:
    digits = DataInfo("digits", 1, 8, 10, 1437, 360)
    eager = distillation(compose_config([f"trainer.distill.teacher={teacher}"]), digits, torch.device("cpu"))
    fast = distillation(compose_config([f"trainer.distill.teacher={teacher}", "trainer.compile=true",
                                        "trainer.channels_last=true"]), digits, torch.device("cpu"))
    assert not isinstance(eager.teacher, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(fast.teacher, torch._dynamo.eval_frame.OptimizedModule)
    images = torch.randn(16, 1, 8, 8).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast.teacher(images), eager.teacher(images))


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["trainer.precision=bf16"], ["trainer.compile=true"], ["trainer.devices=2"]])
def test_distillation_with_bf16_compile_and_two_processes(teacher: Path, tmp_path: Path, extra: list[str]) -> None:
    overrides = ["bits=2", "trainer.epochs=1", "trainer.device=cpu", f"trainer.distill.teacher={teacher}", *extra]
    summary = train(compose_config(overrides, data_dir=teacher.parent / "data"), tmp_path / "run")
    assert summary["distill"]["teacher"] == str(teacher) and summary["test_acc"] > 50
