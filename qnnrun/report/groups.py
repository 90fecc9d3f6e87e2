"""Runs grouped by everything but their seed, how a group is named, and the groups' Pareto front.

A group is the runs that agree in method, model, data set, weight and activation bits (a mixed run's
per-layer widths), epochs and every other key set on the command line (``.hydra/overrides.yaml``),
except the keys given to ``--ignore`` (e.g. ``init_from`` when each seed fine-tunes its own float
run) and a ``method.<option>`` the run's method does not read (:func:`reads`). A run that leaves
such a key (one other runs set) at its default takes the value its ``.hydra/config.yaml`` holds,
where that is a plain value, or for a config group (``optim``) the option ``.hydra/hydra.yaml``
says it composed: so ``method.stages=3`` typed and the default 3 are one group, and
``--paired method.stages=3`` finds the runs at the default. Values have one spelling
(:func:`~qnnrun.report.records.canonical`: ``optim.lr=1e-2`` and ``0.01`` are one).

Also here: the first/last-layer policy of a group as tables and labels name it (``LAYER_KEYS``,
``LAYERS``, :attr:`Group.layers`), a group's label (:func:`group_label`), the accuracy-vs-GBOPs Pareto
front (:func:`front_groups`) and a group's logged values by epoch (:func:`values_by_epoch`).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from qnnrun.config import method_options
from qnnrun.report.records import CURVE_TAGS, DONE, DUPLICATE, Identity, Problem, Run, canonical, config_text

# A search preset's variables (search.<name>) set a mixed run's widths, which its identity holds already.
SEARCH_PREFIX = "search."
# The first/last-layer policy (float, 8 bits or the run's own bits: GBOPs and weight size change
# several-fold with it): the config keys, and the name labels and tables give it where runs differ in it.
LAYER_KEYS = ("quant.first_layer", "quant.last_layer")
LAYERS = "first/last"
# The override prefixes a float run (32-bit weights and inputs) does not read.
FLOAT_IGNORES = ("quant.", "bits.")
# A run within its group: its seed, and its values of the keys grouped over like the seed (--ignore).
Replicate = tuple[int | None, tuple[str | None, ...]]


@dataclass
class Group:
    """Runs that differ at most in their seed."""

    identity: Identity
    extras: dict[str, str]
    runs: list[Run] = field(default_factory=list)
    ignored: tuple[str, ...] = ()  # the override keys grouped over like the seed (--ignore), sorted

    def replicate(self, run: Run) -> Replicate:
        """What tells ``run`` apart within the group: its seed, and its values of the ignored keys
        (``init_from`` when each seed fine-tunes its own float run; None where unset)."""
        return run.seed, tuple(value_text(run, key) for key in self.ignored)

    @property
    def defaults(self) -> set[str]:
        """The keys of ``extras`` no run of the group typed: values read from their configs."""
        return {key for key in self.extras if not any(key in run.overrides for run in self.runs)}

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.status == DONE]

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.done if metric in r.metrics]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else None

    @property
    def bits_label(self) -> str:
        return self.identity.bits_label

    @property
    def layers(self) -> str | None:
        """The first/last-layer policy of the finished runs as tables show it: ``fp``, ``8`` or ``same``
        when both layers share it, else ``first/last`` (``8/fp``); None for float runs (where it changes
        nothing) and where no run's config tells it."""
        if self.identity.mixed or self.identity.is_float:
            return None  # float: it changes nothing; mixed: the widths say what each layer ran at
        told = sorted({first if first == last else f"{first}/{last}" for first, last in
                       (r.layers for r in self.done if r.layers)})
        return " or ".join(told) or None


@functools.lru_cache(maxsize=256)
def reads(method: str, key: str) -> bool:
    """Whether runs of ``method`` read override ``key``: every key but a ``method.<option>`` that is
    not among :func:`~qnnrun.config.method_options` (``method.alpha_end`` for bnn, ``method.stages``
    for ste; ``method.name`` is read); a method without a config file reads every key."""
    if not key.startswith("method.") or key == "method.name":
        return True
    options = method_options(method)
    return options is None or key.split(".")[1] in options


def group_runs(runs: Sequence[Run], ignore: Collection[str] = ()) -> list[Group]:
    """Runs with a known identity, grouped by it and by their other overrides (seed and the override
    keys in ``ignore`` aside), in the order of their identities and overrides, a method's mixed groups
    after its uniform ones (their ``bits_w``/``bits_a`` are only the widths no rule set)."""
    groups: dict[tuple[Identity, tuple[tuple[str, str], ...]], Group] = {}
    keys = sorted({key for run in runs for key in run.overrides if key not in ignore})
    for run in runs:
        if run.identity is None:
            continue
        # A mixed run's widths are its identity: the search variables and the first/last-layer policy
        # (which its layer rules override) tell nothing more; nor does an option its method ignores.
        # A float run ignores the bits and the quantizer options (as qnnrun.runs.identity_fields has it).
        wanted = [k for k in keys if reads(run.identity.method, k)
                  and not (run.identity.mixed and (k.startswith(SEARCH_PREFIX) or k in LAYER_KEYS))
                  and not (run.identity.is_float and k.startswith(FLOAT_IGNORES))]
        values = ((k, value_text(run, k)) for k in wanted)
        extras = {k: v for k, v in values if v is not None}
        key = (run.identity, tuple(sorted(extras.items())))
        groups.setdefault(key, Group(run.identity, extras, ignored=tuple(sorted(ignore)))).runs.append(run)
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0].dataset, k[0].model, k[0].method, k[0].mixed, k))]


