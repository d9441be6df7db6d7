"""Can a VGG16 trained from scratch learn anything under the bundle's optimiser? A toy probe (see README.md).

    python probe.py vgg16 vgg16_bn

Each network (timm, from scratch, 2 input channels, 2 classes) gets 60 AdamW steps at the bundle's learning rate
(5e-4), batch 16, bf16 autocast, on 128 x 128 noise images where the positives hold one bright 4 x 4 square. Prints the
mean loss of each block of 10 steps.
"""
import sys
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F


def batch(n: int = 16, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = torch.randn(n, 2, size, size) * 0.3, torch.randint(0, 2, (n,))
    for i in np.flatnonzero(y.numpy()):
        r, c = np.random.randint(20, size - 20, 2)
        x[i, :, r - 2 : r + 2, c - 2 : c + 2] += 2.0
    return x, y


def main(names: list[str]) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    for name in names:
        model = timm.create_model(name, pretrained=False, num_classes=2, in_chans=2)
        opt = torch.optim.AdamW(model.parameters(), 5e-4)
        t0, losses = time.time(), []
        for _ in range(60):
            x, y = batch()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        means = [round(float(np.mean(losses[i : i + 10])), 3) for i in range(0, 60, 10)]
        print(name, means, f"{time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
