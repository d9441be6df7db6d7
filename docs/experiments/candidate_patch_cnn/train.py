"""Train the candidate patch CNN (coronary vs not) on the default family's training candidates (see README.md).

    python train.py DIR EPOCHS AUGMENT        (DIR holds syn.pkl from extract.py; AUGMENT: dihedral or affine)

Writes DIR/patch_cnn.pt. Sampling: half of each batch coronary, a quarter aortic / valve, a quarter background.
"""
import pickle
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

HU_CLIP, HU_SCALE = (-300.0, 1300.0), 500.0


def tensors(rows):
    x = np.clip(np.stack([r["patch"] for r in rows]).astype(np.float32), *HU_CLIP) / HU_SCALE
    y = np.array([1 <= r["truth"] <= 4 for r in rows], dtype=np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _block(i, o):
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


def net() -> nn.Module:
    return nn.Sequential(_block(3, 16), _block(16, 16), nn.MaxPool2d(2), _block(16, 32), _block(32, 32),
                         nn.MaxPool2d(2), _block(32, 64), _block(64, 64), nn.MaxPool2d(2), _block(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, 2))


def predict(model, x):
    """P(coronary), averaged over the four 90-degree rotations."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), 256):
            b = x[i : i + 256]
            out.append(sum(torch.softmax(model(torch.rot90(b, k, (2, 3))), 1)[:, 1] for k in range(4)) / 4)
    return torch.cat(out).numpy()


def augment(x, kind):
    if kind == "dihedral":
        x = torch.rot90(x, np.random.randint(4), (2, 3))
        x = x.flip(3) if np.random.rand() < 0.5 else x
    else:  # any rotation, scale 0.78-1.28, and half the batches blurred (sigma 0.3-1.2 px)
        n = x.shape[0]
        ang, sc = torch.rand(n) * 2 * np.pi, torch.exp((torch.rand(n) - 0.5) * 0.5)
        th = torch.zeros(n, 2, 3)
        th[:, 0, 0], th[:, 0, 1] = torch.cos(ang) * sc, -torch.sin(ang) * sc
        th[:, 1, 0], th[:, 1, 1] = torch.sin(ang) * sc, torch.cos(ang) * sc
        grid = F.affine_grid(th, x.shape, align_corners=False)
        x = F.grid_sample(x + 1.0, grid, align_corners=False, padding_mode="border") - 1.0
        if np.random.rand() < 0.5:
            s = float(np.random.uniform(0.3, 1.2))
            k = torch.exp(-torch.arange(-2, 3.0) ** 2 / (2 * s * s))
            k = k / k.sum()
            x = F.conv2d(x, k.view(1, 1, 1, 5).repeat(3, 1, 1, 1), padding=(0, 2), groups=3)
            x = F.conv2d(x, k.view(1, 1, 5, 1).repeat(3, 1, 1, 1), padding=(2, 0), groups=3)
    sd = torch.rand(x.shape[0], 1, 1, 1) * 40.0 / HU_SCALE  # added noise, 0-40 HU
    return x + sd * torch.randn_like(x)


def main(folder: str, epochs: str, kind: str) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    rows = pickle.load(open(f"{folder}/syn.pkl", "rb"))
    train = [r for r in rows if r["split"] == "train"]
    xt, yt = tensors(train)
    xv, yv = tensors([r for r in rows if r["split"] == "validation"])
    truth = torch.tensor([r["truth"] for r in train])
    av, bg = (truth == 5) | (truth == 6), truth == 0
    w = torch.where(yt == 1, 1.0 / yt.sum(), torch.where(av, 0.5 / av.sum(), 0.5 / bg.sum()))
    model = net()
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=int(epochs) * (len(yt) // 64 + 1))
    t0 = time.time()
    for ep in range(int(epochs)):
        model.train()
        idx = torch.multinomial(w, len(yt), replacement=True)
        for i in range(0, len(idx), 64):
            b = idx[i : i + 64]
            loss = F.cross_entropy(model(augment(xt[b], kind)), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(ep, "validation AUC", round(roc_auc_score(yv, predict(model, xv)), 4), f"{time.time() - t0:.0f} s")
    torch.save(model.state_dict(), f"{folder}/patch_cnn.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