def value_text(run: Run, key: str) -> str | None:
    """The value of override ``key`` a run typed, else the one it left at its default (:func:`_default_text`)."""
    return run.overrides[key] if key in run.overrides else _default_text(run, key)


def _default_text(run: Run, key: str) -> str | None:
    """The value of ``key`` a run left at its default: a plain value of its config, or the option of
    a config group it composed (``optim``: ``sgd``, from ``.hydra/hydra.yaml``)."""
    text = config_text(run.config, key)
    if text is None and key in run.choices:
        text = canonical(run.choices[key])
    return text


def drop_repeated_seeds(groups: Sequence[Group]) -> list[Problem]:
    """Count each replicate of a group (its seed, with its values of the ``--ignore`` keys) once:
    where one finished in several folders given together (a run copied, or trained again into another
    sweep folder), the first folder by path stays in the group and each other one leaves it as a
    ``duplicate`` Problem naming both accuracies, so that means, std, counts, curves and pairs never
    count a run twice. Runs of one seed from two ``init_from`` under ``--ignore init_from`` both count."""
    problems = []
    for g in groups:
        first: dict[Replicate, Run] = {}
        kept = []
        for run in sorted(g.runs, key=lambda r: str(r.path)):
            replicate = g.replicate(run)
            counted = first.get(replicate) if run.status == DONE else None
            if counted is None:
                if run.status == DONE:
                    first[replicate] = run
                kept.append(run)
                continue
            told = "".join(f", {key}={value}" for key, value in zip(g.ignored, replicate[1]))
            problems.append(Problem(
                run.path, DUPLICATE,
                f"seed {run.seed}{told} of {g.identity.method} {g.bits_label} finished here "
                f"({run.metrics['test_acc']:.2f}%) and in {counted.path} ({counted.metrics['test_acc']:.2f}%): "
                f"counted once, there",
                tuple(run.command_line)))
        g.runs = kept
    return problems


def varying_keys(groups: Sequence[Group]) -> list[str]:
    """Override keys whose value is not the same in every group: the columns worth showing; last
    ``LAYERS`` (in place of the override keys that set it) when the quantized groups differ in their
    first/last-layer policy."""
    keys = sorted({k for g in groups for k in g.extras})
    varying = [k for k in keys if len({g.extras.get(k, "") for g in groups}) > 1]
    if len({g.layers for g in groups if g.layers}) > 1:
        varying = [k for k in varying if k not in LAYER_KEYS] + [LAYERS]
    return varying


def shown_value(group: Group, key: str) -> str:
    """The group's value of a key of ``varying_keys``; empty where it has none."""
    return (group.layers or "") if key == LAYERS else group.extras.get(key, "")


def group_label(group: Group, shown: Sequence[str], with_bits: bool = True) -> str:
    """``ste W2A2 optim.lr=0.1``: the method, its bits (unless ``with_bits`` is false) and the group's
    value of each key of ``shown`` (the keys that vary between the groups compared) it has."""
    parts = [group.identity.method]
    if with_bits:
        parts.append(group.bits_label)
    parts += [f"{k}={shown_value(group, k)}" for k in shown if shown_value(group, k)]
    return " ".join(parts)


def task_suffix(group: Group, groups: Sequence[Group]) -> str:
    """`` (resnet20, cifar10)``: the group's model and data set, for a label among ``groups`` of
    several models or data sets; empty where all share one."""
    several = len({(g.identity.model, g.identity.dataset) for g in groups}) > 1
    return f" ({group.identity.model}, {group.identity.dataset})" if several else ""


def by_task(groups: Sequence[Group]) -> dict[tuple[str, str], list[int]]:
    """(model, data set) -> the indices of its groups in ``groups``, in order of first appearance."""
    tasks: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, g in enumerate(groups):
        tasks[(g.identity.model, g.identity.dataset)].append(index)
    return dict(tasks)


def fronts_by_task(groups: Sequence[Group]) -> list[list[int]]:
    """Per (model, data set): indices of the groups on its accuracy-vs-GBOPs Pareto front (mean final
    test accuracy against mean GBOPs per image; quantized and float, uniform and mixed alike), by
    increasing GBOPs. Groups of different models or data sets are not compared."""
    fronts = []
    for indices in by_task(groups).values():
        members = [i for i in indices if groups[i].mean("test_acc") is not None and groups[i].mean("gbops") is not None]
        if members:
            points = [(groups[i].mean("gbops"), groups[i].mean("test_acc")) for i in members]
            fronts.append([members[i] for i in pareto_front(points)])
    return fronts


def front_groups(groups: Sequence[Group]) -> list[int]:
    """Indices of the groups on the Pareto front of their model and data set (:func:`fronts_by_task`)."""
    return [index for front in fronts_by_task(groups) for index in front]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) no other point beats (at most as costly and at least as
    accurate, better in one), by increasing cost; points equal in both are all on it."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best or (front and points[i] == points[front[-1]]):
            front.append(i)
            best = points[i][1]
    return front


def values_by_epoch(group: Group) -> dict[str, dict[int, list[float]]]:
    """Tag (of ``CURVE_TAGS``) -> epoch -> the values of that scalar the group's finished runs logged
    at that epoch."""
    by_epoch: dict[str, dict[int, list[float]]] = {tag: defaultdict(list) for tag in CURVE_TAGS}
    for run in group.done:
        for tag, curve in run.curves.items():
            for epoch, value in curve:
                by_epoch[tag][epoch].append(value)
    return by_epoch
