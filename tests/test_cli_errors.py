"""Every `chimera` command reports a user's mistake as one line `chimera CMD: cause` on stderr,
status 2, no traceback; `--debug` or CHIMERA_DEBUG=1 shows the traceback."""

import copy

import pytest
import yaml

from tests.cli_run import chimera, plain_error
from tests.tiny import experiment_config, tiny_world
from train.fit_errors import condense


@pytest.mark.parametrize("args, cause", [
    (["generate", "--ckpt", "{t}/none.ckpt", "--prompt", "hi"], "checkpoint not found: {t}/none.ckpt"),
    (["merge", "--ckpt", "{t}/none.ckpt", "--out", "{t}/m"], "checkpoint not found: {t}/none.ckpt"),
    (["export", "--ckpt", "{t}/none.ckpt", "--format", "hf-llava", "--out", "{t}/x"],
     "checkpoint not found: {t}/none.ckpt"),
    (["import", "--format", "hf-llava", "--src", "{t}/none", "--out", "{t}/i"],
     "{t}/none is not a transformers LLaVA directory (no config.json)"),
    (["import", "--format", "hf-llava-onevision", "--src", "{t}/none", "--out", "{t}/i"],
     "{t}/none is not a transformers LlavaOnevision directory (no config.json)"),
    (["eval", "--tasks", "vqa2", "--out", "{t}/e"],
     "unknown eval task 'vqa2'; choose from ['caption', 'chair', 'coco_caption', 'flickr30k', 'gqa', 'mmbench', "
     "'mme', 'mmmu', 'mmstar', 'nocaps', 'okvqa', 'pope', 'retrieval', 'scienceqa_img', 'seed_bench', 'textvqa', "
     "'vizwiz', 'vqa', 'vqav2', 'zeroshot']"),
    (["data", "coco-captions", "--captions", "{t}/none.json", "--out", "{t}/c.jsonl"], "file not found: {t}/none.json"),
    (["curate", "--config", "{t}/none.yaml", "--in", "{t}/a", "--out", "{t}/b"],
     "no such file or directory: {t}/none.yaml"),
    (["pipeline", "run", "{t}/none.yaml"], "pipeline file not found: {t}/none.yaml"),
], ids=lambda v: v[0] if isinstance(v, list) else "")
def test_user_errors_are_one_line(tmp_path, args, cause):
    proc = chimera(*[a.format(t=tmp_path) for a in args])
    assert plain_error(proc, args[0]) == cause.format(t=tmp_path)


def test_debug_shows_the_traceback(tmp_path):
    for proc in (chimera("generate", "--ckpt", tmp_path / "none.ckpt", "--prompt", "hi", "--debug"),
                 chimera("generate", "--ckpt", tmp_path / "none.ckpt", "--prompt", "hi", CHIMERA_DEBUG="1")):
        assert proc.returncode == 1
        assert "Traceback" in proc.stderr and proc.stderr.rstrip().endswith(
            f"FileNotFoundError: checkpoint not found: {tmp_path / 'none.ckpt'}")


def test_fit_names_the_nested_key_and_expected_type(tmp_path):
    cfg = experiment_config(tiny_world(tmp_path), tmp_path)
    bad = copy.deepcopy(cfg)
    bad["model"]["init_args"]["model"]["init_args"]["connector"]["init_args"]["depth"] = "two"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    error = plain_error(chimera("fit", "--config", tmp_path / "bad.yaml"), "fit")
    assert error == "model.init_args.model.init_args.connector.init_args.depth: Expected a int. Got value: two"


def test_condense_reports_the_leaf_of_jsonargparse_trees():
    typo = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'train.module.VLMModule':
        Parser key "model":
          Errors:
            - Problem with given class_path 'models.llava.LLaVA':
                Parser key "vision":
                  Problem with given class_path 'models.vision.TimmVision':
                    Option 'selct_layer' is not accepted
            - Import path models.llava.LLaVA does not correspond to a subclass of Flamingo
          Given value type: <class 'dict'>
    - Expected a <class 'NoneType'>
  Given value: {'class_path': 'train.module.VLMModule'}"""
    assert condense(typo) == "model.init_args.model.init_args.vision.init_args: Option 'selct_layer' is not accepted"
    assert condense('Parser key "trainer.max_steps":\n  Expected a <class \'int\'>. Got value: many') == \
        "trainer.max_steps: Expected a int. Got value: many"
    assert condense("unrecognized arguments: --nokey 3") == "unrecognized arguments: --nokey 3"
