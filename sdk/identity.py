"""Who a track is: quality-weighted averaging of its looks and identity voting, with hysteresis.

Every recognition of a track's face gives an *observation*: the Recognizer's top-k ``(name, cosine)``
candidates, its own decision (``Match.identity``, ``None`` below the threshold) and the look's quality
(:func:`sdk.quality.face_quality`). :class:`IdentityVote` keeps the last ``window`` observations and decides:

* **averaging**: the fused similarity of a name is the quality-weighted mean of its cosine similarities over
  the window. Cosine is linear in the probe embedding, so for one gallery row this is exactly the row's dot
  product with the track's quality-weighted *mean embedding* (the fused score ranks names as the
  normalised mean embedding would; with several rows per name, the best row of each look is used);
  a name missing from a look's top-k counts with that look's lowest candidate similarity (an upper bound);
* **voting**: the name's weighted share of the looks whose own decision was that name.

The decision is the best fused name when its fused similarity reaches the threshold *and* it carries at least
``min_vote`` of the votes; otherwise ``None`` (unknown). An unknown track takes a name as soon as the decision
says so; once it has a name, a different decision (another name, or unknown) replaces it only after
``switch_after`` consecutive observations agree on it (hysteresis against one bad look).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["VoteConfig", "Observation", "IdentityVote", "Decision"]


@dataclass(frozen=True)
class VoteConfig:
    """Settings of :class:`IdentityVote`.

    Attributes:
        window: observations kept per track (older ones are forgotten, so identities can change).
        min_vote: weighted share of the looks that must have decided for a name for the track to take it.
        switch_after: consecutive observations that must agree before an identity changes.
    """

    window: int = 8
    min_vote: float = 0.5
    switch_after: int = 2

    def __post_init__(self) -> None:
        if self.window < 1 or self.switch_after < 1 or not 0.0 <= self.min_vote <= 1.0:
            raise ValueError(f"need window >= 1, switch_after >= 1, 0 <= min_vote <= 1; got {self}")


@dataclass(frozen=True)
class Observation:
    """One recognition of a track's face: candidates ``(name, cosine)`` best first, the recognizer's own
    decision (``None`` = unknown), the look's quality in [0, 1], occlusion probability and completion."""

    candidates: tuple[tuple[str, float], ...]
    identity: str | None
    quality: float
    occlusion: float | None = None
    completed: bool = False
    #: the threshold that decided ``identity`` (the look's occlusion operating point); ``None``: the vote's own
    threshold: float | None = None


@dataclass(frozen=True)
class Decision:
    """A track's current identity (``None`` = unknown), its fused similarity (``nan`` with an empty gallery),
    the vote share of that identity (of unknown when ``identity`` is ``None``) and the observations used."""

    identity: str | None
    similarity: float
    vote: float
    observations: int


@dataclass
class IdentityVote:
    """Per-track identity state; feed :meth:`add`, read :attr:`decision`."""

    threshold: float
    config: VoteConfig = VoteConfig()
    _obs: deque = field(init=False, repr=False)
    decision: Decision | None = field(init=False, default=None)
    _pending: str | None = field(init=False, default=None, repr=False)
    _pending_n: int = field(init=False, default=0, repr=False)
    total: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._obs = deque(maxlen=self.config.window)

    def fused(self) -> dict[str, float]:
        """Quality-weighted mean cosine per candidate name over the window (see the module docstring)."""
        names = {n for o in self._obs for n, _ in o.candidates}
        if not names:
            return {}
        num = dict.fromkeys(names, 0.0)
        den = 0.0
        for o in self._obs:
            w = max(o.quality, 1e-3)
            sims = dict(o.candidates)
            floor = min(sims.values()) if sims else 0.0
            for n in names:
                num[n] += w * sims.get(n, floor)
            den += w
        return {n: v / den for n, v in num.items()}

    def votes(self) -> dict[str | None, float]:
        """Weighted share of the window's looks per decided name (``None`` = looks that decided unknown)."""
        tot: dict[str | None, float] = {}
        den = 0.0
        for o in self._obs:
            w = max(o.quality, 1e-3)
            tot[o.identity] = tot.get(o.identity, 0.0) + w
            den += w
        return {k: v / den for k, v in tot.items()} if den else {}

    def _fused_threshold(self) -> float:
        """Quality-weighted mean of the looks' own thresholds (masked looks bring their stricter operating point),
        :attr:`threshold` for looks without one."""
        num = den = 0.0
        for o in self._obs:
            w = max(o.quality, 1e-3)
            num += w * (self.threshold if o.threshold is None else o.threshold)
            den += w
        return num / den if den else self.threshold

    def _decide(self) -> Decision:
        fused, votes = self.fused(), self.votes()
        n = len(self._obs)
        if not fused:
            return Decision(None, float("nan"), votes.get(None, 1.0), n)
        best = max(fused, key=fused.get)
        sim = fused[best]
        if sim >= self._fused_threshold() and votes.get(best, 0.0) >= self.config.min_vote:
            return Decision(best, sim, votes[best], n)
        return Decision(None, sim, votes.get(None, 0.0), n)

    def add(self, obs: Observation) -> tuple[Decision, bool]:
        """Add one observation; returns ``(decision, changed)`` where ``changed`` is True when the track's
        identity differs from the one before (always True for the first observation)."""
        self._obs.append(obs)
        self.total += 1
        new = self._decide()
        old = self.decision
        if old is None:
            self.decision = new
            return new, True
        if new.identity == old.identity:
            self._pending, self._pending_n = None, 0
            self.decision = new
            return new, False
        if old.identity is None:  # unknown -> a name: the fused score and the vote are the evidence
            self._pending, self._pending_n = None, 0
            self.decision = new
            return new, True
        if new.identity == self._pending:
            self._pending_n += 1
        else:
            self._pending, self._pending_n = new.identity, 1
        if self._pending_n >= self.config.switch_after:
            self._pending, self._pending_n = None, 0
            self.decision = new
            return new, True
        return old, False

    @staticmethod
    def observation(candidates: Sequence[tuple[str, float]], identity: str | None, quality: float,
                    occlusion: float | None = None, completed: bool = False,
                    threshold: float | None = None) -> Observation:
        """Build an :class:`Observation` (NaN similarities of an empty gallery are dropped)."""
        cands = tuple((str(n), float(s)) for n, s in candidates if s == s)
        thr = None if threshold is None or threshold != threshold else float(threshold)
        return Observation(cands, identity, float(quality), occlusion, bool(completed), thr)
