"""Channel roles (nucleus, cell, exosome, markers) and their resolution to the channel indices of
one image."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator

from .errors import ConfigError
from .fields import ChannelRef, CheckedChannel, _check_channel_ref, _Frozen
from .sections import PositivityRule


class MarkerConfig(_Frozen):
    """One immunofluorescence marker channel (e.g. CD31, VEGF-A, Collagen I)."""

    channel: CheckedChannel
    kind: Literal["angiogenesis", "collagen", "other"] = "other"
    positivity: PositivityRule | None = None


class ResolvedChannels(_Frozen):
    """Channel roles resolved to 0-based indices for one image."""

    nucleus: int | None = None
    cell: int | None = None
    exosome: int | None = None
    markers: dict[str, int] = Field(default_factory=dict)


def resolve_channel(ref: ChannelRef | None, channel_names: Sequence[str], key: str) -> int | None:
    """Resolve one channel reference (0-based index or channel name) to an index.

    Parameters
    ----------
    ref : int, str or None
    channel_names : sequence of str
        The image's channel names.
    key : str
        The config key the reference came from, named in the error (``channels.exosome``,
        ``tubes.channel`` ...).

    Raises
    ------
    ConfigError
        When the index is out of range or no channel has that name (case-insensitive).
    """
    if ref is None:
        return None
    names = list(channel_names)
    listing = ", ".join(f"{i}: {n}" for i, n in enumerate(names)) or "none"
    if isinstance(ref, int):
        if ref >= len(names):
            raise ConfigError(
                f"{key}: channel {ref} does not exist: the image has "
                f"{len(names)} channel(s) ({listing})"
            )
        return ref
    folded = [n.casefold() for n in names]
    if ref.casefold() in folded:
        return folded.index(ref.casefold())
    if ref.isdigit() and int(ref) < len(names):
        return int(ref)
    raise ConfigError(f"{key}: no channel named {ref!r}; the image's channels are ({listing})")


class ChannelsConfig(_Frozen):
    """Channel roles: each a 0-based index or a channel name from the file's metadata."""

    nucleus: ChannelRef | None = None
    cell: ChannelRef | None = None
    exosome: ChannelRef | None = None
    markers: dict[str, MarkerConfig] = Field(default_factory=dict)

    @field_validator("nucleus", "cell", "exosome", mode="before")
    @classmethod
    def _ref(cls, v: Any) -> Any:
        return None if v is None else _check_channel_ref(v)

    @field_validator("markers")
    @classmethod
    def _marker_names(cls, v: dict[str, MarkerConfig]) -> dict[str, MarkerConfig]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(
                    f"marker name {name!r} must start with a letter and use only letters, digits "
                    "and '_' (it becomes a column prefix such as cd31_mean_intensity)"
                )
        return v

    def resolve(self, channel_names: Sequence[str]) -> ResolvedChannels:
        """Resolve every role to a channel index of an image.

        Parameters
        ----------
        channel_names : sequence of str
            The image's channel names, one per channel (``ImageData.channel_names``).

        Returns
        -------
        ResolvedChannels

        Raises
        ------
        ConfigError
            When an index is out of range or a name is not among ``channel_names``.
        """
        names = list(channel_names)

        def one(role: str, ref: ChannelRef | None) -> int | None:
            return resolve_channel(ref, names, f"channels.{role}")

        return ResolvedChannels(
            nucleus=one("nucleus", self.nucleus),
            cell=one("cell", self.cell),
            exosome=one("exosome", self.exosome),
            markers={k: one(f"markers.{k}.channel", m.channel) for k, m in self.markers.items()},
        )
