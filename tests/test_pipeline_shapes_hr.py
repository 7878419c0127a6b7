"""configs/pipelines/shapes_hr.yaml as shipped, shrunk to tiny worlds and two steps a fit: every stage
runs from the outputs of the stages it names (the tower from the small-object Shapes shards, the LM
from the caption data's text, the three VLMs from both), and every evaluation scores its file."""

import json
from pathlib import Path

import yaml

from train.pipeline import Pipeline

SHIPPED = Path(__file__).resolve().parents[1] / "configs" / "pipelines" / "shapes_hr.yaml"


def _shrunk(tmp_path: Path) -> Path:
    spec = yaml.safe_load(SHIPPED.read_text())
    spec["out"] = str(tmp_path / "out")
    for stage in spec["stages"]:
        if "data" in stage:
            stage["data"].update(train_images=6, val_images=4)
        if "fit" in stage:
            stage["fit"] = str(SHIPPED.parents[2] / stage["fit"])
            stage["set"] = {**stage["set"], "trainer.max_steps": 2, "trainer.val_check_interval": 2,
                            "trainer.enable_progress_bar": False, "data.init_args.batch_size": 4}
            stage["checkpoint_every"] = 2
        if "eval" in stage:
            stage["eval"]["limit"] = 4
    path = tmp_path / "shapes_hr.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_shipped_pipeline_runs_every_stage_on_a_tiny_world(tmp_path):
    spec = yaml.safe_load(SHIPPED.read_text())
    names = [s["name"] for s in spec["stages"]]
    assert names[:4] == ["data", "tower_data", "clip", "lm"] and {"single", "anyres", "video"} <= set(names)
    Pipeline(_shrunk(tmp_path), log=lambda _: None).run()
    out = tmp_path / "out"
    assert all((out / name / "complete.json").is_file() for name in names)
    assert json.loads((out / "data" / "meta.json").read_text())["params"]["captions"] is True
    assert (out / "clip" / "open_clip.pt").is_file()
    anyres = yaml.safe_load((out / "anyres" / "stage.yaml").read_text())["model"]["init_args"]
    assert anyres["stage"] == "full" and anyres["model"]["init_args"]["image_grid_pinpoints"] == [[288, 288]]
    assert anyres["model"]["init_args"]["vision"]["init_args"]["pretrained"] == str(out / "clip" / "open_clip.pt")
    for name, questions in (("eval_single", "val_qa"), ("eval_anyres_multi", "val_multi_qa"),
                            ("eval_video", "val_video_qa")):
        rows = [json.loads(line) for line in (out / name / "vqa.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all("prediction" in r for r in rows), name
        wanted = [json.loads(line)["id"] for line in (out / "data" / f"{questions}.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == wanted[:4], name
        assert "vqa" in json.loads((out / name / "results.json").read_text()), name
    assert "any resolution" in (out / "report" / "report.md").read_text()
