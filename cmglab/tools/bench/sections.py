"""The bench's sections, by key, number and name: what `cmglab bench --only` accepts and what each one needs.

The keys are the report's (report.json's top-level keys); a section's number is its place here, as in its title.
"""

from __future__ import annotations

from collections.abc import Iterable

TITLES = {
    "ceiling": "1. Transport ceiling",
    "services": "2. Hot endpoints, each service alone",
    "cmg_path": "3. Through the CMG",
    "onboarding": "4. Full onboardings per second (fleet mode)",
    "connections": "5. Held keep-alive connections at the CMG",
    "profiles": "6. Profiles",
    "storm": "7. Handshake storms",
    "workers": "8. Worker processes on one listener",
}
KEYS = tuple(TITLES)

# other names a newcomer would type for a section
ALIASES = {
    "transport": "ceiling",
    "floors": "ceiling",
    "endpoints": "services",
    "cmg": "cmg_path",
    "fleet": "onboarding",
    "onboardings": "onboarding",
    "held": "connections",
    "storms": "storm",
    "scaling": "workers",
}

# one step measures sections 2 and 3 (3's ratio is to 2's rows); the floors of 2, 3 and 4 are section 1's
MEASURED_TOGETHER = {"services": "cmg_path", "cmg_path": "services"}
NEED_FLOORS = ("services", "cmg_path", "onboarding")


def number(key: str) -> int:
    return KEYS.index(key) + 1


def key_of(name: str) -> str:
    """A section's key from its number (1-8), key or alias; ValueError naming the choices for anything else."""
    word = name.strip().lower().replace("-", "_")
    if word.isdigit() and 1 <= int(word) <= len(KEYS):
        return KEYS[int(word) - 1]
    if word in TITLES:
        return word
    if word in ALIASES:
        return ALIASES[word]
    choices = ", ".join(f"{number(k)} {k}" for k in KEYS)
    raise ValueError(f"unknown section {name!r}: give a number or a name ({choices}; also {', '.join(ALIASES)})")


def select(names: Iterable[str]) -> tuple[frozenset[str], str]:
    """The sections to run for `--only NAMES`, and a sentence for the report saying which ran and why: sections 2
    and 3 are one measurement, and 2-4 bring section 1, which times the transport and primitives of their floors."""
    asked = {key_of(n) for n in names}
    chosen = set(asked)
    why: list[str] = []
    for key in sorted(asked, key=number):
        other = MEASURED_TOGETHER.get(key)
        if other and other not in chosen:
            chosen.add(other)
            why.append(f"{number(other)} is measured with {number(key)}")
    if chosen & set(NEED_FLOORS) and "ceiling" not in chosen:
        chosen.add("ceiling")
        needing = ", ".join(str(number(k)) for k in NEED_FLOORS if k in chosen)
        why.append(f"1 times the transport and primitives of the floors of {needing}")
    ran = ", ".join(f"{number(k)} {k}" for k in KEYS if k in chosen)
    return frozenset(chosen), f"only {ran}" + (f" ({'; '.join(why)})" if why else "")
