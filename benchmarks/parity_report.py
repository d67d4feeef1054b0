"""Max-abs differences against the reference implementations, per backend, as a table.

The tests assert these bounds; this script prints the measured figures that README.md and
RESULTS.md quote. Each backend runs in its own process.

    python benchmarks/parity_report.py
"""

import json
import os
import sys

from harness import run_child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF = os.path.join(ROOT, "tests", "data", "hf")
TIMM = os.path.join(ROOT, "tests", "data", "timm")
BACKENDS = ("tensorflow", "jax", "torch")


def _max_diff(a, b):
    import keras
    import numpy as np

    return float(np.max(np.abs(np.asarray(keras.ops.convert_to_numpy(a), "float64") - b)))


def measure():
    """{check: max-abs difference} on the current backend."""
    import numpy as np

    import keras_deit as kd

    results = {}
    heads = {
        "model": kd.DeiTModel,
        "classification": kd.DeiTForImageClassification,
        "with_teacher": kd.DeiTForImageClassificationWithTeacher,
        "masked_image_modeling": kd.DeiTForMaskedImageModeling,
        "vit_classification": kd.DeiTForImageClassification,
    }
    for head, cls in heads.items():
        reference = np.load(os.path.join(HF, head, "reference_v5.npz"))
        inputs = np.load(os.path.join(HF, head, "reference_v5.npz" if head.startswith("vit") else "reference.npz"))
        files = ["model.safetensors"] + ([] if head.startswith("vit") else ["tf_model.h5"])
        for weights in files:
            folder = os.path.join(HF, head)
            options = dict(weights_file=weights, data_format="channels_first")
            model = cls.from_pretrained(folder, output_hidden_states=True,
                                        output_attentions=not head.startswith("vit"), **options)
            feed = inputs["pixel_values"]
            if head == "masked_image_modeling":
                feed = {"pixel_values": feed, "bool_masked_pos": inputs["bool_masked_pos"]}
            out = model(feed)
            worst = 0.0
            for key in reference.files:
                if not key.startswith("pt_") or key.startswith("pt_interp_") or key == "pt_loss":
                    continue
                name = key[3:]
                base, _, index = name.rpartition("_")
                ours = out[base][int(index)] if base in ("hidden_states", "attentions") else out[name]
                worst = max(worst, _max_diff(ours, reference[key]))
            if head == "masked_image_modeling":
                loss = kd.masked_image_modeling_loss(
                    inputs["pixel_values"], out["reconstruction"], inputs["bool_masked_pos"],
                    model.config.patch_size, data_format="channels_first")
                worst = max(worst, _max_diff(loss, reference["pt_loss"]))
            results[f"HF {head} ({weights})"] = worst
            if head != "masked_image_modeling":
                model = cls.from_pretrained(folder, interpolate_pos_encoding=True, **options)
                out = model(inputs["pixel_values_384"])
                results[f"HF {head} ({weights}), 48x40 interpolated"] = max(
                    _max_diff(out[k[10:]], reference[k]) for k in reference.files
                    if k.startswith("pt_interp_"))
    manifest = json.load(open(os.path.join(TIMM, "manifest.json")))
    for name, spec in manifest.items():
        data = np.load(os.path.join(TIMM, name + ".npz"))
        model = kd.DeiTPreTrainedModel.from_pretrained(
            os.path.join(TIMM, name + ".pth"), num_attention_heads=spec["num_heads"],
            data_format="channels_first", output_hidden_states=True)
        out = model(data["pixel_values"])
        worst = max(_max_diff(out[k], data[k]) for k in ("logits", "cls_logits", "distillation_logits")
                    if k in data.files)
        results[f"timm {name} (logits, both heads)"] = worst
    results["deit-base WithTeacher, random weights (logits)"] = _deit_base()
    return results


def _deit_base():
    import tempfile

    import torch
    import transformers

    import keras_deit as kd

    torch.manual_seed(0)
    reference = transformers.DeiTForImageClassificationWithTeacher(
        transformers.DeiTConfig(num_labels=1000)).eval()
    pixel_values = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(pixel_values)
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(folder, data_format="channels_first")
    out = model(pixel_values.numpy())
    return max(_max_diff(out[k], getattr(expected, k).numpy())
               for k in ("logits", "cls_logits", "distillation_logits"))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(measure()))
        return
    table = {}
    for backend in BACKENDS:
        table[backend] = run_child(__file__, backend)
    print("| check | " + " | ".join(BACKENDS) + " |")
    print("|---|" + "---|" * len(BACKENDS))
    for check in table[BACKENDS[0]]:
        print(f"| {check} | " + " | ".join(f"{table[b][check]:.1e}" for b in BACKENDS) + " |")


if __name__ == "__main__":
    main()
