"""Named class maps shipped with carclf.

The sf-dl-car-classification competition labels its 10 classes 0..9 with no names in the data;
reports, the API and the web page show these instead of bare numbers.
"""

from __future__ import annotations

SFDL_CLASSES: list[tuple[str, str]] = [
    ("Priora", "Приора"),
    ("Ford Focus", "Форд Фокус"),
    ("Samara (2114)", "Самара (2114)"),
    ("VAZ-2110", "ВАЗ-2110"),
    ("Zhiguli (2107)", "Жигули (2107)"),
    ("Niva", "Нива"),
    ("Kalina", "Калина"),
    ("VAZ-2109", "ВАЗ-2109"),
    ("Volkswagen Passat", "Фольксваген Пассат"),
    ("VAZ-21099", "ВАЗ-21099"),
]

CLASS_MAPS: dict[str, list[tuple[str, str]]] = {"sfdl": SFDL_CLASSES}


def get_class_map(name: str) -> list[tuple[str, str]]:
    try:
        return CLASS_MAPS[name]
    except KeyError:
        raise KeyError(f"unknown class map {name!r}; known: {sorted(CLASS_MAPS)}") from None


def display_name(name: str, local: str | None) -> str:
    """'Priora (Приора)' where a local name exists and differs, else the name."""
    return f"{name} ({local})" if local and local != name else name
