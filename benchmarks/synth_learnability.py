"""Can a small CNN learn body part and instrument from phantoms? (held-out seed)

Renders a training set and a test set of phantoms from two different seeds
(so test patients, poses and implants are unseen), trains a small CNN from
scratch for a few epochs on the CPU, and prints body-part accuracy and MCC
and instrument ROC AUC on the test set, next to chance.

    python benchmarks/synth_learnability.py [--train 3000] [--test 900] [--size 128]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from sklearn.metrics import accuracy_score, matthews_corrcoef, roc_auc_score
from torch import nn

from xreg.synth.plan import plan_dataset
from xreg.synth.render import render_phantom
from xreg.synth.spec import BODY_PARTS, PhantomSpec


def _render(spec: PhantomSpec) -> np.ndarray:
    return render_phantom(spec).image


def render_set(count: int, seed: int, size: int, instrument_rate: float):
    items = plan_dataset(count, seed, size=size, formats=("png16",),
                         instrument_rate=instrument_rate)
    specs = [i.spec for i in items]
    with ProcessPoolExecutor(max_workers=2) as pool:
        images = list(pool.map(_render, specs, chunksize=32))
    x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
    body = torch.tensor([BODY_PARTS.index(s.body_part) for s in specs])
    inst = torch.tensor([int(s.instrument is not None) for s in specs])
    return x, body, inst


class SmallNet(nn.Module):
    """Five conv blocks and two heads: deliberately small, trained from scratch."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [1, 16, 32, 64, 96, 128]
        for cin, cout in zip(channels, channels[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.body = nn.Linear(128, len(BODY_PARTS))
        self.inst = nn.Linear(128, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features((x - 0.5) / 0.25)
        return self.body(f), self.inst(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=900)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--instrument-rate", type=float, default=0.3)
    args = parser.parse_args()
    torch.manual_seed(0)

    t0 = time.perf_counter()
    x_tr, b_tr, i_tr = render_set(args.train, 1, args.size, args.instrument_rate)
    x_te, b_te, i_te = render_set(args.test, 2, args.size, args.instrument_rate)
    print(f"rendered {len(x_tr)} train (seed 1) + {len(x_te)} test (seed 2) phantoms at "
          f"{args.size}px in {time.perf_counter() - t0:.0f} s")

    model = SmallNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_tr))
        total = 0.0
        for start in range(0, len(order), 32):
            idx = order[start:start + 32]
            xb = x_tr[idx]
            flip = torch.rand(len(idx)) < 0.5  # the thesis's horizontal flips
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            body, inst = model(xb)
            loss = loss_fn(body, b_tr[idx]) + loss_fn(inst, i_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}: train loss {total / len(order):.3f}", flush=True)
    print(f"trained in {time.perf_counter() - t0:.0f} s")

    model.eval()
    with torch.inference_mode():
        outs = [model(x_te[i:i + 128]) for i in range(0, len(x_te), 128)]
    body_pred = torch.cat([o[0] for o in outs]).argmax(1).numpy()
    inst_prob = torch.cat([o[1] for o in outs]).softmax(1)[:, 1].numpy()
    b, i = b_te.numpy(), i_te.numpy()
    print(f"held-out body part: accuracy {accuracy_score(b, body_pred):.3f} "
          f"(chance {1 / len(BODY_PARTS):.3f}), MCC {matthews_corrcoef(b, body_pred):.3f} "
          "(chance 0)")
    print(f"held-out instrument: ROC AUC {roc_auc_score(i, inst_prob):.3f} (chance 0.5), "
          f"{int(i.sum())} positives of {len(i)}")


if __name__ == "__main__":
    main()
