"""Renamed arguments keep working for one release, with a ``DeprecationWarning`` naming the
new spelling (every rename is listed in ``CHANGELOG.md``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

__all__ = [
    "MISSING",
    "confidence_or_failure_probability",
    "moved_names",
    "renamed_argument",
    "warn_renamed",
]


class _Missing:
    """Marker of an argument that was not passed (``None`` can be a real value)."""

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_renamed("epsilon", "confidence (= 1 - epsilon)")
    >>> str(caught[0].message).startswith("`epsilon` is deprecated")
    True
    """
    warnings.warn(
        f"`{old}` is deprecated and will be removed in the next release; use `{new}` "
        "(see CHANGELOG.md).",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed_argument(
    new_value: Any,
    new: str,
    old_value: Any,
    old: str,
    *,
    convert: Callable[[Any], Any] | None = None,
    hint: str = "",
    stacklevel: int = 4,
) -> Any:
    """The value of an argument that was renamed from ``old`` to ``new``.

    ``old_value`` (converted by ``convert``, e.g. ``epsilon -> 1 - epsilon``) is used with a
    ``DeprecationWarning`` when only the old name was passed; passing both is an error.
    Unpassed arguments are :data:`MISSING`.

    Examples
    --------
    >>> import warnings
    >>> warnings.simplefilter("ignore", DeprecationWarning)
    >>> renamed_argument(MISSING, "confidence", 0.1, "epsilon", convert=lambda e: 1 - e)
    0.9
    >>> renamed_argument(0.95, "confidence", MISSING, "epsilon")
    0.95
    """
    if old_value is MISSING:
        return new_value
    if new_value is not MISSING:
        raise TypeError(f"Pass `{new}` or the deprecated `{old}`, not both.")
    warn_renamed(old, new + hint, stacklevel=stacklevel)
    return convert(old_value) if convert is not None else old_value


def confidence_or_failure_probability(
    confidence: Any, old_value: Any, old: str, *, strict: bool = False, stacklevel: int = 4
) -> Any:
    """``confidence``, or ``1 - old_value`` from a deprecated failure probability (``epsilon``,
    ``alpha``) with a warning. ``strict``: ``confidence`` was passed too (not a default), which
    is an error.

    Examples
    --------
    >>> import warnings
    >>> warnings.simplefilter("ignore", DeprecationWarning)
    >>> confidence_or_failure_probability(0.95, 0.1, "epsilon")
    0.9
    """
    if old_value is MISSING:
        return confidence
    if strict:
        raise TypeError(f"Pass `confidence` or the deprecated `{old}`, not both.")
    from exitwise._checks import check_open_unit

    warn_renamed(old, f"confidence (= 1 - {old})", stacklevel=stacklevel)
    return 1.0 - check_open_unit(old_value, old)


def moved_names(module: str, names: dict[str, tuple[str, Callable[[], Any]]]) -> Any:
    """A module ``__getattr__`` that serves old names for one release, with a warning:
    ``names`` maps an old name to ``(new spelling, loader)``."""

    def __getattr__(name: str) -> Any:
        if name in names:
            new, load = names[name]
            warn_renamed(name, new)
            return load()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
