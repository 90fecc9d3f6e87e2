"""``qnnrun report --paired KEY=VALUE``: each group beside its baseline, paired by seed.

The baseline of a group is the group whose ``KEY`` (``method`` or an override key) is ``VALUE`` and
which agrees with it in everything else (data set, model, bits, every other override; bits are not
compared against a float baseline, which counts only where no baseline at the group's bits does;
epochs only where several baselines differ in them, so SQ's arms, 4 and 16 epochs long, pair).
Several pairs in one argument name a baseline by all of them (``--paired "method=ste
trainer.grad_clip=1.0"``). A ``method.<option>`` that one of the two runs' methods does not read (not
in its ``conf/method/<name>.yaml``) is no difference: between two methods it is part of the method
compared (UNIQ's one-stage arm and AQE's rising alpha pair with ste or bnn), and a method ignores it
in its own runs (a preset's shared option block). Another key only one group has is no difference
where that group left it at its default (read from its config). Runs are paired by seed: the
difference in final test accuracy (points) per seed both finished, its mean ± sample std, and in how
many seeds the group is above its baseline; groups whose lengths differ are named with them. Groups
left unpaired are listed with the reason (where no baseline is alike: what the nearest one differs
in, e.g. a preset's ``grid_point``: the selector can name it too, or ``--ignore grid_point`` group
over it where it only restates the method and bits). A baseline no finished group has is refused as
a typo unless some unfinished runs (a sweep in progress) could still be it: then the section says so.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Collection, Sequence

from qnnrun.errors import QnnrunError
from qnnrun.report.groups import Group, Replicate, group_label, reads, task_suffix, value_text, varying_keys
from qnnrun.report.records import Run, canonical, identity_key_problem
from qnnrun.report.tables import markdown

# A baseline as --paired names it: (key, value) pairs, key ``method`` or an override key.
Selector = tuple[tuple[str, str], ...]


def _differences(group: Group, baseline: Group, selector: Selector) -> list[str]:
    """What keeps ``baseline`` from agreeing with ``group`` in every field but the selector's keys (and
    the epochs, compared apart; and the bits, where the baseline is float), as ``"grid_point: aqe_w1a1
    against bnn_w1a1"``; empty when they are alike. A ``method.<option>`` that either group's method does
    not read is no difference (:func:`~qnnrun.report.groups.reads`); nor is another key only one of them
    has where that one left it at its default (read from its config)."""
    keys = {key for key, _ in selector}
    a, b = group.identity, baseline.identity
    found = [f"{name}: {mine} against {theirs}" for name, mine, theirs in
             (("data set", a.dataset, b.dataset), ("model", a.model, b.model)) if mine != theirs]
    if "method" not in keys and a.method != b.method:
        found.append(f"method: {a.method} against {b.method}")
    if not b.is_float and (a.bits_w, a.bits_a, a.layer_bits) != (b.bits_w, b.bits_a, b.layer_bits):
        found.append(f"bits: {a.bits_label} against {b.bits_label}")
    differing = [key for key in sorted((group.extras.keys() | baseline.extras.keys()) - keys)
                 if reads(a.method, key) and reads(b.method, key)
                 and group.extras.get(key) != baseline.extras.get(key)]
    if differing:
        mine_default, theirs_default = group.defaults, baseline.defaults  # each read from the runs once
        # a key only one of them has, where that one did not type it: its default, no difference
        only_default = {key for key in differing if key not in group.extras and key in theirs_default
                        or key not in baseline.extras and key in mine_default}
        found += [f"{key}: {group.extras.get(key, 'unset')} against {baseline.extras.get(key, 'unset')}"
                  for key in differing if key not in only_default]
    return found


def _key_value(group: Group, key: str) -> str:
    return group.identity.method if key == "method" else group.extras.get(key, "")


def _selects(group: Group, selector: Selector) -> bool:
    return all(_key_value(group, key) == canonical(value) for key, value in selector)


def _baseline(group: Group, baselines: Sequence[Group], selector: Selector) -> tuple[Group | None, str]:
    """The group ``group`` is compared with (the rule of this module's docstring), or None and why: its
    method lacks an option the selector names (unless the selector names a method that has it), or no
    baseline, or several that neither their bits (one at the group's bits before a float one) nor
    their epochs tell apart."""
    named = dict(selector).get("method")  # a baseline method's own option is part of that method
    ignored = [key for key, _ in selector
               if not reads(group.identity.method, key) and (named is None or not reads(named, key))]
    if ignored:
        return None, f"{group.identity.method} has no option {ignored[0]}"
    scored = [(b, _differences(group, b, selector)) for b in baselines]
    matches = [b for b, found in scored if not found]
    for prefer in (lambda b: b.bits_label == group.bits_label, lambda b: b.identity.epochs == group.identity.epochs):
        if len(matches) > 1 and any(prefer(b) for b in matches):
            matches = [b for b in matches if prefer(b)]
    if len(matches) == 1:
        return matches[0], ""
    if not matches:
        if not scored:
            return None, "no baseline alike in everything else"
        nearest, found = min(scored, key=lambda pair: len(pair[1]))
        return None, (f"no baseline alike in everything else; the nearest, {nearest.identity.method} "
                      f"{nearest.bits_label}, differs in {'; '.join(found)}")
    return None, "several baselines: " + "; ".join(f"{b.identity.method} {b.bits_label} ({b.identity.epochs} ep)"
                                                   + "".join(f" {k}={v}" for k, v in sorted(b.extras.items()))
                                                   for b in matches)


def selector_text(selector: Selector) -> str:
    """The selector as ``--paired`` was given it: ``method=ste trainer.grad_clip=1.0``."""
    return " ".join(f"{key}={value}" for key, value in selector)


def _accuracy_by_seed(group: Group) -> dict[Replicate, float]:
    """Final test accuracy (%) of the group's finished runs by seed (each once:
    :func:`~qnnrun.report.groups.drop_repeated_seeds`), as ``(seed, ())``; where several share a seed
    (their ``--ignore`` keys tell them apart: two ``init_from``), by ``(seed, their values)``, which pair
    only with the baseline's runs of that seed and those values."""
    shared = Counter(run.seed for run in group.done)
    return {(run.seed, group.replicate(run)[1] if shared[run.seed] > 1 else ()): run.metrics["test_acc"]
            for run in group.done}


def _seed_text(group: Group, replicate: Replicate) -> str:
    """``3``, or ``3 (init_from=a/last.ckpt)`` for one of several runs of seed 3."""
    seed, values = replicate
    told = ", ".join(f"{key}={value}" for key, value in zip(group.ignored, values))
    return f"{seed} ({told})" if told else str(seed)


def paired_table(groups: Sequence[Group], selector: Selector) -> str:
    """Each group beside its baseline (the group ``selector`` names, everything else alike; both named
    with their epochs where these differ): final test accuracy difference (points) of the runs paired
    by seed, mean ± sample std over the seeds both finished, each seed's difference, and in how many
    seeds the group is above; then the groups left unpaired and why."""
    shown = varying_keys(groups)
    baselines = [g for g in groups if _selects(g, selector)]
    rows, unpaired = [], []
    for g in groups:
        if _selects(g, selector):
            continue
        base, why = _baseline(g, baselines, selector)
        if base is not None:
            ours, theirs = _accuracy_by_seed(g), _accuracy_by_seed(base)
            seeds = sorted(set(ours) & set(theirs), key=lambda r: (r[0] is None, r[0] or 0, str(r[1])))
            if not seeds:
                why = "no seed in common with its baseline"
        if why:
            unpaired.append(f"{group_label(g, shown)}{task_suffix(g, groups)} ({why})")
            continue
        diffs = [ours[seed] - theirs[seed] for seed in seeds]
        spread = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
        lengths = g.identity.epochs != base.identity.epochs
        names = [group_label(x, shown) + task_suffix(x, groups) + f" ({x.identity.epochs} ep)" * lengths
                 for x in (g, base)]
        rows.append([*names, len(seeds), f"{statistics.fmean(diffs):+.2f}{spread}",
                     ", ".join(f"{d:+.2f}" for d in diffs), f"{sum(d > 0 for d in diffs)} of {len(diffs)}",
                     " ".join(_seed_text(g, seed) for seed in seeds)])
    parts = [markdown(["group", "baseline", "paired seeds", "difference (points)", "per seed", "above", "seeds"], rows)
             if rows else f"No group has a baseline with {selector_text(selector)} and a seed in common."]
    if unpaired:
        parts.append("Not paired: " + "; ".join(unpaired) + ".")
    return "\n\n".join(parts)


def _waiting(unfinished: int) -> str:
    return (f"{unfinished} {'run is' if unfinished == 1 else 'runs are'} unfinished "
            "(a baseline among them pairs once it finishes)")


def _may_select(run: Run, selector: Selector) -> bool:
    """Whether the unfinished ``run`` can still become a baseline ``selector`` names: it typed (or left at
    its default) each value the selector gives, as far as its folder tells."""
    return all(_run_value(run, key) in (None, canonical(value)) for key, value in selector)


def _run_value(run: Run, key: str) -> str | None:
    """The value of ``key`` in an unfinished run (no identity yet): its method as typed or composed, or
    :func:`~qnnrun.report.groups.value_text`; None where its folder does not tell."""
    if key != "method":
        return value_text(run, key)
    typed = [line.split("=", 1)[1] for line in run.command_line if line.split("=", 1)[0] == "method"]
    return canonical(typed[-1]) if typed else run.choices.get("method")


def check_baseline(groups: Sequence[Group], selector: Selector, keys: Sequence[str], ignore: Collection[str],
                   unfinished: Sequence[Run] = ()) -> str:
    """One line naming what is wrong with a ``--paired`` baseline: a key given to ``--ignore``, a key no
    run sets (or only runs of methods without that option), a value no group has, or values no one
    group has together. Where ``unfinished`` runs could still be that baseline (a sweep in progress:
    runs whose values do not differ from the selector's), the last two are no error: returns the note
    the report prints in place of the table ("" when the baseline is there)."""
    waiting = sum(_may_select(run, selector) for run in unfinished)
    for key, value in selector:
        if key in ignore:
            raise QnnrunError(f"--paired {key}={value}: {key} is given to --ignore too, so no group differs in it")
        if key != "method" and (problem := identity_key_problem(key)):
            raise QnnrunError(f"--paired {key}={value}: {problem}; valid keys are method"
                              + "".join(f", {k}" for k in keys if k not in ignore))
        if key != "method" and key not in keys:
            raise QnnrunError(f"--paired {key}={value}: no run sets {key}; valid keys are method"
                              + "".join(f", {k}" for k in keys if k not in ignore))
        methods = [] if key == "method" or any(key in g.extras for g in groups) else sorted(
            {r.identity.method for g in groups for r in g.runs if key in r.overrides})
        if methods:
            raise QnnrunError(f"--paired {key}={value}: only runs of {', '.join(methods)} set {key}, and "
                              f"{'that method has' if len(methods) == 1 else 'those methods have'} no such option")
        values = sorted({_key_value(g, key) for g in groups} - {""})
        if canonical(value) not in values:
            missing = f"no group has {key}={value}; the runs have {', '.join(values) or 'none'}"
            if waiting:
                return f"Not paired yet: {missing}, and {_waiting(waiting)}."
            raise QnnrunError(f"--paired {key}={value}: {missing}")
    if not any(_selects(g, selector) for g in groups):
        if waiting:
            return f"Not paired yet: no group has {selector_text(selector)} together, and {_waiting(waiting)}."
        raise QnnrunError(f"--paired {selector_text(selector)}: no group has all of these")
    return ""
