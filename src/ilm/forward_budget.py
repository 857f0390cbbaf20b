"""The forward budget of an inversion, in forward-equivalents (docs/method.md §12.1); no torch needed.

One sequence forward costs 1 and a backward through it 2 more, so a gradient costs 3. The
generic inverters (ilm.generic_invert) get the beam search's cost times invert.generic.budget_ratio
and spend it in whole steps; the config check and the comparison table's caption read the same numbers.
"""

from __future__ import annotations

import math
from typing import Mapping

GRADIENT = 3  # a forward and its backward
FORWARD = 1


def beam_search_forwards(prefix_length: int, beam: int, top_k: int) -> int:
    """Forward-equivalents of one sample's beam search (ilm.invert.beam_search).

    Step 0 has 1 beam, step t > 0 min(beam, beams_{t-1} * top_k); at each step every beam takes one
    gradient at its placeholder (3) and each of its top_k candidates one scoring forward (1).
    """
    total, beams = 0, 1
    for _ in range(prefix_length):
        total += beams * GRADIENT + beams * top_k * FORWARD
        beams = min(beam, beams * top_k)
    return total


def generic_budget(inv: Mapping) -> int:
    """The forward budget of one sample's generic inversion: the beam search's times invert.generic.budget_ratio."""
    search = beam_search_forwards(inv["prefix_length"], inv["beam"], inv["top_k"])
    return math.floor(search * inv["generic"]["budget_ratio"])


def gcg_steps(budget: int, search_width: int) -> int:
    """GCG inverter steps within `budget`: each takes a gradient (3) and scores search_width candidates (1 each)."""
    return budget // (GRADIENT + search_width * FORWARD)


def relaxed_steps(budget: int, restarts: int) -> int:
    """Relaxed inverter steps within `budget`: per restart, a forward and backward of the relaxed input (3) and a
    forward of its discretised prefix (1)."""
    return budget // ((GRADIENT + FORWARD) * restarts)


def steps_and_forwards(inverter: str, inv: Mapping) -> tuple[int, int]:
    """(steps, forward-equivalents spent) of one sample's `inverter` (gcg | relaxed) under the settings `inv`."""
    gen, budget = inv["generic"], generic_budget(inv)
    if inverter == "gcg":
        steps = gcg_steps(budget, gen["gcg_search_width"])
        return steps, steps * (GRADIENT + gen["gcg_search_width"] * FORWARD)
    if inverter == "relaxed":
        steps = relaxed_steps(budget, gen["relaxed_restarts"])
        return steps, steps * (GRADIENT + FORWARD) * gen["relaxed_restarts"]
    raise ValueError(f"unknown generic inverter {inverter!r}; valid: gcg, relaxed")


def check_budget(inv: Mapping) -> None:
    """ValueError naming the keys when a generic inverter listed in invert.generic.inverters gets no whole step."""
    budget = generic_budget(inv)
    fixes = {"gcg": "invert.generic.gcg_search_width", "relaxed": "invert.generic.relaxed_restarts"}
    for inverter in inv["generic"]["inverters"]:
        if steps_and_forwards(inverter, inv)[0] < 1:
            raise ValueError(
                f"the {inverter} inverter gets no whole step within its budget of {budget} forwards; raise "
                f"invert.generic.budget_ratio or lower {fixes[inverter]}"
            )
