"""Write a model's replay file (``<name>.replay.npz``) and name it in its card.

For the films of a training run's split (``RUN/split.csv``: the sites the
model learned from), up to ``--per-class`` training films and
``--holdout-per-class`` validation films per site and body part are passed
through the model; their members' penultimate features (float16) and labels
are written beside the checkpoint, the card records the file's sha256 and
counts, and the ONNX export is written anew (it is checked against the
checkpoint's sha256). Features are derived numbers: no film leaves ``../shared``.

    python scripts/make_replay.py xreg/weights/bodypart_sites.pt WORK/bodypart_sites/trained.run

Phantom films are left out (adapt needs the real sites' look); so are films
of the test split, which no decision may use.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from xreg.inference.export import export_onnx  # noqa: E402
from xreg.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from xreg.train.finetune import decode_grey  # noqa: E402
from xreg.train.replay import (  # noqa: E402
    pick_replay,
    replay_from_grey,
    replay_path,
    save_replay,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("run", type=Path, help="the training run folder (its split.csv)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--holdout-per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint)
    card = loaded.card
    chosen = pick_replay(args.run / "split.csv", card.head("body_part").labels,
                         args.per_class, args.holdout_per_class, args.seed)
    print(f"{len(chosen)} films ({sum(h for _, h in chosen)} hold-out); decoding", flush=True)
    grey, kept = decode_grey([Path(im.path) for im, _ in chosen], card.input_size,
                             args.threads)
    films = [chosen[i] for i in kept]
    replay = replay_from_grey(loaded.model, card, grey,
                              [im.body_parts for im, _ in films],
                              [im.instrument for im, _ in films],
                              [im.fracture for im, _ in films],
                              [im.source for im, _ in films], [h for _, h in films])
    target = replay_path(args.checkpoint)
    sha = save_replay(target, replay)
    entry = {"file": target.name, "sha256": sha, "dim": int(sum(replay.dims)),
             **replay.summary(),
             "made_from": "training (replay) and validation (hold-out) films of the "
                          "model's own split, per site and body part; no test film"}
    save_checkpoint(args.checkpoint, loaded.model, dataclasses.replace(card, replay=entry))
    export_onnx(args.checkpoint)
    size = target.stat().st_size / 1e6
    print(f"wrote {target} ({size:.1f} MB, sha256 {sha[:12]}): {entry['films']} films, "
          f"{entry['holdout']} held out; card and ONNX export updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
