"""The pipeline's closing report: one row per model variant (architecture, trainable parameters,
train time, VQA accuracy by type, caption CIDEr-D, POPE F1), loss curves, sample predictions and
links to the resolved configs, printed and written to `<report stage>/report.md`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from train.run_metrics import read_metrics


def _fit_info(stage_dir: Path) -> dict:
    info: dict = {"seconds": None, "trainable": None, "architecture": "?", "loss": []}
    marker = stage_dir / "complete.json"
    if marker.is_file():
        info["seconds"] = json.loads(marker.read_text()).get("seconds")
    cfg_path = stage_dir / "stage.yaml"
    if cfg_path.is_file():
        info["config"] = cfg_path
        info["architecture"] = describe_model(yaml.safe_load(cfg_path.read_text()))
    rows = read_metrics(stage_dir)  # every attempt of the stage, one curve
    if rows:
        counts = next((r for r in rows if any(k.endswith("_trainable") for k in r)), {})  # logged at fit start
        trainable = [float(v) for k, v in counts.items() if k.endswith("_trainable") and v]
        info["trainable"] = int(sum(trainable)) if trainable else None
        info["loss"] = [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
    return info


def describe_model(cfg: dict) -> str:
    """E.g. "LLaVA / MLPConnector", "Flamingo / PerceiverResampler", "LLaVA / MLPConnector + LoRA r16 nf4"."""
    init = (cfg.get("model") or {}).get("init_args") or {}
    model = init.get("model") or {}
    margs = model.get("init_args") or {}
    name = str(model.get("class_path", "?")).rsplit(".", 1)[-1]
    bridge = margs.get("connector") or margs.get("resampler") or {}
    parts = [name, str(bridge.get("class_path", "MLPConnector")).rsplit(".", 1)[-1] if bridge or name == "LLaVA" else "-"]
    text = " / ".join(parts)
    lm = ((margs.get("language") or {}).get("init_args")) or {}
    adapter = lm.get("adapter")
    if adapter:
        aname = str(adapter.get("class_path", "?")).rsplit(".", 1)[-1]
        r = (adapter.get("init_args") or {}).get("r")
        text += f" + {aname}" + (f" r{r}" if r else "") + (f" {lm['quantization']}" if lm.get("quantization") else "")
    stage = init.get("stage")
    return text + (f" ({stage})" if stage else "")


def _eval_results(stage_dir: Path) -> dict:
    path = stage_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def variant_rows(pipeline, variants: list[dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    infos = []
    vqa_types: list[str] = []
    for v in variants:
        info = {"name": v["name"], **_fit_info(pipeline.stage_dir(v["fit"]))}
        info["results"] = _eval_results(pipeline.stage_dir(v["eval"])) if v.get("eval") else {}
        info["eval_dir"] = pipeline.stage_dir(v["eval"]) if v.get("eval") else None
        for k in info["results"].get("vqa", {}):
            if k.startswith("accuracy_") and k[9:] not in vqa_types:
                vqa_types.append(k[9:])
        infos.append(info)
    header = ["variant", "model", "trainable params", "train min", "VQA acc"] + [f"VQA {t}" for t in vqa_types] \
        + ["CIDEr-D", "caption exact", "caption colour acc", "POPE F1"]
    rows = []
    for info in infos:
        res = info["results"]
        vqa, cap, pope = res.get("vqa", {}), res.get("caption", {}), res.get("pope", {})
        rows.append([info["name"], info["architecture"],
                     f"{info['trainable']:,}" if info["trainable"] is not None else "-",
                     _fmt(info["seconds"] / 60 if info["seconds"] else None, 1), _fmt(vqa.get("accuracy"))]
                    + [_fmt(vqa.get(f"accuracy_{t}")) for t in vqa_types]
                    + [_fmt(cap.get("cider_d")), _fmt(cap.get("exact_match")), _fmt(cap.get("color_accuracy")),
                       _fmt(pope.get("f1"))])
    return header, rows, infos


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows])


def plot_losses(infos: list[dict], path: Path) -> Path | None:
    curves = [(i["name"], i["loss"]) for i in infos if i["loss"]]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, pts in curves:
        ax.plot([s for s, _ in pts], [v for _, v in pts], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _samples(info: dict, report_dir: Path, n: int = 4) -> list[str]:
    out = []
    for task in ("vqa", "caption"):
        path = info["eval_dir"] / f"{task}.jsonl" if info["eval_dir"] else None
        if not path or not path.is_file():
            continue
        task_data = Path((info["results"].get("meta", {}).get("data") or {}).get(task, ""))
        for line in path.read_text().splitlines()[:n]:
            r = json.loads(line)
            image = (task_data.parent / r["image"]) if r.get("image") else None
            img = f"![]({os.path.relpath(image, report_dir)}) " if image and image.is_file() else ""
            out.append(f"- {img}**{task}** `{r['prompt']}` -> `{r['prediction']}` (reference `{r['reference']}`, "
                       f"score {_fmt(r['score'], 2)})")
    return out


def write_report(pipeline, spec: dict, stage_dir: Path) -> str:
    header, rows, infos = variant_rows(pipeline, spec["variants"])
    curve = plot_losses(infos, stage_dir / "loss_curves.png")
    lines = [f"# {spec.get('title', 'Pipeline report')}", "", markdown_table(header, rows), ""]
    if spec.get("notes"):
        lines += [spec["notes"], ""]
    if curve:
        lines += ["## Training loss", "", f"![loss curves]({curve.name})", ""]
    lines += ["## Sample predictions", ""]
    for info in infos:
        samples = _samples(info, stage_dir)
        if samples:
            lines += [f"### {info['name']}", ""] + samples + [""]
    lines += ["## Resolved configs", ""]
    lines += [f"- {i['name']}: [{i['config']}]({os.path.relpath(i['config'], stage_dir)})" for i in infos
              if i.get("config")]
    (stage_dir / "report.md").write_text("\n".join(lines) + "\n")
    return text_table(header, rows) + f"\n\nreport: {stage_dir / 'report.md'}"
