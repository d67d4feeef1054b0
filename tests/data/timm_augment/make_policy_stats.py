"""timm's `rand-m9-mstd0.5-inc1` policy statistics on the fixture's 3 images, for
tests/test_rand_augment.py: the share of draws that leave an image unchanged and the mean
absolute change in grey levels (over pixels and channels), with their per-draw standard
deviations.

Run in a venv with timm (torch, torchvision, timm 1.0.31, pillow<12), from the repository root:
    /work/timm-venv/bin/python tests/data/timm_augment/make_policy_stats.py > tests/data/timm_augment/policy_stats.json
"""

import json
import random

import numpy as np
import PIL
import timm
from PIL import Image
from timm.data.auto_augment import rand_augment_transform

DRAWS = 5000  # per image

# deit's create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
# interpolation="bicubic") passes these hparams (timm/data/transforms_factory.py).
hparams = dict(translate_const=int(224 * 0.45), img_mean=(124, 116, 104),
               interpolation=Image.BICUBIC)
transform = rand_augment_transform("rand-m9-mstd0.5-inc1", hparams)
random.seed(0)
np.random.seed(0)
images = np.load("tests/data/timm_augment/rand_augment_ops.npz")["images"]
unchanged, change = [], []
for image in images:
    pil = Image.fromarray(image)
    for _ in range(DRAWS):
        out = np.asarray(transform(pil)).astype(np.int16)
        diff = np.abs(out - image)
        unchanged.append(float(diff.max() == 0))
        change.append(float(diff.mean()))
print(json.dumps({
    "timm": timm.__version__, "pillow": PIL.__version__, "policy": "rand-m9-mstd0.5-inc1",
    "draws": len(change), "unchanged_share": float(np.mean(unchanged)),
    "unchanged_std": float(np.std(unchanged)), "mean_change": float(np.mean(change)),
    "change_std": float(np.std(change)),
}, indent=1))
