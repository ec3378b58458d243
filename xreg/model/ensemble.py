"""Several trained networks as one model, with a memory of its training films.

One input, one pass, one runtime call.

Members trained on the same films still learn different shortcuts; where they
disagree about a film from a hospital none of them saw, the film waits in
``_review`` instead of landing in a confident, wrong folder. An
:class:`EnsembleNet` holds the members and answers like a single
:class:`~xreg.model.models.MultiHeadNet`: per head, the log of the members'
mean probabilities (a valid logit vector: its softmax is that mean), plus
:data:`MEMBERS_OUTPUT`, every member's own body-part logits, from which the
prediction layer reads agreement and energy. Each member keeps the grey-level
statistics it was trained with: the input, normalised with the first
member's mean and std, is re-normalised for the others inside the network,
so the ONNX export is still one graph with one input.

With a feature bank (the unit-length penultimate features of training films,
derived numbers, never the films), the network also answers
:data:`DISTANCE_OUTPUT`: the cosine distance from a film's features to its
k-th nearest training film. A film far from everything the model learned from
is held back however confident the heads are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from xreg.errors import ConfigError
from xreg.model.card import DISTANCE_OUTPUT, MEMBERS_OUTPUT, ModelCard
from xreg.model.models import MultiHeadNet, build_model

__all__ = ["EnsembleNet", "build_ensemble", "join_members", "unit_features"]


def unit_features(features: Sequence[Tensor]) -> Tensor:
    """Each member's features scaled to unit length, joined, scaled to unit length."""
    parts = [f / f.norm(dim=1, keepdim=True).clamp_min(1e-12) for f in features]
    joined = torch.cat(parts, dim=1)
    out: Tensor = joined / joined.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


class EnsembleNet(nn.Module):
    """Members with the same heads and input size, averaged in probability.

    ``bank``: ``(films, dim)`` unit features of training films (see
    :func:`unit_features`), or ``(0, 0)`` for none; ``k``: which nearest
    neighbour's distance is reported.
    """

    scale: Tensor
    shift: Tensor
    bank: Tensor

    def __init__(self, members: Sequence[MultiHeadNet], *, bank_shape: tuple[int, int] = (0, 0),
                 k: int = 5) -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        first = members[0]
        for m in members[1:]:
            if (m.head_specs, m.input_size) != (first.head_specs, first.input_size):
                raise ConfigError("ensemble members must share heads and input size")
        self.arch = first.arch
        self.input_size = first.input_size
        self.head_specs = first.head_specs
        self.members = nn.ModuleList(members)
        # x_m = x * scale[m] + shift[m]: the first member's normalisation -> member m's.
        self.register_buffer("scale", torch.ones(len(members)))
        self.register_buffer("shift", torch.zeros(len(members)))
        self.k = int(k)
        # float16 halves the file; distances need no more than three digits.
        self.register_buffer("bank", torch.zeros(bank_shape, dtype=torch.float16))

    @property
    def member_nets(self) -> list[MultiHeadNet]:
        return [cast(MultiHeadNet, m) for m in self.members]

    @property
    def member_archs(self) -> tuple[str, ...]:
        return tuple(m.arch for m in self.member_nets)

    def set_statistics(self, means: Sequence[float], stds: Sequence[float]) -> None:
        """Record each member's training mean/std (the first one's is the model's input)."""
        if len(means) != len(self.members) or len(stds) != len(self.members):
            raise ConfigError("one mean and one std per member")
        m0, s0 = float(means[0]), float(stds[0])
        self.scale.copy_(torch.tensor([s0 / float(s) for s in stds]))
        self.shift.copy_(torch.tensor([(m0 - float(m)) / float(s)
                                       for m, s in zip(means, stds)]))

    @property
    def has_bank(self) -> bool:
        return bool(self.bank.shape[0])

    def set_bank(self, bank: Tensor, k: int) -> None:
        """Remember training films' unit features (rows); distances go to the k-th nearest."""
        if bank.ndim != 2 or not 1 <= k <= bank.shape[0]:
            raise ConfigError(f"a feature bank needs at least k={k} rows")
        self.bank = bank.detach().to(torch.float16).clone()
        self.k = int(k)

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Each member's penultimate features, and the joined unit features."""
        feats = [member.backbone(x * self.scale[i] + self.shift[i])
                 for i, member in enumerate(self.member_nets)]
        return feats, unit_features(feats)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats, joined = self.features(x)
        return self.answer(feats, joined)

    def answer(self, feats: Sequence[Tensor], joined: Tensor | None = None
               ) -> dict[str, Tensor]:
        """The outputs for members' penultimate features (what ``forward`` returns after
        the backbones): adapt trains and judges heads on stored features with it."""
        if joined is None:
            joined = unit_features(feats)
        outs = [{name: head(f) for name, head in member.heads.items()}
                for member, f in zip(self.member_nets, feats)]
        result: dict[str, Tensor] = {}
        if len(outs) == 1:  # one member: its own logits (energy reads them)
            result = dict(outs[0])
        for head in self.head_specs if len(outs) > 1 else ():
            probs = torch.stack([torch.softmax(o[head.name], dim=1) for o in outs]).mean(0)
            result[head.name] = torch.log(probs.clamp_min(1e-12))
        if len(outs) > 1:
            result[MEMBERS_OUTPUT] = torch.stack([o[self.head_specs[0].name] for o in outs], 1)
        if self.has_bank:
            sims = joined @ self.bank.to(joined.dtype).T
            result[DISTANCE_OUTPUT] = 1.0 - torch.topk(sims, self.k, dim=1).values[:, -1]
        return result


def build_ensemble(card: ModelCard) -> EnsembleNet:
    """A randomly initialised ensemble of the card's members (weights are loaded after)."""
    members = [build_model(arch, card.heads, input_size=card.input_size)
               for arch in card.members]
    bank = card.guard.get("bank") or {}
    return EnsembleNet(members, bank_shape=(int(bank.get("films", 0)), int(bank.get("dim", 0))),
                       k=int(bank.get("k", 5)))


def join_members(members: Sequence[tuple[MultiHeadNet, ModelCard]]) -> EnsembleNet:
    """Trained members and their cards as one network (same heads, size, grey levels)."""
    first = members[0][1]
    for _, card in members[1:]:
        if (card.heads, card.input_size, card.normalise, card.views) != \
                (first.heads, first.input_size, first.normalise, first.views):
            raise ConfigError(f"member {card.name!r} differs from {first.name!r} in heads, "
                              "input size, grey levels or views")
    net = EnsembleNet([m for m, _ in members])
    net.set_statistics([c.mean for _, c in members], [c.std for _, c in members])
    return net
